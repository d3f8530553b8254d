"""The checks of domain/actions.py's rows, one function per action: pure functions of (the
unit's input, its state, the action, the moment) that raise ActionRejected naming the field
and change nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.calendar import CalendarUnavailableError, WorkCalendar, end_of_day, shanghai_date
from domain.rules import proposal_violations
from domain.stages import CLOSABLE_EARLY
from domain.state import UnitState
from schemas.common import Role, Stage
from schemas.messages import (
    ApproveGrades,
    CloseEvaluation,
    CloseFollowUp,
    CloseStage,
    ExtendDeadline,
    FollowUpKind,
    GroupEvaluation,
    PauseUnit,
    ProposeGrades,
    RaiseObjection,
    RecordFollowUp,
    RecordTalk,
    RegisterBallotBatch,
    RequestReview,
    ResolveObjection,
    ResumeUnit,
    SubmitReport,
)
from schemas.workflow_io import UnitInput


class ActionRejected(ValueError):
    """A well-formed action that the unit's current state does not allow, or a payload that
    is not a well-formed action (the message names the field).

    `retryable` says whether sending the same action again may succeed: never for these (bad
    input, the wrong stage, a rule, a duplicate); a subclass for transient failures (storage
    unavailable) says True. workflows/payloads.rejection_error turns it into the failure the
    caller sees, in one place."""

    retryable = False
    error_type = "ActionRejected"


class StorageFailed(ActionRejected):
    """An action not taken because its storage write did not happen: given up after its
    attempts (transient: the same action may succeed later, retryable) or refused by the
    database (permanent). workflows/unit/io.py raises it."""

    def __init__(self, activity: str, reason: str, *, attempts: int, retryable: bool) -> None:
        self.activity, self.retryable = activity, retryable
        self.error_type = "StorageUnavailable" if retryable else "StorageRefused"
        if retryable:
            message = (
                f"(storage): {activity} failed {attempts} times ({reason}); nothing was "
                "changed, send the action again later"
            )
        else:
            message = f"(storage): {activity} refused by the database ({reason}); nothing stored"
        super().__init__(message)


@dataclass(frozen=True)
class Moment:
    """What a check may know besides the state: the workflow's time and its history's size."""

    now: dt.datetime
    history_bytes: int = 0


Check = Callable[[UnitInput, UnitState, Any, Moment], None]


def require_cadre(unit: UnitInput, field: str, cadre_id: str | None) -> None:
    if cadre_id is not None and unit.unit.cadre(cadre_id) is None:
        raise ActionRejected(
            f"{field}: unknown cadre {cadre_id!r}; unit {unit.unit.unit_id} has "
            + ", ".join(c.cadre_id for c in unit.unit.cadres)
        )


def check_submit_report(u: UnitInput, s: UnitState, a: SubmitReport, at: Moment) -> None:
    require_cadre(u, "cadre_id", a.cadre_id)
    subject = a.cadre_id or "team"
    if subject in s.reports and a.revision_reason is None:
        raise ActionRejected(
            f"revision_reason: a {a.kind} report for {subject!r} was already submitted; "
            "give revision_reason to replace it"
        )


def check_new_batch(u: UnitInput, s: UnitState, a: RegisterBallotBatch, at: Moment) -> None:
    if a.batch_id in s.batches:
        raise ActionRejected(f"batch_id: batch {a.batch_id!r} was already recorded")


def check_close_evaluation(u: UnitInput, s: UnitState, a: CloseEvaluation, at: Moment) -> None:
    if not s.batches and a.reason is None:
        raise ActionRejected("reason: no ballots were recorded; give a reason to close anyway")


def check_record_talk(u: UnitInput, s: UnitState, a: RecordTalk, at: Moment) -> None:
    if a.talk_id in s.talks:
        raise ActionRejected(f"talk_id: talk {a.talk_id!r} was already recorded")
    plan = u.unit.talk_plan
    if plan is not None and a.interviewee_role not in plan:
        raise ActionRejected(
            f"interviewee_role: {a.interviewee_role!r} is not in the talk plan ({', '.join(plan)})"
        )


def check_propose_grades(u: UnitInput, s: UnitState, a: ProposeGrades, at: Moment) -> None:
    if s.final is not None:
        raise ActionRejected(
            f"proposal {s.proposal_no} is approved and published; a new proposal "
            "follows only an upheld objection"
        )
    if s.pending is not None:
        raise ActionRejected(
            f"proposal {s.proposal_no} awaits approval; it must be approved or returned"
        )
    for cadre_id in a.cadre_grades:
        require_cadre(u, f"cadre_grades.{cadre_id}", cadre_id)
    if isinstance(a.evaluation, GroupEvaluation):
        for cadre_id in a.evaluation.cadres:
            require_cadre(u, f"evaluation.cadres.{cadre_id}", cadre_id)
    missing = [c.cadre_id for c in u.unit.cadres if c.cadre_id not in a.cadre_grades]
    if missing:
        raise ActionRejected(f"cadre_grades: no grade for {', '.join(missing)}")


def check_grading_rules(u: UnitInput, s: UnitState, a: ProposeGrades, at: Moment) -> None:
    flagged = {f.target_id for f in s.flags if f.code == "incompetent_votes" and f.target_id}
    violations = proposal_violations(
        u.unit,
        u.year,
        u.policy.grading,
        {k: v.value for k, v in a.cadre_grades.items()},
        flagged,
        a.determinations,
    )
    if violations:
        raise ActionRejected("cadre_grades: " + "; ".join(violations))


def check_approve_grades(u: UnitInput, s: UnitState, a: ApproveGrades, at: Moment) -> None:
    """Four-eyes: whoever proposed the grades cannot approve them; and a proposal the
    campaign's calibration has not cleared waits for it, or is returned if the campaign could
    not be asked."""
    if s.pending is None:
        raise ActionRejected("there is no grade proposal awaiting approval")
    c = s.calibration
    if c is not None and c.proposal_no == s.proposal_no:
        if c.state == "pending":
            raise ActionRejected(
                f"proposal {c.proposal_no} awaits cross-unit calibration by the campaign"
            )
        if c.state == "held":
            raise ActionRejected(
                f"proposal {c.proposal_no} is on hold by cross-unit calibration ({c.reason}); "
                "the department decides with the campaign's decide_calibration"
            )
        # Fails closed: a proposal the campaign never saw may break the pooled quota.
        if c.state == "unavailable" and a.decision == "approve":
            raise ActionRejected(
                f"proposal {c.proposal_no} was not calibrated ({c.reason}); return it, start "
                "the campaign again (kaohe start) and propose again"
            )
    if a.actor.id == s.pending.actor.id:
        raise ActionRejected(
            f"actor.id: {a.actor.id!r} proposed these grades and cannot approve them"
        )
    if a.decision == "approve":
        publicity_window(u, a, at.now)  # a missing calendar year refuses it here


def publicity_window(
    u: UnitInput, a: ApproveGrades, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """When 公示 of grades approved `now` opens and ends: from the publication day (today,
    or the later working day `publicity_from` names), for the policy's working days."""
    cal = WorkCalendar.of_policy(u.policy.calendar)
    today = shanghai_date(now)
    day = a.publicity_from or today
    try:
        if day < today:
            raise ActionRejected(
                f"publicity_from: {day} is past; give today or a later working day"
            )
        if day > today and not cal.is_working_day(day):
            raise ActionRejected(f"publicity_from: {day} is not a working day")
        seconds = u.policy.demo.publicity_seconds
        opens = now if day == today else end_of_day(day - dt.timedelta(days=1))
        if seconds is not None:
            return opens, opens + dt.timedelta(seconds=seconds)
        return opens, cal.publicity_end(day, u.policy.grading.publicity_working_days)
    except CalendarUnavailableError as err:
        raise ActionRejected(str(err)) from None


def check_raise_objection(u: UnitInput, s: UnitState, a: RaiseObjection, at: Moment) -> None:
    if s.publicity_ends is None or at.now >= s.publicity_ends:
        raise ActionRejected("objections are taken during publicity (公示) only")
    if s.publicity_starts is not None and at.now < s.publicity_starts:
        raise ActionRejected(
            f"publicity (公示) opens on {shanghai_date(s.publicity_starts)}; objections from then"
        )
    if a.objection_id in s.objections:
        raise ActionRejected(f"objection_id: {a.objection_id!r} already exists")
    require_cadre(u, "cadre_id", a.cadre_id)


def check_resolve_objection(u: UnitInput, s: UnitState, a: ResolveObjection, at: Moment) -> None:
    item = s.objections.get(a.objection_id)
    if item is None:
        known = ", ".join(s.objections) or "none"
        raise ActionRejected(f"objection_id: unknown objection {a.objection_id!r}; {known}")
    if item.state != "open":
        raise ActionRejected(f"objection_id: {a.objection_id!r} is already {item.state}")


def check_record_follow_up(u: UnitInput, s: UnitState, a: RecordFollowUp, at: Moment) -> None:
    if a.follow_up_id in s.follow_ups:
        raise ActionRejected(f"follow_up_id: {a.follow_up_id!r} already exists")
    require_cadre(u, "cadre_id", a.cadre_id)


def check_request_review(u: UnitInput, s: UnitState, a: RequestReview, at: Moment) -> None:
    require_cadre(u, "cadre_id", a.cadre_id)
    if a.actor.role == Role.CADRE and a.actor.id != a.cadre_id:
        raise ActionRejected(
            f"actor.id: cadre {a.actor.id!r} may ask 复核 for itself only, not {a.cadre_id!r}"
        )
    days = u.policy.result_use.review_request_days
    if s.notified_at is None or at.now > s.notified_at + dt.timedelta(days=days):
        raise ActionRejected(f"复核 must be requested within {days} days of notification")
    if f"review-{a.cadre_id}" in s.follow_ups:
        raise ActionRejected(f"cadre_id: {a.cadre_id!r} has already requested 复核")


# Who may close feedback (反馈) follow-ups: the one it is sent to signs, or the department
# records a signature on paper (or a refusal to sign).
_CADRE_SIGNERS = frozenset({Role.CADRE, Role.DEPARTMENT})
_UNIT_SIGNERS = frozenset({Role.UNIT, Role.INTEGRATOR, Role.DEPARTMENT})


def check_close_follow_up(u: UnitInput, s: UnitState, a: CloseFollowUp, at: Moment) -> None:
    item = s.follow_ups.get(a.follow_up_id)
    if item is None:
        known = ", ".join(s.follow_ups) or "none"
        raise ActionRejected(f"follow_up_id: unknown follow-up {a.follow_up_id!r}; open: {known}")
    if item.closed:
        raise ActionRejected(f"follow_up_id: {a.follow_up_id!r} is already closed")
    role = a.actor.role
    own_feedback = item.kind == FollowUpKind.FEEDBACK and item.cadre_id == a.actor.id
    if role == Role.CADRE and not own_feedback:
        raise ActionRejected(
            f"actor.role: a cadre signs only its own feedback (feedback-{a.actor.id}), "
            f"not {a.follow_up_id!r}"
        )
    if item.kind == FollowUpKind.FEEDBACK:
        signers = _CADRE_SIGNERS if item.cadre_id else _UNIT_SIGNERS
        if role not in signers:
            who = (
                f"cadre {item.cadre_id} itself (actor.role 'cadre', actor.id {item.cadre_id!r})"
                if item.cadre_id
                else "the unit (actor.role 'unit' or 'integrator')"
            )
            raise ActionRejected(
                f"actor.role: {a.follow_up_id!r} is signed by {who} or recorded by the "
                f"department, not by {role.value!r}"
            )


def check_close_stage(u: UnitInput, s: UnitState, a: CloseStage, at: Moment) -> None:
    """Result use ends only when its follow-ups are closed; grading never early."""
    if a.stage != s.stage:
        raise ActionRejected(f"stage: {a.stage.value!r} is not the current stage {s.stage.value!r}")
    if a.stage not in CLOSABLE_EARLY:
        raise ActionRejected(f"stage: {a.stage.value!r} cannot be closed early")
    if a.stage == Stage.RESULT_USE:
        open_ids = s.open_follow_ups()
        if open_ids:
            raise ActionRejected(
                f"stage: result_use ends when every follow-up is closed; open: "
                f"{', '.join(open_ids)} (close_follow_up each)"
            )


def check_pause(u: UnitInput, s: UnitState, a: PauseUnit, at: Moment) -> None:
    if s.clock.paused_since is not None:
        raise ActionRejected(f"the unit is paused since {s.clock.paused_since.isoformat()}")


def check_resume(u: UnitInput, s: UnitState, a: ResumeUnit, at: Moment) -> None:
    if s.clock.paused_since is None:
        raise ActionRejected("the unit is not paused")


def check_extend_deadline(u: UnitInput, s: UnitState, a: ExtendDeadline, at: Moment) -> None:
    if s.clock.deadline is None:
        raise ActionRejected(f"stage {s.stage.value!r} has no deadline to extend")
