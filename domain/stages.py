"""The stage transition table: the order of the stages and which may be closed early. Which
action is accepted in which stage, from which role, is domain/actions.py's table."""

from __future__ import annotations

from itertools import pairwise

from schemas.common import Stage

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


def stage_number(stage: Stage) -> int:
    """1-based position among the six working stages (7 for completed)."""
    return ORDER.index(stage) + 1 if stage in ORDER else 0
