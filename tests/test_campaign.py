"""The campaign starts each unit once, follows their stages and survives being restarted."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import Client, WorkflowExecutionStatus

from kaohe.cli import start_campaign
from kaohe.simulate import TokenSource, drive_unit
from schemas.common import Stage
from schemas.roster import Roster
from schemas.status import CampaignProgress
from tests.helpers import TEST_POLICY, sample_unit
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id


def roster(units: int = 3) -> Roster:
    campaign_id = f"c{uuid.uuid4().hex[:8]}"
    return Roster(
        campaign_id=campaign_id,
        year=2026,
        title="测试考核",
        units=[sample_unit(f"{campaign_id}-u{i}") for i in range(units)],
    )


async def unit_runs(client: Client, campaign_id: str) -> dict[str, int]:
    """Workflow id -> number of runs, from the visibility store."""
    runs: dict[str, int] = {}
    async for wf in client.list_workflows(
        f'KaoheCampaign="{campaign_id}" AND WorkflowType="UnitAssessment"'
    ):
        runs[wf.id] = runs.get(wf.id, 0) + 1
    return runs


async def wait_for(predicate, seconds: float = 30.0):  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 10)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def progress(client: Client, r: Roster) -> CampaignProgress:
    handle = client.get_workflow_handle(campaign_workflow_id(r.campaign_id))
    return await handle.query(AssessmentCampaign.progress, result_type=CampaignProgress)


async def test_campaign_started_twice_starts_nothing_twice(
    client: Client, worker: str, tokens: TokenSource
) -> None:
    r = roster(3)
    wf_id, new = await start_campaign(client, r, worker, TEST_POLICY)
    assert new and wf_id == f"kaohe-campaign-{r.campaign_id}"
    _, again = await start_campaign(client, r, worker, TEST_POLICY)
    assert not again

    async def all_started() -> bool:
        return (await progress(client, r)).units_started == 3

    await wait_for(all_started)
    runs = await wait_for(lambda: _three(client, r.campaign_id))
    assert runs == {unit_workflow_id(r.campaign_id, u.unit_id): 1 for u in r.units}

    # Drive one unit a little: the campaign hears about it.
    first = r.units[0]
    await drive_unit(
        client,
        unit_workflow_id(r.campaign_id, first.unit_id),
        first,
        stop_at=Stage.EVALUATION,
        tokens=tokens,
    )

    async def heard() -> bool:
        return (await progress(client, r)).by_stage.get(Stage.EVALUATION) == 1

    await wait_for(heard)

    # Terminate the campaign and start it again: units keep running, none starts twice,
    # and the new run recovers their stages.
    await client.get_workflow_handle(wf_id).terminate("test restart")
    _, restarted = await start_campaign(client, r, worker, TEST_POLICY)
    assert restarted

    async def recovered() -> bool:
        p = await progress(client, r)
        return p.units_started == 3 and p.by_stage.get(Stage.EVALUATION) == 1

    await wait_for(recovered)
    assert await unit_runs(client, r.campaign_id) == runs


async def _three(client: Client, campaign_id: str) -> dict[str, int] | None:
    runs = await unit_runs(client, campaign_id)
    return runs if len(runs) == 3 else None


async def test_campaign_completes_when_every_unit_completes(
    client: Client, worker: str, tokens: TokenSource
) -> None:
    r = roster(2)
    wf_id, _ = await start_campaign(client, r, worker, TEST_POLICY)

    async def started() -> bool:
        return (await progress(client, r)).units_started == 2

    await wait_for(started)
    await asyncio.gather(
        *(
            drive_unit(client, unit_workflow_id(r.campaign_id, u.unit_id), u, tokens=tokens)
            for u in r.units
        )
    )
    result = await client.get_workflow_handle_for(AssessmentCampaign.run, wf_id).result()
    assert result.completed and result.by_stage == {Stage.COMPLETED: 2}
    desc = await client.get_workflow_handle(wf_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED


async def test_late_progress_signal_does_not_move_a_unit_back(client: Client, worker: str) -> None:
    """Signals between workflows may arrive out of order: the transition number decides."""
    r = roster(2)  # the second unit keeps the campaign open while we look
    wf_id, _ = await start_campaign(client, r, worker, TEST_POLICY)
    unit_id = r.units[0].unit_id

    async def started() -> bool:
        return (await progress(client, r)).units_started == 2

    await wait_for(started)
    handle = client.get_workflow_handle(wf_id)
    late = {"unit_id": unit_id, "stage": "result_use", "seq": 6}
    await handle.signal(AssessmentCampaign.unit_progress, {**late, "stage": "grading", "seq": 5})
    await handle.signal(AssessmentCampaign.unit_progress, {**late, "stage": "completed", "seq": 7})
    await handle.signal(AssessmentCampaign.unit_progress, late)

    # Signals are handled in order: once this one shows, the late one has been handled too.
    other = r.units[1].unit_id
    await handle.signal(
        AssessmentCampaign.unit_progress, {"unit_id": other, "stage": "report_back", "seq": 2}
    )

    async def settled() -> bool:
        return (await progress(client, r)).by_stage.get(Stage.REPORT_BACK) == 1

    await wait_for(settled)
    p = await progress(client, r)
    assert p.by_stage.get(Stage.COMPLETED) == 1 and p.by_stage.get(Stage.RESULT_USE) is None
    await handle.terminate("test")
    for u in r.units:
        await client.get_workflow_handle(unit_workflow_id(r.campaign_id, u.unit_id)).terminate()
