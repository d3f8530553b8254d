"""The kaohe worker: registers the workflows and the activities on the task queue and runs.

Run it with `kaohe worker` (or `python worker.py`); `kaohe dev` runs one for you.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.audit_log import write_refusal
from activities.ballots import BallotActivities
from activities.channels import Channels
from activities.db import create_pool
from activities.notify import NotifyActivities
from activities.rosters import RosterActivities
from activities.storage import StorageActivities
from kaohe.anchors import start_anchoring
from kaohe.client import connect
from kaohe.interceptors import Assertions, PermanentFailures
from kaohe.metrics import metrics_runtime, serving_metrics
from kaohe.settings import Settings
from kaohe.tracing import flush_traces
from workflows.campaign import AssessmentCampaign
from workflows.unit import UnitAssessment

log = structlog.get_logger("kaohe.worker")

WORKFLOWS = [UnitAssessment, AssessmentCampaign]


def channels(s: Settings) -> Channels:
    """The notification channels, from the settings (activities never read settings)."""
    return Channels(
        webhook_secret=s.webhook_secret.get_secret_value().encode() if s.webhook_secret else None,
        webhook_timeout=s.webhook_timeout,
        smtp_host=s.smtp_host,
        smtp_port=s.smtp_port,
        smtp_user=s.smtp_user,
        smtp_password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        smtp_from=s.smtp_from,
        smtp_starttls=s.smtp_starttls,
        max_attempts=s.notify_max_attempts,
    )


def sandbox_runner() -> SandboxedWorkflowRunner:
    # Our schemas and pydantic are deterministic and heavy to re-import per run: pass them through.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            # opentelemetry: the tracing interceptor's spans cross into the sandbox.
            "pydantic",
            "pydantic_core",
            "annotated_types",
            "schemas",
            "opentelemetry",
        )
    )


def activities_of(
    storage: StorageActivities, notify: NotifyActivities, ballots: BallotActivities | None = None
) -> list[object]:
    ballots = ballots or BallotActivities(storage.pool)
    rosters = RosterActivities(storage.pool)
    return [
        storage.register_unit,
        storage.record_transition,
        storage.append_audit,
        storage.save_acknowledgement,
        storage.save_report,
        ballots.verify_ballot_batch,
        ballots.close_ballot_pool,
        ballots.count_ballots,
        storage.accept_talk,
        storage.save_grade_proposal,
        storage.save_grade_decision,
        storage.create_follow_ups,
        storage.finalize_grades,
        storage.previous_grades,
        storage.save_objection,
        storage.resolve_objection,
        storage.save_follow_up,
        storage.close_follow_up,
        storage.load_unit_stages,
        rosters.load_roster_units,
        notify.notify,
    ]


def refusal_recorder(pool: asyncpg.Pool) -> Callable[[dict[str, Any]], None]:
    """Called from a workflow's thread when it refuses a message: the audit row is written on
    the worker's own event loop, outside the sandbox, without holding the workflow up."""
    loop = asyncio.get_running_loop()
    writing: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs)

    def record(refusal: dict[str, Any]) -> None:
        async def write() -> None:
            try:
                await write_refusal(pool, refusal)
            except Exception:
                log.exception("could not record a refused message", **refusal)

        def start() -> None:
            task = loop.create_task(write())
            writing.add(task)
            task.add_done_callback(writing.discard)

        loop.call_soon_threadsafe(start)

    return record


def build_worker(
    client: Client,
    storage: StorageActivities,
    notify: NotifyActivities,
    task_queue: str,
    settings: Settings | None = None,
) -> Worker:
    """The worker, tuned by the settings' `worker_*` (the SDK's defaults where unset)."""
    tuning: dict[str, int] = {}
    if settings is not None:
        tuning["max_cached_workflows"] = settings.worker_max_cached_workflows
        for name in (
            "max_concurrent_workflow_tasks",
            "max_concurrent_activities",
            "max_concurrent_local_activities",
        ):
            value = getattr(settings, f"worker_{name}")
            if value is not None:
                tuning[name] = value
    checks = [i for i in client.config()["interceptors"] if isinstance(i, Assertions)]
    if not checks:
        # Fail closed: a worker that cannot check assertions would take anyone's message.
        raise RuntimeError(
            "no assertion keys: set KAOHE_ASSERTION_KEYS (or run `kaohe dev`, which makes "
            "the key file in the data dir)"
        )
    checks[0].on_refused = refusal_recorder(storage.pool)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities_of(storage, notify),
        workflow_runner=sandbox_runner(),
        interceptors=[PermanentFailures()],
        **tuning,  # type: ignore[arg-type]
    )


T = TypeVar("T")


async def patiently(what: str, attempt: Callable[[], Awaitable[T]], give_up: float) -> T:
    """Retries a connection at start-up: a worker started while Temporal or PostgreSQL is
    restarting waits for it (with a warning now and then) instead of exiting."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + give_up, 0.2
    while True:
        try:
            return await attempt()
        except (RuntimeError, OSError, asyncpg.PostgresError) as err:
            # RuntimeError: the Temporal client's "failed client connect".
            if loop.time() > deadline:
                raise
            log.warning("waiting to connect", to=what, error=type(err).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def run_worker(settings: Settings, database_url: str, give_up: float = 300.0) -> None:
    """Runs until cancelled, with the metrics endpoint when `metrics_port` is set; closes
    the database pool and flushes traces on the way out."""
    runtime, sdk_metrics = metrics_runtime() if settings.metrics_port else (None, None)
    client = await patiently("temporal", lambda: connect(settings, runtime), give_up)
    pool = await patiently(
        "postgresql",
        lambda: create_pool(database_url, settings.db_pool_min, settings.db_pool_max),
        give_up,
    )
    try:
        worker = build_worker(
            client,
            StorageActivities(pool),
            NotifyActivities(pool, channels(settings)),
            settings.task_queue,
            settings,
        )
        log.info(
            "worker started",
            task_queue=settings.task_queue,
            temporal=settings.temporal_address,
            namespace=settings.temporal_namespace,
            max_cached_workflows=settings.worker_max_cached_workflows,
            db_pool_max=settings.db_pool_max,
        )
        # Signed heads of the audit chains, outside the database (kaohe/anchors.py).
        anchoring = start_anchoring(settings, pool)
        try:
            async with serving_metrics(settings, client, sdk_metrics):
                await worker.run()
        finally:
            if anchoring is not None:
                anchoring.cancel()
    finally:
        await pool.close()
        flush_traces()


if __name__ == "__main__":
    from kaohe.serving import serve_main

    serve_main(lambda settings: run_worker(settings, settings.effective_database_url))
