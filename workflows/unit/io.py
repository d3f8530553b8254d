"""The unit's I/O: every activity it calls, by typed reference (a renamed activity fails at
import, not at run time), with its timeouts and retry policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ballots import BallotActivities
    from activities.notify import NotifyActivities
    from activities.storage import StorageActivities
    from schemas.workflow_io import Notification, NotifyOutcome

# Storage survives a database restart: retry with backoff for as long as it takes
# (past a minute the SDK waits between local attempts with a timer), except for errors
# that say the request itself is wrong.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["BatchConflict", "BallotRejected"],
)
ACTIVITY_TIMEOUT = timedelta(seconds=30)
NOTIFY_HEARTBEAT_TIMEOUT = timedelta(seconds=5)

A = TypeVar("A")
R = TypeVar("R")

# What the unit stores with, re-exported so effects name the activity they mean.
storage = StorageActivities
ballots = BallotActivities


async def store(activity: Callable[[Any, A], Awaitable[R]], arg: A) -> R:
    """A storage write as a local activity: short, idempotent database writes in this
    worker, with no round trip through the server, and their inputs (ballots, talk content)
    are not copied into history."""
    return await workflow.execute_local_activity_method(
        activity,  # type: ignore[arg-type]
        arg,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
    )


async def send_notification(n: Notification) -> NotifyOutcome:
    """A server-scheduled activity: a local one would keep the workflow task open while a
    failing webhook is retried, holding up every update."""
    return await workflow.execute_activity_method(
        NotifyActivities.notify,
        n,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        heartbeat_timeout=NOTIFY_HEARTBEAT_TIMEOUT,  # a dead worker's, retried soon
        retry_policy=ACTIVITY_RETRY,
    )
