"""The table of actions: one row per action a unit takes, with its model, the stages and roles
it is accepted in and from, and its checks (domain/checks.py). Pure: no Temporal, no I/O.

A row's `check_payload` looks only at what never changes after it is first seen (the roster,
the policy, settled results such as the evaluation's flags): it runs once, in an update's
validator or a signal's handler. `check` runs again under the unit's lock before the effect,
since the state may have moved since validation. The effects are in workflows/unit/, and
workflows/unit/workflow.py binds each row to its effect in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import checks as c
from domain.checks import ActionRejected, Check, Moment
from domain.stages import CLOSABLE_EARLY, WORKING
from domain.state import UnitState
from schemas import messages as m
from schemas.common import Action, Role, Stage
from schemas.workflow_io import UnitInput

__all__ = ["ACTIONS", "ActionRejected", "ActionRule", "Moment"]


@dataclass(frozen=True)
class ActionRule:
    name: str
    model: type[Action]
    stages: frozenset[Stage]
    roles: frozenset[Role]
    check: Check | None = None
    check_payload: Check | None = None

    def admit(
        self,
        unit: UnitInput,
        state: UnitState,
        action: Action,
        at: Moment,
        *,
        payload_checked: bool = False,
    ) -> None:
        """Every check of the row, in order: stage, role, then the action's own (the payload
        check left out when it ran already)."""
        if state.stage not in self.stages:
            allowed = ", ".join(sorted(s.value for s in self.stages))
            raise ActionRejected(
                f"{self.name} is not accepted now: the unit is in stage {state.stage.value!r} "
                f"(current stage), and {self.name} belongs to {allowed}"
            )
        if action.actor.role not in self.roles:
            roles = ", ".join(sorted(r.value for r in self.roles))
            raise ActionRejected(
                f"actor.role: {action.actor.role.value!r} may not {self.name}; "
                f"allowed roles: {roles}"
            )
        if not payload_checked and self.check_payload is not None:
            self.check_payload(unit, state, action, at)
        if self.check is not None:
            self.check(unit, state, action, at)


# ---- the table -------------------------------------------------------------------------

_OUTSIDE = frozenset({Role.UNIT, Role.INTEGRATOR})
_GROUP = frozenset({Role.ASSESSMENT_GROUP, Role.DEPARTMENT})
_DEPARTMENT = frozenset({Role.DEPARTMENT})
_BALLOTS = frozenset({Role.INTEGRATOR, Role.ASSESSMENT_GROUP})


def _row(
    name: str,
    model: type[Action],
    stages: frozenset[Stage] | set[Stage],
    roles: frozenset[Role] | set[Role],
    check: Check | None = None,
    check_payload: Check | None = None,
) -> tuple[str, ActionRule]:
    return name, ActionRule(name, model, frozenset(stages), frozenset(roles), check, check_payload)


ACTIONS: dict[str, ActionRule] = dict(
    [
        _row("acknowledge_notice", m.AcknowledgeNotice, {Stage.NOTICE}, _OUTSIDE | _DEPARTMENT),
        _row("submit_report", m.SubmitReport, {Stage.REPORT_BACK}, _OUTSIDE, c.check_submit_report),
        _row(
            "register_ballot_batch",
            m.RegisterBallotBatch,
            {Stage.EVALUATION},
            _BALLOTS,
            c.check_new_batch,
        ),
        _row(
            "close_evaluation",
            m.CloseEvaluation,
            {Stage.EVALUATION},
            _GROUP,
            c.check_close_evaluation,
        ),
        _row(
            "record_talk",
            m.RecordTalk,
            {Stage.TALKS},
            {Role.ASSESSMENT_GROUP, Role.INTEGRATOR},
            c.check_record_talk,
        ),
        _row(
            "propose_grades",
            m.ProposeGrades,
            {Stage.GRADING},
            {Role.ASSESSMENT_GROUP},
            c.check_propose_grades,
            c.check_grading_rules,
        ),
        _row(
            "approve_grades",
            m.ApproveGrades,
            {Stage.GRADING},
            {Role.APPROVER, Role.DEPARTMENT},
            c.check_approve_grades,
        ),
        _row(
            "raise_objection",
            m.RaiseObjection,
            {Stage.GRADING},
            _OUTSIDE | _DEPARTMENT,
            c.check_raise_objection,
        ),
        _row(
            "resolve_objection",
            m.ResolveObjection,
            {Stage.GRADING},
            {Role.DEPARTMENT, Role.APPROVER},
            c.check_resolve_objection,
        ),
        _row(
            "record_follow_up",
            m.RecordFollowUp,
            {Stage.RESULT_USE},
            _GROUP | _OUTSIDE,
            c.check_record_follow_up,
        ),
        # A cadre in person asks 复核 for itself and signs its own feedback.
        _row(
            "request_review",
            m.RequestReview,
            {Stage.RESULT_USE},
            _OUTSIDE | {Role.CADRE},
            c.check_request_review,
        ),
        _row(
            "close_follow_up",
            m.CloseFollowUp,
            {Stage.RESULT_USE},
            _GROUP | _OUTSIDE | {Role.CADRE},
            c.check_close_follow_up,
        ),
        _row("close_stage", m.CloseStage, CLOSABLE_EARLY, _GROUP, c.check_close_stage),
        # The deadline clock, in any working stage: the department's (DOMAIN.md "Timing").
        _row("extend_deadline", m.ExtendDeadline, WORKING, _DEPARTMENT, c.check_extend_deadline),
        _row("pause", m.PauseUnit, WORKING, _DEPARTMENT, c.check_pause),
        _row("resume", m.ResumeUnit, WORKING, _DEPARTMENT, c.check_resume),
    ]
)
