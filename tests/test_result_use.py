"""Result use: each cadre signs for its feedback, and the two-year rule uses last year's grades
kept in PostgreSQL across campaigns."""

from __future__ import annotations

import random
import uuid

import asyncpg
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError

from kaohe.simulate import (
    APPROVER,
    BALLOT_SYSTEM,
    DEPARTMENT,
    UNIT_CONTACT,
    TokenSource,
    drive_unit,
    proposal_for,
    sheet_for,
    wait_for_status,
)
from schemas.common import CadreGrade, Stage
from schemas.messages import ApproveGrades, CloseFollowUp, RecordBallots, RequestReview
from schemas.policy import BallotPolicy
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment


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
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit(cadres=3)
    repeat, once = unit.cadres[1].cadre_id, unit.cadres[2].cadre_id
    await last_years_grade(pool, repeat, "基本称职")
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens)
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

    # 复核: a cadre asks within the policy's days; the department answers by closing it.
    review = RequestReview(
        idempotency_key="rv", actor=UNIT_CONTACT, cadre_id=repeat, reason="对基本称职等次申请复核"
    )
    result = await handle.execute_update(UnitAssessment.request_review, review)
    assert "复核 requested" in result.message
    again = review.model_copy(update={"idempotency_key": "rv2"})
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(UnitAssessment.request_review, again)
    status = await handle.query(UnitAssessment.status)
    [item] = [f for f in status.follow_ups.items if f.follow_up_id == f"review-{repeat}"]
    assert item.kind == "review" and item.due_date is not None

    for f in status.follow_ups.items:  # the cadres sign, the department closes the rest
        await handle.execute_update(
            UnitAssessment.close_follow_up,
            CloseFollowUp(
                idempotency_key=f"close-{f.follow_up_id}",
                actor=DEPARTMENT,
                follow_up_id=f.follow_up_id,
                outcome="已签收/已落实",
            ),
        )
    done = await handle.query(UnitAssessment.status)
    assert done.stage == Stage.COMPLETED and done.follow_ups.open == 0


async def test_policy_maps_grades_and_flags_to_follow_ups(
    client: Client, worker: str, tokens: TokenSource
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
    await handle.execute_update(
        UnitAssessment.record_ballots,
        RecordBallots(idempotency_key="b", actor=BALLOT_SYSTEM, batch_id="b", sheets=sheets),
    )
    status = await drive_unit(client, handle.id, unit, stop_at=Stage.RESULT_USE, tokens=tokens)
    assert status.stage == Stage.RESULT_USE
    ids = {f.follow_up_id for f in status.follow_ups.items}
    principal = unit.cadres[0].cadre_id  # 优秀 within the quota of 5 x 20%
    assert {f"incentive-{principal}", f"candidate_pool-{principal}"} <= ids
    assert f"selection_review-{promoted.cadre_id}" in ids
