"""The unit workflow, split by concern: workflow.py (the run loop and the handlers),
handlers.py (messages to actions), context.py (state, transitions, records), a module per
stage's effects, clock.py (deadlines), timer.py (the updatable timer) and io.py (activities).
"""

from workflows.unit.workflow import UnitAssessment

__all__ = ["UnitAssessment"]
