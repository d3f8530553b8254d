"""The campaign starts each unit once, follows their stages and survives being restarted."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)

from kaohe.sim.simulate import (
    APPROVER,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
    wait_started,
)
from kaohe.starter import start_campaign
from schemas import search_attributes as sa
from schemas.calibration import DecideCalibration
from schemas.common import Actor, CadreGrade, Role, Stage
from schemas.messages import ApproveGrades, ProposeGrades
from schemas.policy import Policy
from schemas.roster import Roster, UnitSpec
from schemas.status import CampaignProgress, UnitStatus
from tests.conftest import Stack
from tests.helpers import TEST_POLICY, sample_unit
from tests.test_cli import akaohe
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id
from workflows.unit import UnitAssessment


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
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    r = roster(2)
    wf_id, _ = await start_campaign(client, r, worker, TEST_POLICY)

    async def started() -> bool:
        return (await progress(client, r)).units_started == 2

    await wait_for(started)
    await asyncio.gather(
        *(
            drive_unit(
                client, unit_workflow_id(r.campaign_id, u.unit_id), u, tokens=tokens, talks=talks
            )
            for u in r.units
        )
    )
    result = await client.get_workflow_handle_for(AssessmentCampaign.run, wf_id).result()
    assert result.completed and result.by_stage == {Stage.COMPLETED: 2}
    desc = await client.get_workflow_handle(wf_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED


async def test_cancelling_a_campaign_cancels_its_running_units(
    stack: Stack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    """`kaohe cancel --campaign`: every unit still running records `cancelled` (stage
    projection, audit row, the campaign's count) and ends cancelled; a completed one stays."""
    r = roster(3)
    wf_id, _ = await start_campaign(client, r, worker, TEST_POLICY)

    async def started() -> bool:
        return (await progress(client, r)).units_started == 3

    await wait_for(started)
    ids = [unit_workflow_id(r.campaign_id, u.unit_id) for u in r.units]
    done = await drive_unit(client, ids[0], r.units[0], tokens=tokens, talks=talks)
    assert done.stage == Stage.COMPLETED
    await drive_unit(client, ids[1], r.units[1], tokens=tokens, stop_at=Stage.EVALUATION)

    async def counted() -> bool:
        return (await progress(client, r)).by_stage.get(Stage.COMPLETED) == 1

    await wait_for(counted)
    wrong = await akaohe(stack, "cancel")
    assert wrong.returncode == 1 and "one of them" in wrong.stderr
    cancelled = await akaohe(stack, "cancel", "--campaign", r.campaign_id)
    assert cancelled.returncode == 0, cancelled.stderr

    async def all_closed() -> list[WorkflowExecutionStatus | None]:
        statuses = [(await client.get_workflow_handle(i).describe()).status for i in ids]
        return statuses if WorkflowExecutionStatus.RUNNING not in statuses else []

    assert await wait_for(all_closed) == [
        WorkflowExecutionStatus.COMPLETED,
        WorkflowExecutionStatus.CANCELED,
        WorkflowExecutionStatus.CANCELED,
    ]

    # The campaign ends once its cancelled units have told it (a moment after they closed).
    async def campaign_closed() -> WorkflowExecutionStatus | None:
        status = (await client.get_workflow_handle(wf_id).describe()).status
        return status if status != WorkflowExecutionStatus.RUNNING else None

    assert await wait_for(campaign_closed) == WorkflowExecutionStatus.CANCELED
    async with pool.acquire() as conn:
        stages = dict(
            await conn.fetch(
                "SELECT workflow_id, stage FROM units WHERE workflow_id = ANY($1)", ids
            )
        )
        audit = await conn.fetch(
            "SELECT workflow_id, detail->>'from' AS stage FROM audit_log "
            "WHERE workflow_id = ANY($1) AND kind = 'transition' AND detail->>'to' = 'cancelled'",
            ids,
        )
    assert stages == {ids[0]: "completed", ids[1]: "cancelled", ids[2]: "cancelled"}
    assert sorted((a["workflow_id"], a["stage"]) for a in audit) == [
        (ids[1], "evaluation"),
        (ids[2], "notice"),
    ]
    # The unit itself says so: its last stage visit, and its search attribute.
    unit = await client.get_workflow_handle(ids[2]).describe()
    assert unit.typed_search_attributes.get(sa.STAGE) == "cancelled"


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


def pooled_policy() -> Policy:
    grading = TEST_POLICY.grading.model_copy(update={"excellent_quota_scope": "category"})
    return TEST_POLICY.model_copy(update={"grading": grading})


def proposing(unit: UnitSpec, key: str, excellent: int) -> ProposeGrades:
    """The first `excellent` cadres 优秀, the others 称职."""
    grades = {
        c.cadre_id: CadreGrade.EXCELLENT if i < excellent else CadreGrade.COMPETENT
        for i, c in enumerate(unit.cadres)
    }
    return proposal_for(unit).model_copy(update={"idempotency_key": key, "cadre_grades": grades})


async def calibration_of(handle: WorkflowHandle, state: str) -> UnitStatus:
    status = await wait_for_status(
        handle, lambda s: s.grading.calibration is not None and s.grading.calibration.state == state
    )
    assert status.grading.calibration is not None, "no calibration"
    assert status.grading.calibration.state == state, status.grading.calibration
    return status


async def test_cross_unit_calibration_holds_what_breaks_the_pooled_quota(
    stack: Stack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    """Three units of two cadres: each unit's own quota would be 0 优秀 (2 × 20%), the
    category's pooled quota is 1 (6 × 20%). The campaign clears the first 优秀, holds the
    others until the department allows or returns them, and clears a held one by itself
    once the pool frees."""
    r = roster(3)
    policy = pooled_policy()
    await start_campaign(client, r, worker, policy)
    handles = [
        client.get_workflow_handle_for(
            UnitAssessment.run, unit_workflow_id(r.campaign_id, u.unit_id)
        )
        for u in r.units
    ]
    await asyncio.gather(*(wait_started(client, h.id) for h in handles))
    await asyncio.gather(
        *(
            drive_unit(
                client, h.id, u, policy=policy, stop_at=Stage.GRADING, tokens=tokens, talks=talks
            )
            for h, u in zip(handles, r.units, strict=True)
        )
    )
    u0, u1, u2 = r.units
    h0, h1, h2 = handles
    campaign = client.get_workflow_handle_for(
        AssessmentCampaign.run, campaign_workflow_id(r.campaign_id)
    )

    # 1 优秀 in a unit of two: beyond the unit's own quota, but the pool's to judge.
    result = await h0.execute_update(UnitAssessment.propose_grades, proposing(u0, "p0", 1))
    assert "cross-unit calibration: pending" in result.message
    await calibration_of(h0, "cleared")
    await h1.execute_update(UnitAssessment.propose_grades, proposing(u1, "p1", 1))
    held = await calibration_of(h1, "held")
    assert held.grading.calibration is not None
    reason = held.grading.calibration.reason
    assert "beyond its pooled quota of 1 优秀 (6 graded cadres × 1/5, rounded down)" in reason
    # Still sealed: no grade, and no count of this unit's (or another's) 优秀 in the reason.
    assert held.grading.cadre_grades is None
    assert not any(word in reason for word in ("proposed", "cleared", "taken"))
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await h1.execute_update(UnitAssessment.approve_grades, approval("a1"))
    assert "is on hold by cross-unit calibration" in str(info.value.cause)
    await h2.execute_update(UnitAssessment.propose_grades, proposing(u2, "p2", 1))
    await calibration_of(h2, "held")
    assert (await progress(client, r)).calibration_held == [u1.unit_id, u2.unit_id]
    [view] = await campaign.query(AssessmentCampaign.calibration)
    assert (view.graded, view.quota, view.reserved) == (6, 1, 1)

    # Only the department decides, and only on a held proposal.
    assert "actor.role: 'approver' may not decide_calibration" in await refused(
        campaign, decision("d0", u1.unit_id, "allow", role=Role.APPROVER)
    )
    assert f"unit_id: {u0.unit_id!r} has no proposal on hold" in await refused(
        campaign, decision("d0", u0.unit_id, "allow")
    )

    # Returned: the unit's group proposes again; the new proposal is judged afresh.
    returned = await campaign.execute_update(
        AssessmentCampaign.decide_calibration, decision("d1", u2.unit_id, "return")
    )
    assert returned.message.endswith("returned")
    status = await calibration_of(h2, "returned")
    assert status.grading.returned == 1 and not status.grading.pending_proposal
    await h2.execute_update(UnitAssessment.propose_grades, proposing(u2, "p2-again", 1))
    await calibration_of(h2, "held")

    # Unit 0's approver returns its proposal and it comes back without 优秀: the pool frees,
    # and the first held proposal (unit 1's) is cleared without the department.
    await h0.execute_update(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key="r0", actor=APPROVER, decision="return", comment="再议"),
    )
    await h0.execute_update(UnitAssessment.propose_grades, proposing(u0, "p0-again", 0))
    await calibration_of(h0, "cleared")
    await calibration_of(h1, "cleared")
    await calibration_of(h2, "held")

    # The department sees it from the CLI and allows it beyond the pool there; a decision
    # sent again with its key changes nothing.
    shown = await akaohe(stack, "calibration", "show", r.campaign_id)
    assert shown.returncode == 0 and u2.unit_id in shown.stdout, shown.stderr
    allowed = await akaohe(
        stack, "calibration", "allow", r.campaign_id, u2.unit_id, "--reason", "统筹调剂"
    )
    assert allowed.returncode == 0 and "allowed" in allowed.stdout, allowed.stderr
    again = await akaohe(
        stack, "calibration", "allow", r.campaign_id, u2.unit_id, "--reason", "统筹调剂"
    )
    assert again.returncode == 1 and "has no proposal on hold" in again.stderr
    allow = decision("d1", u2.unit_id, "return")
    assert (await campaign.execute_update(AssessmentCampaign.decide_calibration, allow)).duplicate
    await calibration_of(h2, "allowed")
    for h, key in ((h0, "a0"), (h1, "a1"), (h2, "a2")):
        assert (await h.execute_update(UnitAssessment.approve_grades, approval(key))).accepted
    assert (await progress(client, r)).calibration_held == []

    async with pool.acquire() as conn:
        kinds = [
            row["kind"]
            for row in await conn.fetch(
                "SELECT kind FROM audit_log WHERE workflow_id = $1 AND kind LIKE 'calibration%' "
                "ORDER BY id",
                h2.id,
            )
        ]
    assert kinds == [
        "calibration_held",
        "calibration_returned",
        "calibration_held",
        "calibration_allowed",
    ]


def approval(key: str) -> ApproveGrades:
    return ApproveGrades(idempotency_key=key, actor=APPROVER, decision="approve")


def decision(key: str, unit_id: str, what: str, role: Role = Role.DEPARTMENT) -> DecideCalibration:
    return DecideCalibration(
        idempotency_key=key,
        actor=Actor(id="org-department", role=role),
        unit_id=unit_id,
        decision=what,  # type: ignore[arg-type]
        reason="本系统优秀名额统筹调剂",
    )


async def refused(handle: WorkflowHandle, action: DecideCalibration) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(AssessmentCampaign.decide_calibration, action)
    return str(info.value.cause)
