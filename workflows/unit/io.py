"""The unit's I/O: every activity it calls, by typed reference (a renamed activity fails at
import, not at run time), with its timeouts and retry policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.ballots import BallotActivities
    from activities.notify import NotifyActivities
    from activities.storage import StorageActivities
    from domain.checks import StorageFailed  # raised by `store`, caught by class everywhere
    from schemas.limits import shown
    from schemas.workflow_io import Notification, NotifyOutcome

# Server-scheduled activities outside the unit's lock (notifications, the campaign's): retry
# with backoff for as long as it takes, except for errors that say the request is wrong.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["BatchConflict", "BallotRejected"],
)
# The unit's storage writes run under its lock, so they are retried a bounded number of times
# (about 15 s: a PostgreSQL restart) and then surfaced as a StorageFailed: the action is
# refused as retryable, the unit records the failure and goes on taking other actions. A
# failure the activity calls permanent (StorageRefused: the database refuses the data) is not
# retried at all.
STORAGE_ATTEMPTS = 6
STORAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=8),
    maximum_attempts=STORAGE_ATTEMPTS,
    non_retryable_error_types=["BatchConflict", "BallotRejected", "StorageRefused"],
)
# How long the unit's own writes (registration, final grades) wait before another try.
STORAGE_PAUSE = timedelta(seconds=60)

# Errors the callers of `store` take as the activity's own answer, not as a storage failure.
ANSWERS = frozenset({"BallotRejected", "BatchConflict"})
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
    are not copied into history. Raises StorageFailed when it does not happen (see
    STORAGE_RETRY), or the activity's own answer (ANSWERS)."""
    try:
        return await workflow.execute_local_activity_method(
            activity,  # type: ignore[arg-type]
            arg,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=STORAGE_RETRY,
        )
    except CancelledError:
        raise
    except FailureError as err:
        # A local activity's failure arrives as its own ApplicationError, or an ActivityError
        # around the cause (a timeout among them).
        cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
        if isinstance(cause, ApplicationError) and cause.type in ANSWERS:
            raise
        permanent = isinstance(cause, ApplicationError) and cause.non_retryable
        name = getattr(activity, "__name__", str(activity))
        reason = shown(str(cause) or type(cause).__name__, 300)
        raise StorageFailed(
            name, reason, attempts=STORAGE_ATTEMPTS, retryable=not permanent
        ) from err


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
