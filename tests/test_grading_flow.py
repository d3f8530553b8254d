"""The grading rules enforced by the propose_grades validator, on the real servers."""

from __future__ import annotations

import random

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowUpdateFailedError

from kaohe.reports.report import build_report
from kaohe.sim.simulate import (
    APPROVER,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    sheet_for,
    wait_for_status,
)
from schemas.common import CadreGrade, Stage, TeamGrade
from schemas.messages import ActionResult, ApproveGrades, GroupEvaluation
from schemas.policy import BallotPolicy, GradingPolicy
from tests.helpers import TEST_POLICY, cast, sample_unit, start_unit
from workflows.unit import UnitAssessment


async def rejected(handle, payload) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("propose_grades", payload, result_type=ActionResult)
    return str(info.value.cause)


async def test_quota_and_eligibility(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=10)
    unit.cadres[4].negative_list = True
    handle = await start_unit(client, worker, unit)
    status = await drive_unit(
        client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks
    )
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


async def test_the_group_evaluation_names_strengths_and_shortcomings(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    """综合分析研判: the team's and each cadre's strengths and shortcomings, stored with the
    proposal; an appraisal of a cadre not in the unit is refused naming the field."""
    unit = sample_unit(cadres=2)
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    proposal = proposal_for(unit).model_dump(mode="json")
    proposal["evaluation"]["cadres"]["ghost"] = {"strengths": "x", "shortcomings": "y"}
    assert "evaluation.cadres.ghost: unknown cadre 'ghost'" in await rejected(handle, proposal)
    del proposal["evaluation"]["cadres"]["ghost"]
    proposal["evaluation"]["shortcomings"] = ""
    assert "evaluation.GroupEvaluation.shortcomings" in await rejected(handle, proposal)
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT evaluation, appraisal FROM grade_proposals WHERE workflow_id = $1", handle.id
        )
    appraisal = GroupEvaluation.model_validate_json(row["appraisal"])
    assert appraisal == proposal_for(unit).evaluation
    assert row["evaluation"] == "优点: 班子团结, 实绩突出\n不足: 创新不够"
    assert set(appraisal.cadres) == {c.cadre_id for c in unit.cadres}


async def test_flagged_cadre_needs_a_determination(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
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
    taken = await cast(client, tokens, handle.id, sheets)
    assert taken.answers[-1].stage == Stage.TALKS
    status = await drive_unit(
        client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks
    )
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


async def test_grade_labels_from_the_policy(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    """A campaign that says 优秀/良好 for the team and 合格 for 称职: proposals may use the
    labels, status and the report show them, the stored grade stays the grade."""
    grading = TEST_POLICY.grading.model_copy(
        update={
            "team_labels": {TeamGrade.GOOD: "优秀", TeamGrade.FAIRLY_GOOD: "良好"},
            "cadre_labels": {CadreGrade.COMPETENT: "合格"},
        }
    )
    policy = TEST_POLICY.model_copy(update={"grading": grading})
    unit = sample_unit(cadres=5)  # a quota of one 优秀
    campaign = f"labels-{unit.unit_id}"
    handle = await start_unit(client, worker, unit, campaign_id=campaign, policy=policy)
    await drive_unit(
        client, handle.id, unit, policy=policy, stop_at=Stage.GRADING, tokens=tokens, talks=talks
    )
    first, second, *others = (c.cadre_id for c in unit.cadres)
    proposal = proposal_for(unit).model_dump(mode="json")
    proposal["team_grade"] = "良好"
    proposal["cadre_grades"] = {first: "合格", second: "优秀", **{c: "称职" for c in others}}
    assert await handle.execute_update("propose_grades", proposal, result_type=ActionResult)
    approve = ApproveGrades(idempotency_key="ok", actor=APPROVER, decision="approve")
    await handle.execute_update(UnitAssessment.approve_grades, approve)

    status = await wait_for_status(handle, lambda s: s.grading.final)
    g = status.grading
    assert (g.team_grade, g.team_grade_label) == (TeamGrade.FAIRLY_GOOD, "良好")
    assert g.cadre_grades is not None and g.cadre_grade_labels is not None
    assert (g.cadre_grades[first], g.cadre_grades[second]) == (CadreGrade.COMPETENT, "优秀")
    assert g.cadre_grade_labels == {first: "合格", second: "优秀", **{c: "合格" for c in others}}
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT grade FROM grades WHERE workflow_id = $1 AND cadre_id = $2", handle.id, first
        )
    assert stored == "称职"
    report = await build_report(pool, campaign)
    assert report.units[0].team_grade == "良好"
    assert {c.cadre_id: c.grade for c in report.cadres} == g.cadre_grade_labels
    assert report.team_grades["良好"] == 1 and "较好" not in report.team_grades


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"好": "较好"}, "'较好' would name both 好 and 较好"),
        ({"好": "良好", "较好": "良好"}, "'良好' would name both 好 and 较好"),
    ],
)
def test_ambiguous_grade_labels_are_refused(labels: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        GradingPolicy.model_validate({"team_labels": labels})
    assert problem in str(info.value)
