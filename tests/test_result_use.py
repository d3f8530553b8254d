"""Result use: each cadre signs for its feedback, and the two-year rule uses last year's grades
kept in PostgreSQL across campaigns."""

from __future__ import annotations

import random
import uuid

import asyncpg
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from kaohe.sim.simulate import (
    APPROVER,
    DEPARTMENT,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    close_follow_ups,
    drive_unit,
    proposal_for,
    sheet_for,
    wait_for_status,
)
from schemas.common import Action, Actor, CadreGrade, Role, Stage
from schemas.messages import (
    ApproveGrades,
    CloseFollowUp,
    CloseStage,
    RequestReview,
)
from schemas.policy import BallotPolicy
from tests.helpers import TEST_POLICY, cast, sample_unit, start_unit
from tests.test_deadlines import current_details
from workflows.unit import UnitAssessment


def cadre(cadre_id: str) -> Actor:
    """The cadre in person (signs its feedback, asks 复核 for itself)."""
    return Actor(id=cadre_id, role=Role.CADRE)


async def rejected(handle: WorkflowHandle, update: str, action: Action, needle: str) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(update, action)
    assert needle in str(err.value.cause)


async def last_years_grade(pool: asyncpg.Pool, cadre_id: str, grade: str) -> None:
    """A final 2025 grade for the cadre, as a 2025 campaign would have left it."""
    campaign = f"y2025-{uuid.uuid4().hex[:6]}"
    workflow_id = f"kaohe-{campaign}-old"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO campaigns (campaign_id, year, title) VALUES ($1, 2025, '2025年度考核')",
            campaign,
        )
        await conn.execute(
            "INSERT INTO units (workflow_id, campaign_id, unit_id, name, category, stage) "
            "VALUES ($1, $2, 'old', '旧单位', 'municipal', 'completed')",
            workflow_id,
            campaign,
        )
        await conn.execute(
            "INSERT INTO grades (workflow_id, year, unit_id, cadre_id, grade, final, final_at) "
            "VALUES ($1, 2025, 'old', $2, $3, true, now())",
            workflow_id,
            cadre_id,
            grade,
        )


async def test_same_low_grade_two_years_running_calls_for_adjustment(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=3)
    repeat, once = unit.cadres[1].cadre_id, unit.cadres[2].cadre_id
    await last_years_grade(pool, repeat, "基本称职")
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    proposal = proposal_for(unit)
    proposal.cadre_grades[repeat] = CadreGrade.BASICALLY_COMPETENT
    proposal.cadre_grades[once] = CadreGrade.BASICALLY_COMPETENT
    await handle.execute_update(UnitAssessment.propose_grades, proposal)
    await handle.execute_update(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key="ok", actor=APPROVER, decision="approve"),
    )
    status = await wait_for_status(handle, lambda s: s.stage == Stage.RESULT_USE)
    ids = {f.follow_up_id for f in status.follow_ups.items}
    assert f"adjustment-{repeat}" in ids and f"adjustment-{once}" not in ids
    assert {f"admonishing_talk-{repeat}", f"training-{once}"} <= ids
    assert {f"feedback-{c.cadre_id}" for c in unit.cadres} <= ids  # each cadre signs
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM follow_ups WHERE workflow_id = $1", handle.id
        )
    assert stored == len(ids)  # created once

    # 复核: a cadre asks in person within the policy's days, for itself only; the
    # department answers by closing it.
    as_other = RequestReview(
        idempotency_key="rv0", actor=cadre(once), cadre_id=repeat, reason="替他人申请复核"
    )
    await rejected(handle, "request_review", as_other, f"actor.id: cadre {once!r}")
    review = RequestReview(
        idempotency_key="rv", actor=cadre(repeat), cadre_id=repeat, reason="对基本称职等次申请复核"
    )
    result = await handle.execute_update(UnitAssessment.request_review, review)
    assert "复核 requested" in result.message
    again = review.model_copy(update={"idempotency_key": "rv2"})
    await rejected(handle, "request_review", again, "already requested 复核")
    status = await handle.query(UnitAssessment.status)
    [item] = [f for f in status.follow_ups.items if f.follow_up_id == f"review-{repeat}"]
    assert item.kind == "review" and item.due_date is not None

    # Result use ends with its follow-ups, not by closing the stage.
    early = CloseStage(
        idempotency_key="early", actor=DEPARTMENT, stage=Stage.RESULT_USE, reason="提前结束"
    )
    await rejected(
        handle, "close_stage", early, f"open: feedback-unit, feedback-{unit.cadres[0].cadre_id}"
    )
    # Each cadre signs its own feedback: not another's, not the unit's contact for it.
    feedback = f"feedback-{repeat}"
    for actor, needle in (
        (cadre(once), f"a cadre signs only its own feedback (feedback-{once}), not {feedback!r}"),
        (UNIT_CONTACT, f"{feedback!r} is signed by cadre {repeat} itself"),
    ):
        wrong = CloseFollowUp(
            idempotency_key=f"wrong-{actor.id}", actor=actor, follow_up_id=feedback, outcome="签收"
        )
        await rejected(handle, "close_follow_up", wrong, needle)
    await close_follow_ups(handle, "close")
    done = await handle.query(UnitAssessment.status)
    assert done.stage == Stage.COMPLETED and done.follow_ups.open == 0
    signed = {f.follow_up_id: f.closed_by for f in done.follow_ups.items}
    assert all(signed[f"feedback-{c.cadre_id}"] == c.cadre_id for c in unit.cadres)
    assert signed["feedback-unit"] == UNIT_CONTACT.id
    assert signed[f"review-{repeat}"] == DEPARTMENT.id
    async with pool.acquire() as conn:
        signers = await conn.fetch(
            "SELECT event_key, actor_id FROM audit_log WHERE workflow_id = $1 "
            "AND event_key LIKE 'follow_up_closed:feedback-%'",
            handle.id,
        )
    assert {r["actor_id"] for r in signers} == {UNIT_CONTACT.id, *(c.cadre_id for c in unit.cadres)}


async def test_a_late_review_answer_goes_to_the_department_once(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    """复核 answered past the policy's days: the department is notified, once; the unit's
    status and the UI say so; answering it later still ends result use."""
    demo = TEST_POLICY.demo.model_copy(update={"review_answer_seconds": 1})
    policy = TEST_POLICY.model_copy(update={"demo_clock": demo})
    unit = sample_unit(cadres=2)
    asker = unit.cadres[1].cadre_id
    handle = await start_unit(client, worker, unit, policy=policy)
    await drive_unit(
        client, handle.id, unit, policy=policy, stop_at=Stage.RESULT_USE, tokens=tokens, talks=talks
    )
    await handle.execute_update(
        UnitAssessment.request_review,
        RequestReview(idempotency_key="rv", actor=cadre(asker), cadre_id=asker, reason="申请复核"),
    )
    status = await wait_for_status(
        handle,
        lambda s: any(f.overdue for f in s.follow_ups.items),
        30,
    )
    assert [f.follow_up_id for f in status.follow_ups.items if f.overdue] == [f"review-{asker}"]
    assert f"复核 overdue: review-{asker}" in await current_details(handle)
    async with pool.acquire() as conn:
        audit = await conn.fetch(
            "SELECT detail FROM audit_log WHERE workflow_id = $1 AND kind = 'review_overdue'",
            handle.id,
        )
        sent = await conn.fetch(
            "SELECT recipient FROM notifications n JOIN notification_deliveries d "
            "USING (idempotency_key) WHERE n.workflow_id = $1 AND n.idempotency_key = $2",
            handle.id,
            f"{handle.id}:overdue-review-{asker}",
        )
    assert len(audit) == 1 and [r["recipient"] for r in sent] == ["organization-department"]
    done = await close_follow_ups(handle, "late")
    assert done.stage == Stage.COMPLETED


async def test_policy_maps_grades_and_flags_to_follow_ups(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=5, selection_review=True)
    promoted = unit.cadres[3]
    promoted.newly_promoted = True
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    rng = random.Random(5)
    sheets = [
        sheet_for(t, unit, BallotPolicy(), rng)
        for group in (await tokens(handle.id)).values()
        for t in group
    ]
    for sheet in sheets:  # nobody approves of the promotion
        sheet.new_cadres[0].opinion = "不认同"
    await cast(client, tokens, handle.id, sheets)
    status = await drive_unit(
        client, handle.id, unit, stop_at=Stage.RESULT_USE, tokens=tokens, talks=talks
    )
    assert status.stage == Stage.RESULT_USE
    ids = {f.follow_up_id for f in status.follow_ups.items}
    principal = unit.cadres[0].cadre_id  # 优秀 within the quota of 5 x 20%
    assert {f"incentive-{principal}", f"candidate_pool-{principal}"} <= ids
    assert f"selection_review-{promoted.cadre_id}" in ids
