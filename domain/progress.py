"""What a unit's state comes to: the status it shows (pure; the workflow's `status` query and
its current details are built from this)."""

from __future__ import annotations

import datetime as dt

from domain.calendar import SHANGHAI
from domain.rules import suggested_grade
from domain.state import UnitState
from domain.tally import group_participation
from schemas.common import Stage
from schemas.status import (
    EvaluationProgress,
    FollowUpProgress,
    GradingProgress,
    ReportProgress,
    TalkProgress,
    TargetTally,
    UnitStatus,
)
from schemas.workflow_io import UnitInput


def missing_reports(u: UnitInput, s: UnitState) -> list[str]:
    missing = [] if "team" in s.reports else ["team"]
    return missing + [c.cadre_id for c in u.unit.cadres if c.cadre_id not in s.reports]


def reports_due(u: UnitInput) -> dt.datetime | None:
    """The end (24:00 Asia/Shanghai) of the policy's reports_due day."""
    due = u.policy.reports_due
    if due is None:
        return None
    return dt.datetime.combine(due + dt.timedelta(days=1), dt.time(), tzinfo=SHANGHAI)


def late_reports(u: UnitInput, s: UnitState, now: dt.datetime) -> list[str]:
    due = reports_due(u)
    if due is None:
        return []
    subjects = ["team", *(c.cadre_id for c in u.unit.cadres)]
    return [
        x
        for x in subjects
        if (x in s.report_times and s.report_times[x] > due)
        or (x not in s.report_times and now > due)
    ]


def talk_plan_met(u: UnitInput, s: UnitState) -> bool:
    plan = u.unit.talk_plan
    if plan is None:
        return len(s.talks) >= u.unit.talks_planned
    return all(s.talk_roles.get(role, 0) >= n for role, n in plan.items())


def shown_tallies(u: UnitInput, s: UnitState) -> list[TargetTally]:
    """The tallies as status shows them: none before the evaluation closes, and no count by
    rater group at all when a group returned fewer sheets than the policy's
    ballots.anonymity_min_sheets (with one group hidden, the others' counts and the totals
    would give its away)."""
    if not s.evaluation_closed:
        return []
    k = u.policy.ballots.anonymity_min_sheets
    if all(s.group_sheets.get(g.group_id, 0) >= k for g in u.rater_groups):
        return s.tallies
    return [t.model_copy(update={"by_group": {}}) for t in s.tallies]


def suggested_grades(u: UnitInput, s: UnitState) -> dict[str, str]:
    weights = {g.group_id: g.weight for g in u.rater_groups}
    out: dict[str, str] = {}
    for tally in s.tallies:
        if tally.target_kind == "cadre" and tally.target_id and tally.by_group:
            found = suggested_grade(tally.by_group, weights, u.policy.grading)
            if found is not None:
                out[tally.target_id] = found[0]
    return out


def responsible(u: UnitInput, s: UnitState) -> str:
    """Who a deadline reminder goes to: the party whose work the stage waits for."""
    if s.stage == Stage.TALKS:
        return u.assessment_group
    if s.stage == Stage.GRADING:
        return u.approver if s.pending else u.assessment_group
    return u.unit.contact or u.unit.unit_id


def unit_status(workflow_id: str, u: UnitInput, s: UnitState, now: dt.datetime) -> UnitStatus:
    """The unit's status. Sealed grades stay sealed: only whether a proposal exists shows
    until approval publishes it."""
    final, grading, unit = s.final, u.policy.grading, u.unit
    published = final is not None
    return UnitStatus(
        workflow_id=workflow_id,
        campaign_id=u.campaign_id,
        year=u.year,
        unit_id=unit.unit_id,
        unit_name=unit.name,
        stage=s.stage,
        history=s.history,
        acknowledgements=s.acks,
        reports=ReportProgress(
            team_summary="team" in s.reports,
            cadres_submitted=sum(c.cadre_id in s.reports for c in unit.cadres),
            cadres_total=len(unit.cadres),
            missing=missing_reports(u, s),
            revisions=sum(r - 1 for r in s.reports.values()),
            due=reports_due(u),
            late=late_reports(u, s, now),
        ),
        evaluation=EvaluationProgress(
            batches=len(s.batches),
            ballots=s.ballots(),
            sheets=sum(s.group_sheets.values()),
            closed=s.evaluation_closed,
            close_reason=s.evaluation_close_reason,
            participation=group_participation(u.rater_groups, s.group_sheets),
            tallies=shown_tallies(u, s),
            flags=s.flags,
        ),
        talks=TalkProgress(
            recorded=len(s.talks),
            planned=unit.talks_planned,
            by_role={
                role: (s.talk_roles.get(role, 0), n) for role, n in (unit.talk_plan or {}).items()
            },
        ),
        grading=GradingProgress(
            suggested=suggested_grades(u, s),
            proposals=s.proposal_no,
            pending_proposal=s.pending is not None,
            returned=s.returned,
            approved=published,
            published=published,
            publicity_ends=s.publicity_ends,
            final=s.grades_final or (published and s.stage != Stage.GRADING),
            objections=list(s.objections.values()),
            calibration=s.calibration,
            team_grade=final.team_grade if final else None,
            cadre_grades=dict(final.cadre_grades) if final else None,
            team_grade_label=grading.team_label(final.team_grade) if final else None,
            cadre_grade_labels=(
                {c: grading.cadre_label(g) for c, g in final.cadre_grades.items()}
                if final
                else None
            ),
        ),
        follow_ups=FollowUpProgress(
            open=sum(not f.closed for f in s.follow_ups.values()),
            closed=sum(f.closed for f in s.follow_ups.values()),
            items=list(s.follow_ups.values()),
        ),
        rejected_signals=s.rejections,
        rejected_signal_count=s.rejection_count,
        storage_failures=s.storage_failures,
        storage_failure_count=s.storage_failure_count,
        deadline=s.clock.deadline,
        stalled=s.clock.escalation > 0,
        escalation_level=s.clock.escalation,
        paused_since=s.clock.paused_since,
        dead_letters=s.dead_letters,
        deadline_steps=s.clock.steps,
        deadline_problem=s.clock.problem,
    )
