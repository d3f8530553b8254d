"""The grading rules enforced by the propose_grades validator, on the real servers."""

from __future__ import annotations

import random

import asyncpg
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError

from kaohe.simulate import BALLOT_SYSTEM, TokenSource, drive_unit, proposal_for, sheet_for
from schemas.common import CadreGrade, Stage
from schemas.messages import ActionResult, RecordBallots
from schemas.policy import BallotPolicy
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment


async def rejected(handle, payload) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("propose_grades", payload, result_type=ActionResult)
    return str(info.value.cause)


async def test_quota_and_eligibility(client: Client, worker: str, tokens: TokenSource) -> None:
    unit = sample_unit(cadres=10)
    unit.cadres[4].negative_list = True
    handle = await start_unit(client, worker, unit)
    status = await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens)
    assert set(status.grading.suggested) == {c.cadre_id for c in unit.cadres}

    base = proposal_for(unit)  # 10 cadres x 20%: the first two are 优秀
    assert [c for c, g in base.cadre_grades.items() if g == CadreGrade.EXCELLENT] == [
        unit.cadres[0].cadre_id,
        unit.cadres[1].cadre_id,
    ]
    three = base.model_copy(deep=True)
    three.cadre_grades[unit.cadres[2].cadre_id] = CadreGrade.EXCELLENT
    msg = await rejected(handle, three)
    assert "quota: 3 优秀" in msg and "quota of 2" in msg

    ineligible = base.model_copy(deep=True)
    ineligible.cadre_grades[unit.cadres[1].cadre_id] = CadreGrade.COMPETENT
    ineligible.cadre_grades[unit.cadres[4].cadre_id] = CadreGrade.EXCELLENT
    msg = await rejected(handle, ineligible)
    assert f"{unit.cadres[4].cadre_id}: not eligible for 优秀: on the 负面清单" in msg

    assert (await handle.execute_update(UnitAssessment.propose_grades, base)).accepted
    status = await handle.query(UnitAssessment.status)
    assert status.grading.pending_proposal and status.grading.cadre_grades is None


async def test_flagged_cadre_needs_a_determination(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit(cadres=5)
    target = unit.cadres[2].cadre_id
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    rng = random.Random(7)
    sheets = [
        sheet_for(t, unit, BallotPolicy(), rng)
        for group in (await tokens(handle.id)).values()
        for t in group
    ]
    for sheet in sheets:  # every rater says 不称职 of one cadre
        next(r for r in sheet.cadres if r.cadre_id == target).overall = "不称职"
    result = await handle.execute_update(
        UnitAssessment.record_ballots,
        RecordBallots(idempotency_key="b", actor=BALLOT_SYSTEM, batch_id="b", sheets=sheets),
    )
    assert result.stage == Stage.TALKS
    status = await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens)
    assert ("incompetent_votes", target) in {(f.code, f.target_id) for f in status.evaluation.flags}
    assert status.grading.suggested[target] == "不称职"

    undetermined = proposal_for(unit)
    msg = await rejected(handle, undetermined)
    assert f"{target}: flagged by 不称职票率" in msg and "determination" in msg
    determined = proposal_for(unit, flagged=[target])
    assert (await handle.execute_update(UnitAssessment.propose_grades, determined)).accepted
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT determinations->>$2 FROM grade_proposals WHERE workflow_id = $1",
            handle.id,
            target,
        )
    assert stored == determined.determinations[target]
