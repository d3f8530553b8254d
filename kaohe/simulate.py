"""Simulated integrators: the unit, the ballot system, the assessment group and the approver
driving one unit through every stage with real updates. Used by `kaohe demo`, the
benchmarks and the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable

from temporalio.client import Client, WorkflowHandle

from schemas.common import Actor, CadreGrade, CadreOverall, Role, Stage, TeamGrade
from schemas.messages import (
    AcknowledgeNotice,
    ActionResult,
    ApproveGrades,
    Ballot,
    CloseEvaluation,
    CloseFollowUp,
    ProposeGrades,
    RecordBallots,
    RecordTalk,
    SubmitReport,
)
from schemas.roster import UnitSpec
from schemas.status import UnitStatus
from workflows.stages import ORDER
from workflows.unit import UnitAssessment

UNIT_CONTACT = Actor(id="unit-office", role=Role.UNIT)
BALLOT_SYSTEM = Actor(id="ballot-system", role=Role.INTEGRATOR)
GROUP = Actor(id="group-leader", role=Role.ASSESSMENT_GROUP)
APPROVER = Actor(id="department-approver", role=Role.APPROVER)
DEPARTMENT = Actor(id="department", role=Role.DEPARTMENT)


def ballots_for(unit: UnitSpec, voters: int, rng: random.Random) -> list[Ballot]:
    """One team ballot and one ballot per cadre from each voter, mostly favourable."""
    team_options = [g.value for g in TeamGrade]
    cadre_options = [o.value for o in CadreOverall]
    out: list[Ballot] = []
    for i in range(voters):
        group = "ABC"[i % 3]
        out.append(
            Ballot(
                target_kind="team",
                rater_group=group,
                overall=rng.choices(team_options, weights=[6, 3, 1, 0.2])[0],
            )
        )
        out.extend(
            Ballot(
                target_kind="cadre",
                target_id=c.cadre_id,
                rater_group=group,
                overall=rng.choices(cadre_options, weights=[3, 6, 0.6, 0.2, 0.4])[0],
            )
            for c in unit.cadres
        )
    return out


def proposal_for(unit: UnitSpec) -> ProposeGrades:
    grades = {c.cadre_id: CadreGrade.COMPETENT for c in unit.cadres}
    grades[unit.cadres[0].cadre_id] = CadreGrade.EXCELLENT
    return ProposeGrades(
        idempotency_key=f"{unit.unit_id}-proposal",
        actor=GROUP,
        evaluation="综合分析研判: 班子团结, 实绩突出; 不足: 创新不够。",
        team_grade=TeamGrade.GOOD,
        cadre_grades=grades,
    )


async def drive_unit(
    client: Client,
    workflow_id: str,
    unit: UnitSpec,
    *,
    pace: float = 0.0,
    voters: int = 12,
    batch_size: int = 500,
    stop_at: Stage | None = None,
    seed: int = 0,
    on_step: Callable[[str, ActionResult], None] | None = None,
) -> UnitStatus:
    """Performs every action of every stage; stops on entering `stop_at` if given."""
    handle: WorkflowHandle = client.get_workflow_handle_for(UnitAssessment.run, workflow_id)
    rng = random.Random(f"{seed}-{unit.unit_id}")
    key = unit.unit_id

    async def step(update, action) -> ActionResult:  # type: ignore[no-untyped-def]
        result: ActionResult = await handle.execute_update(update, action)
        if on_step is not None:
            on_step(update.__name__, result)
        if pace:
            await asyncio.sleep(pace * rng.uniform(0.5, 1.5))
        return result

    def reached(stage: Stage) -> bool:
        return stop_at is not None and ORDER.index(stage) >= ORDER.index(stop_at)

    await step(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key=f"{key}-ack", actor=UNIT_CONTACT),
    )
    if reached(Stage.REPORT_BACK):
        return await handle.query(UnitAssessment.status)
    await step(
        UnitAssessment.submit_report,
        SubmitReport(
            idempotency_key=f"{key}-team-report",
            actor=UNIT_CONTACT,
            kind="team",
            title=f"{unit.name}领导班子年度工作总结",
            text="一年来, 班子坚持……",
        ),
    )
    for c in unit.cadres:
        await step(
            UnitAssessment.submit_report,
            SubmitReport(
                idempotency_key=f"{key}-report-{c.cadre_id}",
                actor=UNIT_CONTACT,
                kind="cadre",
                cadre_id=c.cadre_id,
                title=f"{c.name}述职述廉报告",
                text="本人认真履职……",
            ),
        )
    if reached(Stage.EVALUATION):
        return await handle.query(UnitAssessment.status)
    ballots = ballots_for(unit, voters, rng)
    for n, start in enumerate(range(0, len(ballots), batch_size)):
        await step(
            UnitAssessment.record_ballots,
            RecordBallots(
                idempotency_key=f"{key}-ballots-{n}",
                actor=BALLOT_SYSTEM,
                batch_id=f"b{n}",
                ballots=ballots[start : start + batch_size],
            ),
        )
    await step(
        UnitAssessment.close_evaluation,
        CloseEvaluation(idempotency_key=f"{key}-close-eval", actor=GROUP),
    )
    if reached(Stage.TALKS):
        return await handle.query(UnitAssessment.status)
    for t in range(unit.talks_planned):
        await step(
            UnitAssessment.record_talk,
            RecordTalk(
                idempotency_key=f"{key}-talk-{t}",
                actor=GROUP,
                talk_id=f"t{t}",
                interviewer="考核组成员",
                interviewee_role="班子成员" if t % 2 else "中层干部",
                talk_date=dt.date(2026, 12, 15),
                content=f"谈话内容(保密) #{t}",
            ),
        )
    if reached(Stage.GRADING):
        return await handle.query(UnitAssessment.status)
    await step(UnitAssessment.propose_grades, proposal_for(unit))
    await step(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key=f"{key}-approve", actor=APPROVER, decision="approve"),
    )
    if reached(Stage.RESULT_USE):
        return await handle.query(UnitAssessment.status)
    status = await handle.query(UnitAssessment.status)
    for f in status.follow_ups.items:
        if not f.closed:
            await step(
                UnitAssessment.close_follow_up,
                CloseFollowUp(
                    idempotency_key=f"{key}-close-{f.follow_up_id}",
                    actor=DEPARTMENT,
                    follow_up_id=f.follow_up_id,
                    outcome="已落实并签收",
                ),
            )
    return await handle.query(UnitAssessment.status)
