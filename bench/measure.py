"""What the benchmarks measure: percentiles, ratios, jobs in flight, task times from the
histories, CPU seconds of the stack's processes, and a settled heap before each timed phase."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

if TYPE_CHECKING:
    from bench.stack import BenchStack

T = TypeVar("T")


async def settle(stack: BenchStack) -> None:
    """Before each timed phase: the Python heap settled (settle_heap) and PostgreSQL's dirty
    buffers written out (CHECKPOINT), so no phase pays for the writes of the one before."""
    async with stack.pool.acquire() as conn:
        await conn.execute("CHECKPOINT")
    settle_heap()


def settle_heap() -> None:
    """Collects, then freezes what is alive: the bench's own fixtures (tens of thousands of
    ballot sheets, held for the whole run) are then skipped by every later full collection,
    which would otherwise charge the measured phase up to 0.2 s a pause for objects a
    worker never holds. Called before each timed phase, so every side gets the same."""
    gc.collect()
    gc.freeze()


def percentile(samples: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN when there are no samples."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


async def bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Runs the jobs with at most `limit` in flight; results in job order; first error raises."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(job)) for job in jobs]
    return [t.result() for t in tasks]


@dataclass
class Phase:
    """Server-side times of one kind of task, from event timestamps, in seconds."""

    queued: list[float] = field(default_factory=list)  # scheduled -> started
    running: list[float] = field(default_factory=list)  # started -> completed/failed
    total: list[float] = field(default_factory=list)  # scheduled -> completed/failed


_SCHEDULED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
}
_STARTED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity_task_started_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "workflow_task_started_event_attributes",
}
_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow_task_completed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "workflow_task_failed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: "workflow_task_timed_out_event_attributes",
}
_PROBLEMS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


async def history_breakdown(
    handles: list[WorkflowHandle[Any, Any]], limit: int = 10
) -> tuple[int, dict[str, Phase]]:
    """Total events of the histories, and per activity type / workflow task their times."""
    histories = await bounded(limit, [lambda h=h: h.fetch_history() for h in handles])
    phases: dict[str, Phase] = defaultdict(Phase)
    events = 0
    for history in histories:
        events += len(history.events)
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        for e in history.events:
            at = e.event_time.ToNanoseconds() / 1e9
            if e.event_type in _SCHEDULED:
                kind = (
                    f"activity {e.activity_task_scheduled_event_attributes.activity_type.name}"
                    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                    else "workflow task"
                )
                scheduled[e.event_id] = (kind, at)
            elif e.event_type in _STARTED:
                started[getattr(e, _STARTED[e.event_type]).scheduled_event_id] = at
            elif e.event_type in _CLOSED:
                sid = getattr(e, _CLOSED[e.event_type]).scheduled_event_id
                kind, at_scheduled = scheduled[sid]
                if e.event_type in _PROBLEMS:
                    kind += f" ({EventType.Name(e.event_type).removeprefix('EVENT_TYPE_')})"
                phase = phases[kind]
                at_started = started.get(sid, at_scheduled)
                phase.queued.append(at_started - at_scheduled)
                phase.running.append(at - at_started)
                phase.total.append(at - at_scheduled)
    return events, dict(phases)


def cpu_snapshot(stack: BenchStack) -> dict[str, float]:
    """CPU seconds used so far by this process (client, worker, SDK core), Temporal and
    PostgreSQL (the postmaster, its live backends and the backends it has reaped)."""

    def own(proc: psutil.Process, reaped: bool) -> float:
        t = proc.cpu_times()
        return t.user + t.system + ((t.children_user + t.children_system) if reaped else 0.0)

    def tree(pid: int | None) -> float:
        if pid is None:
            return math.nan
        try:
            root = psutil.Process(pid)
            total = own(root, reaped=True)
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += own(child, reaped=False)
            return total
        except psutil.Error:
            return math.nan

    return {
        "python (client + workers)": own(psutil.Process(), reaped=False),
        "temporal server": tree(stack.temporal.pid),
        "postgres": tree(stack.postgres.pid),
    }


def cpu_rows(
    before: dict[str, float], after: dict[str, float], wall: float
) -> list[tuple[str, str]]:
    rows = []
    for name in before:
        used = after[name] - before[name]
        rows.append((f"CPU {name}", f"{used:.2f} s ({ratio(used, wall):.0%} of wall)"))
    return rows
