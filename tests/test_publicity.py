"""Publicity (公示) and objections after approval, on the real servers (second-long publicity)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import asyncpg
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from kaohe.sim.simulate import (
    APPROVER,
    DEPARTMENT,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
)
from schemas import search_attributes as sa
from schemas.common import Stage
from schemas.messages import ActionResult, ApproveGrades, RaiseObjection, ResolveObjection
from schemas.policy import DemoClock, Policy
from schemas.status import UnitStatus
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment

PUBLICITY = Policy(demo_clock=DemoClock(publicity_seconds=3))


async def approved_unit(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> tuple[WorkflowHandle, list[str]]:
    unit = sample_unit(cadres=2)
    handle = await start_unit(client, worker, unit, policy=PUBLICITY)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    result = await handle.execute_update(UnitAssessment.approve_grades, approve("ok"))
    assert "publicity until" in result.message and result.stage == Stage.GRADING
    return handle, [c.cadre_id for c in unit.cadres]


async def rejection(update: Awaitable[object]) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update
    return str(info.value.cause)


def approve(key: str) -> ApproveGrades:
    return ApproveGrades(idempotency_key=key, actor=APPROVER, decision="approve")


def objection(n: int, cadre_id: str | None = None) -> RaiseObjection:
    return RaiseObjection(
        idempotency_key=f"obj-{n}",
        actor=UNIT_CONTACT,
        objection_id=f"o{n}",
        raised_by="职工群众",
        cadre_id=cadre_id,
        reason="对评定等次有异议",
    )


def resolve(n: int, decision: str) -> ResolveObjection:
    return ResolveObjection(
        idempotency_key=f"res-{n}-{decision}",
        actor=DEPARTMENT,
        objection_id=f"o{n}",
        decision=decision,
        reason="经组织核查",
    )  # type: ignore[arg-type]


async def status(handle: WorkflowHandle) -> UnitStatus:
    return await handle.query(UnitAssessment.status)


async def final_flags(pool: asyncpg.Pool, workflow_id: str) -> set[bool]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT final FROM grades WHERE workflow_id = $1", workflow_id)
    return {r["final"] for r in rows}


async def test_grades_become_final_when_publicity_ends(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    handle, _ = await approved_unit(client, worker, tokens, talks)
    published = await status(handle)
    assert published.grading.published and not published.grading.final
    assert published.grading.publicity_ends is not None and published.grading.team_grade == "好"
    assert (await handle.describe()).typed_search_attributes.get(sa.TEAM_GRADE) == "好"
    assert await final_flags(pool, handle.id) == {False}

    final = await wait_for_status(handle, lambda s: s.stage == Stage.RESULT_USE)
    assert final.stage == Stage.RESULT_USE and final.grading.final
    assert final.history[-2].closed_early_reason == "publicity ended with no open objection"
    assert await final_flags(pool, handle.id) == {True}
    assert "result_use" in await rejection(
        handle.execute_update(UnitAssessment.raise_objection, objection(9))
    )


async def test_an_open_objection_blocks_finalization(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    handle, cadres = await approved_unit(client, worker, tokens, talks)
    await handle.execute_update(UnitAssessment.raise_objection, objection(1, cadres[1]))
    assert "cadre_id: unknown cadre" in await rejection(
        handle.execute_update(UnitAssessment.raise_objection, objection(2, "nobody"))
    )
    await asyncio.sleep(4)  # past the publicity's end
    blocked = await status(handle)
    assert blocked.stage == Stage.GRADING and not blocked.grading.final
    assert [(o.objection_id, o.state) for o in blocked.grading.objections] == [("o1", "open")]
    assert await final_flags(pool, handle.id) == {False}

    result = await handle.execute_update(UnitAssessment.resolve_objection, resolve(1, "dismiss"))
    assert "dismissed" in result.message
    dismissed = await wait_for_status(handle, lambda s: s.stage == Stage.RESULT_USE)
    assert dismissed.stage == Stage.RESULT_USE
    assert await final_flags(pool, handle.id) == {True}


async def test_an_upheld_objection_withdraws_the_grades(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    handle, cadres = await approved_unit(client, worker, tokens, talks)
    await handle.execute_update(UnitAssessment.raise_objection, objection(1))
    assert "approved and published" in await rejection(
        handle.execute_update(
            "propose_grades",
            proposal_for(sample_unit()).model_dump(mode="json"),
            result_type=ActionResult,
        )
    )
    result = await handle.execute_update(UnitAssessment.resolve_objection, resolve(1, "uphold"))
    assert "withdrawn" in result.message
    withdrawn = await status(handle)
    assert withdrawn.stage == Stage.GRADING
    assert not withdrawn.grading.published and withdrawn.grading.team_grade is None
    assert (await handle.describe()).typed_search_attributes.get(sa.TEAM_GRADE) is None
    assert await final_flags(pool, handle.id) == set()
    assert "already upheld" in await rejection(
        handle.execute_update(UnitAssessment.resolve_objection, resolve(1, "dismiss"))
    )

    # A new proposal and approval, then a new publicity.
    unit_proposal = proposal_for(sample_unit()).model_copy(
        update={
            "idempotency_key": "proposal-2",
            "cadre_grades": dict.fromkeys(cadres, "称职"),
            "evaluation": "经重新研判, 维持称职。",
        }
    )
    await handle.execute_update(UnitAssessment.propose_grades, unit_proposal)
    await handle.execute_update(UnitAssessment.approve_grades, approve("ok-2"))
    assert (await status(handle)).grading.publicity_ends is not None


# ---- 公示 from a chosen day, and a year without a calendar (issue 21) ---------------------------

REAL_DAYS = Policy()  # publicity in working days, from the unit's own calendar


async def test_publicity_may_start_on_a_later_working_day(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    import datetime as dt

    from domain.calendar import PACKAGE, shanghai_date

    unit = sample_unit(cadres=2)
    handle = await start_unit(client, worker, unit, policy=REAL_DAYS)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    today = shanghai_date(dt.datetime.now(dt.UTC))
    later = PACKAGE.add_working_days(today, 2)
    past = approve("past").model_copy(update={"publicity_from": today - dt.timedelta(days=1)})
    assert "publicity_from" in await rejection(
        handle.execute_update(UnitAssessment.approve_grades, past)
    )
    chosen = approve("later").model_copy(update={"publicity_from": later})
    result = await handle.execute_update(UnitAssessment.approve_grades, chosen)
    assert result.accepted
    s = await status(handle)
    assert s.grading.publicity_ends == PACKAGE.publicity_end(later, 5)
    # Objections open with publicity, not at approval.
    assert f"opens on {later}" in await rejection(
        handle.execute_update(UnitAssessment.raise_objection, objection(1))
    )


async def test_a_year_without_a_calendar_refuses_what_needs_it(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    """A unit whose input carries no schedule for this year: its stages get no deadline (and
    status says why), approval is refused naming the setting, and no workflow task fails."""
    from schemas.workflow_io import UnitInput

    unit = sample_unit(cadres=2)
    handle = await client.start_workflow(
        UnitAssessment.run,
        UnitInput(
            campaign_id="test", year=2026, campaign_title="无日历", unit=unit, policy=REAL_DAYS
        ),
        id=f"kaohe-test-{unit.unit_id}",
        task_queue=worker,
    )
    first = await wait_for_status(handle, lambda s: s.deadline_problem is not None)
    assert first.deadline is None and "calendar." in (first.deadline_problem or "")
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    reason = await rejection(handle.execute_update(UnitAssessment.approve_grades, approve("a")))
    assert "no working-day calendar" in reason and "policy calendar." in reason
    s = await status(handle)
    assert s.stage == Stage.GRADING and s.grading.pending_proposal and not s.grading.published
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]
