"""The stage transition table: the single source of truth for the order of stages and for
which action is accepted in which stage and from which role."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from schemas.common import Role, Stage

ORDER: tuple[Stage, ...] = (
    Stage.NOTICE,
    Stage.REPORT_BACK,
    Stage.EVALUATION,
    Stage.TALKS,
    Stage.GRADING,
    Stage.RESULT_USE,
    Stage.COMPLETED,
)
NEXT: dict[Stage, Stage] = dict(pairwise(ORDER))
TERMINAL: frozenset[Stage] = frozenset({Stage.COMPLETED, Stage.CANCELLED})
WORKING: frozenset[Stage] = frozenset(ORDER) - TERMINAL
# Grading cannot be closed early: a unit cannot leave it without approved grades.
CLOSABLE_EARLY: frozenset[Stage] = frozenset(
    {Stage.NOTICE, Stage.REPORT_BACK, Stage.EVALUATION, Stage.TALKS, Stage.RESULT_USE}
)

_OUTSIDE = frozenset({Role.UNIT, Role.INTEGRATOR})
_GROUP = frozenset({Role.ASSESSMENT_GROUP, Role.DEPARTMENT})
_DEPARTMENT = frozenset({Role.DEPARTMENT})


@dataclass(frozen=True)
class ActionRule:
    stages: frozenset[Stage]
    roles: frozenset[Role]


ACTION_RULES: dict[str, ActionRule] = {
    "acknowledge_notice": ActionRule(frozenset({Stage.NOTICE}), _OUTSIDE | {Role.DEPARTMENT}),
    "submit_report": ActionRule(frozenset({Stage.REPORT_BACK}), _OUTSIDE),
    "record_ballots": ActionRule(
        frozenset({Stage.EVALUATION}), frozenset({Role.INTEGRATOR, Role.ASSESSMENT_GROUP})
    ),
    "register_ballot_batch": ActionRule(
        frozenset({Stage.EVALUATION}), frozenset({Role.INTEGRATOR, Role.ASSESSMENT_GROUP})
    ),
    "close_evaluation": ActionRule(frozenset({Stage.EVALUATION}), _GROUP),
    "record_talk": ActionRule(
        frozenset({Stage.TALKS}), frozenset({Role.ASSESSMENT_GROUP, Role.INTEGRATOR})
    ),
    "propose_grades": ActionRule(frozenset({Stage.GRADING}), frozenset({Role.ASSESSMENT_GROUP})),
    "approve_grades": ActionRule(
        frozenset({Stage.GRADING}), frozenset({Role.APPROVER, Role.DEPARTMENT})
    ),
    "raise_objection": ActionRule(frozenset({Stage.GRADING}), _OUTSIDE | {Role.DEPARTMENT}),
    "resolve_objection": ActionRule(
        frozenset({Stage.GRADING}), frozenset({Role.DEPARTMENT, Role.APPROVER})
    ),
    "record_follow_up": ActionRule(frozenset({Stage.RESULT_USE}), _GROUP | _OUTSIDE),
    # A cadre in person asks 复核 for itself and signs its own feedback (checked in the unit).
    "request_review": ActionRule(frozenset({Stage.RESULT_USE}), _OUTSIDE | {Role.CADRE}),
    "close_follow_up": ActionRule(frozenset({Stage.RESULT_USE}), _GROUP | _OUTSIDE | {Role.CADRE}),
    "close_stage": ActionRule(CLOSABLE_EARLY, _GROUP),
    # The deadline clock, in any working stage: the department's (DOMAIN.md "Timing").
    "extend_deadline": ActionRule(WORKING, _DEPARTMENT),
    "pause": ActionRule(WORKING, _DEPARTMENT),
    "resume": ActionRule(WORKING, _DEPARTMENT),
}


def stage_number(stage: Stage) -> int:
    """1-based position among the six working stages (7 for completed)."""
    return ORDER.index(stage) + 1 if stage in ORDER else 0
