"""The updatable timer the unit's clocks share (deadlines, publicity, 复核), in the manner of
temporalio/samples-python `updatable_timer`: sleep until a time unless something moves it.

The caller says what "moved" means (a deadline extended, a pause, publicity withdrawn) and
plans again when this returns False.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from temporalio import workflow


async def sleep_until(at: datetime | None, *, interrupted: Callable[[], bool]) -> bool:
    """True once `at` has come; False as soon as `interrupted()` holds (with `at` None, only
    that ends the wait)."""
    if at is None:
        await workflow.wait_condition(interrupted)
        return False
    while not interrupted():
        remaining = (at - workflow.now()).total_seconds()
        if remaining <= 0:
            return True
        try:  # a wait_condition timeout must not fail the task (sdk-python #792)
            await workflow.wait_condition(interrupted, timeout=remaining)
        except TimeoutError:
            pass
    return False
