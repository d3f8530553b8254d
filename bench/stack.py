"""A private stack for one benchmark run (bench/measure.py measures, bench/report.py prints).

PostgreSQL and the Temporal dev server (no UI) are started on free ports in a temporary
directory, the migrations are applied, and workers run in this process. Everything is
stopped (and the directory removed unless `keep`) however the run ends.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import structlog
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.db import apply_migrations, create_pool
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from activities.talk_cipher import TalkCipher
from bench.report import console
from kaohe.assertions import Keyring
from kaohe.client import connect
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.processes import stop_in_order
from kaohe.devstack.stack import start_private_servers
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.keys import make_dev_keys
from kaohe.settings import Settings
from schemas.policy import DemoClock, Policy
from schemas.roster import UnitSpec
from schemas.status import UnitStatus
from schemas.workflow_io import UnitInput
from worker import build_worker
from workflows.campaign import unit_workflow_id
from workflows.unit import UnitAssessment

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
            "KAOHE_TALK_KEYS": "w-bench:" + base64.b64encode(b"w" * 32).decode(),
            "KAOHE_LOG_FORMAT": "json",
            "KAOHE_ASSERTION_KEYS": self.assertion_keys,
        }

    @property
    def assertion_keys(self) -> str:
        keys = self.settings.assertion_keys
        assert keys is not None
        return keys.get_secret_value()

    def task_queue(self, purpose: str) -> str:
        return f"bench-{purpose}-{self.run_id}"

    def kaohe_worker(self, task_queue: str) -> Worker:
        """The product's worker (kaohe workflows and activities), as `kaohe worker` builds it."""
        return build_worker(
            self.client,
            StorageActivities(self.pool),
            NotifyActivities(self.pool),
            task_queue,
        )

    async def start_unit(
        self, task_queue: str, campaign_id: str, unit: UnitSpec, title: str = "基准考核"
    ) -> WorkflowHandle[UnitAssessment, UnitStatus]:
        """A UnitAssessment of its own (no campaign workflow) under the bench policy."""
        return await self.client.start_workflow(
            UnitAssessment.run,
            UnitInput(
                campaign_id=campaign_id,
                year=2026,
                campaign_title=title,
                unit=unit,
                policy=BENCH_POLICY,
            ),
            id=unit_workflow_id(campaign_id, unit.unit_id),
            task_queue=task_queue,
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
            temporal_address=temporal.address,
            database_url=url,
            data_dir=root,
            task_queue="bench",
            assertion_keys=Keyring.generate().text(),
        )
        make_dev_keys(settings)  # the payload key file, as `kaohe dev` makes it
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
            await stop_in_order(temporal, postgres)
        finally:
            restore_logging()
            if keep:
                console.print(f"[dim]kept the stack's data and logs in {root}[/]")
            else:
                shutil.rmtree(root, ignore_errors=True)


# Publicity (公示) ends at once in benchmarks: five working days would stall every unit.
BENCH_POLICY = Policy(demo_clock=DemoClock(publicity_seconds=0))
