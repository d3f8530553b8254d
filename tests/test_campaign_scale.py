"""Campaigns beyond one workflow input: a stored roster read in pages, continue-as-new while
starting and while waiting, one state model carried over, nothing started twice."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError

from activities.rosters import store_roster
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit
from kaohe.starter import RosterTooLarge, start_campaign
from schemas.common import Stage
from schemas.roster import Contact, Roster
from schemas.workflow_io import CampaignInput, StoredRoster, UnitInput
from tests.conftest import Stack
from tests.helpers import TEST_POLICY, sample_unit
from tests.test_campaign import progress, unit_runs, wait_for
from workflows.campaign import AssessmentCampaign, unit_workflow_id

ROLES = ("assessment-group-leader", "organization-department", "assessment-group", "approver")


def roster_with_contacts(units: int) -> Roster:
    campaign_id = f"s{uuid.uuid4().hex[:8]}"
    specs = [sample_unit(f"{campaign_id}-u{i}") for i in range(units)]
    contacts = {u.contact or u.unit_id: Contact() for u in specs}
    contacts |= {r: Contact() for r in ROLES}
    return Roster(
        campaign_id=campaign_id, year=2026, title="规模测试", units=specs, contacts=contacts
    )


async def campaign_runs(client: Client, workflow_id: str) -> dict[str, int]:
    """Run status -> number of runs of the campaign workflow id."""
    out: dict[str, int] = {}
    async for wf in client.list_workflows(f'WorkflowId="{workflow_id}"'):
        name = wf.status.name if wf.status else "?"
        out[name] = out.get(name, 0) + 1
    return out


async def first_input(
    client: Client, workflow_id: str, kind: type, run_id: str | None = None
) -> object:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    (value,) = await client.data_converter.decode(payloads, [kind])
    return value


async def test_a_stored_roster_campaign_continues_as_new_and_starts_each_unit_once(
    client: Client, worker: str, stack: Stack, tokens: TokenSource, talks: TalkStore
) -> None:
    r = roster_with_contacts(8)
    options = {
        "database_url": stack.database_url,
        "inline_limit": 0,  # store even this small roster
        "max_concurrent_starts": 2,
        "history_limit": 30,  # a few chunks of starts, or a few signals, per run
    }
    wf_id, new = await start_campaign(client, r, worker, TEST_POLICY, **options)
    assert new

    # Terminated while it starts units, started again: the new run walks the roster from
    # the first unit and starts only those the first run had not.
    await wait_for(lambda: _started_at_least(client, r, 1))
    await client.get_workflow_handle(wf_id).terminate("test restart while starting")
    _, restarted = await start_campaign(client, r, worker, TEST_POLICY, **options)
    assert restarted
    await wait_for(lambda: _started_at_least(client, r, 8))
    runs = await unit_runs(client, r.campaign_id)
    assert runs == {unit_workflow_id(r.campaign_id, u.unit_id): 1 for u in r.units}

    # The input names the stored roster, not its units; each unit gets its own contacts.
    started = await first_input(client, wf_id, CampaignInput)
    assert isinstance(started, CampaignInput)
    assert started.roster is None and started.stored_roster is not None
    assert started.stored_roster.units_total == 8
    first = r.units[0]
    unit_input = await first_input(
        client, unit_workflow_id(r.campaign_id, first.unit_id), UnitInput
    )
    assert isinstance(unit_input, UnitInput)
    assert set(unit_input.contacts) == {first.contact or first.unit_id, *ROLES}

    await asyncio.gather(
        *(
            drive_unit(
                client, unit_workflow_id(r.campaign_id, u.unit_id), u, tokens=tokens, talks=talks
            )
            for u in r.units
        )
    )
    handle = client.get_workflow_handle_for(AssessmentCampaign.run, wf_id)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.completed and result.by_stage == {Stage.COMPLETED: 8}
    assert result.units_started == result.units_total == 8
    # 8 units × ~8 progress signals and 16 starts do not fit one run of 30 events.
    by_status = await campaign_runs(client, wf_id)
    assert by_status.get("CONTINUED_AS_NEW", 0) >= 3, by_status
    assert by_status.get("TERMINATED") == 1 and by_status.get("COMPLETED") == 1
    assert await unit_runs(client, r.campaign_id) == runs
    # Some run was continued while it was still starting units: it carried a cursor.
    cursors = []
    async for wf in client.list_workflows(f'WorkflowId="{wf_id}"'):
        carried = await first_input(client, wf_id, CampaignInput, wf.run_id)
        assert isinstance(carried, CampaignInput)
        cursors.append(carried.state.cursor)
    assert any(0 < c < 8 for c in cursors), cursors


async def _started_at_least(client: Client, r: Roster, n: int) -> bool:
    try:
        return (await progress(client, r)).units_started >= n
    except Exception:  # between runs, or not yet started
        return False


async def test_a_roster_that_was_never_stored_fails_the_campaign_naming_it(
    client: Client, worker: str
) -> None:
    r = roster_with_contacts(2)
    stored = StoredRoster(
        header=r.header(), digest="0" * 64, units_total=2, graded_by_category={"municipal": 4}
    )
    handle = await client.start_workflow(
        AssessmentCampaign.run,
        CampaignInput(stored_roster=stored, policy=TEST_POLICY),
        id=f"kaohe-campaign-{r.campaign_id}",
        task_queue=worker,
    )
    with pytest.raises(WorkflowFailureError) as err:
        await asyncio.wait_for(handle.result(), 30)
    cause = err.value.cause
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "stored_roster.digest" in str(cause) and "expected 2" in str(cause)
    assert await unit_runs(client, r.campaign_id) == {}


async def test_storing_a_roster_twice_writes_it_once(pool: asyncpg.Pool) -> None:
    r = roster_with_contacts(3)
    async with pool.acquire() as conn:
        once = await store_roster(conn, r)
        twice = await store_roster(conn, r)
        changed = r.model_copy(update={"title": "规模测试（修订）"})
        other = await store_roster(conn, changed)
        rows = await conn.fetch(
            "SELECT digest, count(*) AS n FROM campaign_roster_units WHERE campaign_id = $1 "
            "GROUP BY digest",
            r.campaign_id,
        )
    assert once == twice and other.digest != once.digest
    assert {row["digest"]: row["n"] for row in rows} == {once.digest: 3, other.digest: 3}
    assert once.graded_by_category == {"municipal": sum(len(u.cadres) for u in r.units)}


async def test_a_large_roster_without_a_database_is_refused(client: Client) -> None:
    with pytest.raises(RosterTooLarge, match="KAOHE_DATABASE_URL"):
        await start_campaign(client, roster_with_contacts(2), "unused", inline_limit=0)


def test_a_campaign_input_takes_exactly_one_roster() -> None:
    with pytest.raises(ValidationError, match="roster: give the roster or stored_roster"):
        CampaignInput()
