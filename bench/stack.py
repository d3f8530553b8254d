"""A private stack for one benchmark run, and the measuring helpers the benchmarks share.

PostgreSQL and the Temporal dev server (no UI) are started on free ports in a temporary
directory, the migrations are applied, and workers run in this process. Everything is
stopped (and the directory removed unless `keep`) however the run ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
import structlog
from rich.console import Console
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.db import apply_migrations, create_pool
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from activities.talk_cipher import TalkCipher
from kaohe.client import connect
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.stack import start_private_servers
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.settings import Settings
from schemas.policy import DemoClock, Policy
from worker import build_worker

T = TypeVar("T")

# Wide enough for the tables when stdout is a pipe (rich assumes 80 columns then).
console = Console(width=max(Console().width, 110), highlight=False)

BENCH_KEY = TalkCipher(b"b" * 32, "bench-key")
# `kaohe worker` as a process of its own (the benches that kill it or measure its memory).
KAOHE = str(Path(sys.executable).parent / "kaohe")


@dataclass
class BenchStack:
    root: Path
    postgres: EmbeddedPostgres
    temporal: TemporalDevServer
    database_url: str
    settings: Settings
    client: Client
    pool: asyncpg.Pool
    log_path: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Where each log ended once the stack was up: start-up noise is not the benchmark's.
    log_offsets: dict[Path, int] = field(default_factory=dict)

    def logs(self) -> dict[str, Path]:
        return {
            "worker + SDK": self.log_path,
            "temporal": self.temporal.log_path,
            "postgres": self.postgres.log_path,
        }

    def mark_logs(self) -> None:
        for path in self.logs().values():
            with contextlib.suppress(OSError):
                self.log_offsets[path] = path.stat().st_size

    def worker_env(self, task_queue: str) -> dict[str, str]:
        """Environment for a `kaohe worker` process on this stack and task queue."""
        return {
            **os.environ,
            "KAOHE_TEMPORAL_ADDRESS": self.temporal.address,
            "KAOHE_DATABASE_URL": self.database_url,
            "KAOHE_DATA_DIR": str(self.root),
            "KAOHE_TASK_QUEUE": task_queue,
            "KAOHE_TALK_KEY": base64.b64encode(b"w" * 32).decode(),
            "KAOHE_LOG_FORMAT": "json",
        }

    def task_queue(self, purpose: str) -> str:
        return f"bench-{purpose}-{self.run_id}"

    def kaohe_worker(self, task_queue: str) -> Worker:
        """The product's worker (kaohe workflows and activities), as `kaohe worker` builds it."""
        return build_worker(
            self.client,
            StorageActivities(self.pool, BENCH_KEY),
            NotifyActivities(self.pool),
            task_queue,
        )


def _configure_logging(path: Path) -> Callable[[], None]:
    """The product logs every activity at INFO: keep that cost, but in a file, not on screen.

    Returns the function that puts logging back as it was and closes the file.
    """
    log_file = path.open("a", encoding="utf-8", buffering=1)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=log_file),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)

    def restore() -> None:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()
        log_file.close()

    return restore


@contextlib.asynccontextmanager
async def private_stack(keep: bool = False) -> AsyncIterator[BenchStack]:
    root = Path(tempfile.mkdtemp(prefix="kaohe-bench-"))
    log_path = root / "bench.log"
    restore_logging = _configure_logging(log_path)
    postgres: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None
    console.print(f"[dim]starting PostgreSQL and Temporal in {root} ...[/]")
    try:
        postgres, url, temporal = await start_private_servers(root)
        await apply_migrations(url)
        settings = Settings(
            temporal_address=temporal.address, database_url=url, data_dir=root, task_queue="bench"
        )
        client = await connect(settings)
        pool = await create_pool(url, settings.db_pool_min, settings.db_pool_max)
        stack = BenchStack(root, postgres, temporal, url, settings, client, pool, log_path)
        stack.mark_logs()
        try:
            yield stack
        finally:
            await pool.close()
    finally:
        try:
            if temporal is not None:
                await temporal.stop()
        finally:
            if postgres is not None:
                await postgres.stop()
            restore_logging()
            if keep:
                console.print(f"[dim]kept the stack's data and logs in {root}[/]")
            else:
                shutil.rmtree(root, ignore_errors=True)


# ---- measuring -------------------------------------------------------------------------------


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


def phases_table(title: str, phases: dict[str, Phase]) -> Table:
    """Queued = scheduled -> started, run = started -> closed; eager activities never queue."""
    table = Table(title=title, title_justify="left")
    for column in ("task", "count", "queued p50", "run p50", "run p99", "total p99"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for kind, phase in sorted(phases.items(), key=lambda kv: -sum(kv[1].total)):
        table.add_row(
            kind,
            str(len(phase.total)),
            ms(percentile(phase.queued, 50)),
            ms(percentile(phase.running, 50)),
            ms(percentile(phase.running, 99)),
            ms(percentile(phase.total, 99)),
        )
    return table


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


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def figures_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


# ---- what the servers and the worker logged ------------------------------------------------


# Temporal's server logs logfmt: time=... level=WARN msg="..." key=value ...
_LOGFMT_LEVEL = re.compile(r"^time=\S+ level=(\w+) ")
_LOGFMT_MSG = re.compile(r' msg="((?:[^"\\]|\\.)*)"')


def _level(line: str) -> str | None:
    """warning/error for a line of any of our logs, else None."""
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            level = str(json.loads(text).get("level", "")).lower()
            if level in ("warn", "warning"):
                return "warning"
            if level in ("error", "critical", "fatal", "panic", "dpanic"):
                return "error"
            return None
    logfmt = _LOGFMT_LEVEL.search(text)
    if logfmt is not None:
        level = logfmt.group(1).lower()
        return {"warn": "warning", "warning": "warning"}.get(level) or (
            "error" if level in ("error", "fatal", "panic", "dpanic") else None
        )
    head = text.split(" ", 1)[0]
    if head in ("WARNING", "WARN"):
        return "warning"
    if head in ("ERROR", "CRITICAL"):
        return "error"
    for marker, level in (
        (" WARNING: ", "warning"),
        (" ERROR: ", "error"),
        (" FATAL: ", "error"),
        (" PANIC: ", "error"),
    ):
        if marker in text:
            return level
    return None


def _message(line: str) -> str:
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            return str(data.get("msg") or data.get("event") or text)
    logfmt = _LOGFMT_MSG.search(text)
    return logfmt.group(1) if logfmt is not None else text


def log_summary(stack: BenchStack) -> Table:
    """Warnings and errors logged by the worker, Temporal and PostgreSQL since start-up."""
    table = Table(title="logs (warnings / errors)", title_justify="left")
    table.add_column("log")
    table.add_column("warn", justify="right")
    table.add_column("error", justify="right")
    table.add_column("first distinct messages", overflow="fold")
    for name, path in stack.logs().items():
        counts = {"warning": 0, "error": 0}
        firsts: list[str] = []
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(stack.log_offsets.get(path, 0))
            for raw in f:
                line = raw.decode("utf-8", "replace")
                level = _level(line)
                if level is None:
                    continue
                counts[level] += 1
                message = _message(line)[:160]
                if len(firsts) < 3 and message not in firsts:
                    firsts.append(message)
        table.add_row(name, str(counts["warning"]), str(counts["error"]), "\n".join(firsts))
    return table


def print_ratio_line(label: str, value: float) -> None:
    """The last line of every benchmark: plain text, so a script can parse it."""
    sys.stdout.flush()
    print(f"ratio {label} = {value:.2f}", flush=True)


# Publicity (公示) ends at once in benchmarks: five working days would stall every unit.
BENCH_POLICY = Policy(demo_clock=DemoClock(publicity_seconds=0))
