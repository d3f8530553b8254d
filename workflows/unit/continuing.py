"""A unit's history stays bounded: the unit continues as new, carrying its one state model,
well before Temporal's limits (51,200 events or 50 MB end a run), and refuses new messages
if it ever gets near them anyway (a flood of large signals while an action runs).

- `due()`: the server suggests it, or the run has CONTINUE_AT_EVENTS events or
  CONTINUE_AT_BYTES bytes of history;
- `history_full()`: from REFUSE_AT_EVENTS / REFUSE_AT_BYTES on, updates are refused in their
  validator (they never reach history) and signals before their effect, as retryable: the
  same action succeeds once the unit has continued.

What a run carries over (domain/state.py) is itself bounded: the last MAX_PROCESSED_KEPT
idempotency keys, the last MAX_REJECTIONS_KEPT rejections, the last storage failures.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.checks import ActionRejected
    from schemas.workflow_io import UnitInput
    from workflows.unit.context import Unit

CONTINUE_AT_EVENTS = 10_000
CONTINUE_AT_BYTES = 10_000_000
REFUSE_AT_EVENTS = 40_000
REFUSE_AT_BYTES = 40_000_000


class HistoryFull(ActionRejected):
    """Refused while the unit's history is near Temporal's limits; retryable: the unit
    continues as new first."""

    retryable = True
    error_type = "HistoryFull"


def due() -> bool:
    info = workflow.info()
    return (
        info.is_continue_as_new_suggested()
        or info.get_current_history_length() >= CONTINUE_AT_EVENTS
        or info.get_current_history_size() >= CONTINUE_AT_BYTES
    )


def check_history() -> None:
    """Raises HistoryFull when a message now could take the run past Temporal's limits."""
    info = workflow.info()
    events, size = info.get_current_history_length(), info.get_current_history_size()
    if events >= REFUSE_AT_EVENTS or size >= REFUSE_AT_BYTES:
        raise HistoryFull(
            f"(unit): its history holds {events} events, {size / 1e6:.1f} MB, near Temporal's "
            "limit; it continues as new shortly: send this again"
        )


async def continue_as_new(u: Unit, input: UnitInput, loops: list[asyncio.Task[None]]) -> None:
    """Stops the unit's clocks where they wait (they hold no lock there), lets running
    handlers and background work finish, and continues as new with the state."""
    async with u.lock:  # no handler is inside its effect, no clock inside a step
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    await workflow.wait_condition(workflow.all_handlers_finished)
    await asyncio.gather(*u.background)
    workflow.logger.info(
        "continuing as new at %s events, %s bytes",
        workflow.info().get_current_history_length(),
        workflow.info().get_current_history_size(),
    )
    carried = input.model_copy(update={"carried_state": u.state.model_dump(mode="json")})
    workflow.continue_as_new(carried, search_attributes=workflow.info().typed_search_attributes)
