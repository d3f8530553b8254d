"""The worker's Prometheus endpoint, scraped from a real `kaohe worker`: the SDK's runtime
metrics and kaohe's own (units per stage, stalled units, ballots, notification deliveries)
in one valid exposition; and OpenTelemetry spans from the same worker over OTLP/HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from kaohe.listening import free_port, listen
from kaohe.sim.simulate import TokenSource, drive_unit, wait_for_status
from schemas.common import Stage
from schemas.roster import Contact
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_deadlines import clock_policy
from tests.test_notify_channels import start
from tests.test_worker_restart import spawn_worker

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(url: str) -> Samples:
    """Every sample by name; parsing the whole text fails on an invalid exposition."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    response.raise_for_status()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


async def scrape_until(url: str, ready: Callable[[Samples], bool], seconds: float = 60) -> Samples:
    for _ in range(int(seconds * 4)):
        try:
            samples = await scrape(url)
            if ready(samples):
                return samples
        except httpx.TransportError:
            pass  # the worker is still starting
        await asyncio.sleep(0.25)
    raise AssertionError(f"metrics at {url} never showed what was expected: {dict(samples)}")


@asynccontextmanager
async def worker_with(stack: Stack, tmp_path: Path, **env: str) -> AsyncIterator[str]:
    """A `kaohe worker` subprocess on a task queue of its own; yields the queue."""
    task_queue = f"metrics-{uuid.uuid4().hex[:8]}"
    process = spawn_worker(stack, task_queue, tmp_path / "worker.log", env=env)
    try:
        yield task_queue
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_one_endpoint_serves_the_sdk_metrics_and_kaohes_own(
    stack: Stack, client: Client, pool: asyncpg.Pool, tokens: TokenSource, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {
        "KAOHE_METRICS_PORT": str(port),
        "KAOHE_METRICS_REFRESH_SECONDS": "0.5",
        # A webhook nobody answers: one failed attempt, then the last one dead-letters it.
        "KAOHE_NOTIFY_MAX_ATTEMPTS": "2",
        "KAOHE_WEBHOOK_TIMEOUT": "0.5",
    }
    async with worker_with(stack, tmp_path, **env) as task_queue:
        dead_end = f"http://127.0.0.1:{free_port()}/hook"
        unit, handle = await start(client, task_queue, {"office": Contact(webhook=dead_end)})
        await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
        # A second unit stalls in its notice stage (a working day of a second).
        stalled = await start_unit(client, task_queue, sample_unit(), policy=clock_policy(1, 1, 1))
        await wait_for_status(stalled, lambda s: s.stalled, 30)

        samples = await scrape_until(
            url,
            lambda s: (
                value(s, "kaohe_units_running", stage="talks") == 1
                and value(s, "kaohe_units_stalled", stage="notice") == 1
                and value(s, "kaohe_notification_deliveries_total", outcome="dead_lettered") == 1
            ),
        )
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200

    # kaohe's gauges, read from visibility for this task queue only.
    assert value(samples, "kaohe_units_running", stage="notice") == 1
    assert value(samples, "kaohe_units_running") == 2
    assert value(samples, "kaohe_units_stalled") == 1
    assert value(samples, "kaohe_visibility_refreshed_timestamp_seconds") > 0
    # Counters: what the database holds, stored by this worker.
    async with pool.acquire() as conn:
        ballots, sheets = await conn.fetchrow(
            "SELECT sum(ballots), sum(sheets) FROM ballot_batches WHERE workflow_id = $1",
            handle.id,
        )
        sent = await conn.fetchval(
            "SELECT count(*) FROM notification_deliveries d JOIN notifications n "
            "USING (idempotency_key) WHERE n.workflow_id IN ($1, $2) AND d.status = 'sent'",
            handle.id,
            stalled.id,
        )
    assert ballots > 0
    assert value(samples, "kaohe_ballots_ingested_total", source="pool") == ballots
    assert value(samples, "kaohe_ballot_sheets_ingested_total", source="pool") == sheets
    assert value(samples, "kaohe_notification_deliveries_total", outcome="sent") == sent > 0
    webhook = {"channel": "webhook"}
    assert value(samples, "kaohe_notification_deliveries_total", outcome="failed", **webhook) == 1
    # The SDK's runtime metrics, from its own exporter, in the same answer.
    assert value(samples, "temporal_workflow_task_execution_latency_count") > 0
    assert value(samples, "temporal_activity_execution_latency_count") > 0
    assert any(name.startswith("temporal_worker_task_slots") for name in samples)


async def test_sigterm_stops_the_worker_cleanly(stack: Stack, tmp_path: Path) -> None:
    """Kubernetes and `docker stop` send SIGTERM: the worker shuts down and exits with 0
    (Python's default would be death by signal, or nothing at all as a container's PID 1)."""
    port = free_port()
    task_queue = f"sigterm-{uuid.uuid4().hex[:8]}"
    env = {"KAOHE_METRICS_PORT": str(port)}
    process = spawn_worker(stack, task_queue, tmp_path / "worker.log", env=env)
    try:
        await scrape_until(f"http://127.0.0.1:{port}/metrics", lambda s: True)
        process.terminate()
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Beginning worker shutdown" in (tmp_path / "worker.log").read_text()


class Collector:
    """An OTLP/HTTP trace receiver: the span names of every export it got."""

    def __init__(self) -> None:
        self.spans: list[str] = []

    async def export(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.spans += [span.name for span in scope.spans]
        return web.Response(body=b"", content_type="application/x-protobuf")


async def test_spans_of_workflows_and_activities_reach_an_otlp_collector(
    stack: Stack, client: Client, tokens: TokenSource, tmp_path: Path
) -> None:
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.export)
    port = free_port()
    runner = await listen(app, "127.0.0.1", port)
    env = {
        "KAOHE_OTEL_TRACING": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    try:
        async with worker_with(stack, tmp_path, **env) as task_queue:
            unit = sample_unit()
            handle = await start_unit(client, task_queue, unit)
            await drive_unit(client, handle.id, unit, stop_at=Stage.REPORT_BACK, tokens=tokens)
            for _ in range(120):
                wanted = {"RunWorkflow:UnitAssessment", "RunActivity:register_unit"}
                if wanted <= set(collector.spans):
                    break
                await asyncio.sleep(0.25)
    finally:
        await runner.cleanup()
    assert "RunWorkflow:UnitAssessment" in collector.spans
    assert "StartActivity:register_unit" in collector.spans
    assert "RunActivity:register_unit" in collector.spans
    assert any(name.startswith("HandleUpdate:") for name in collector.spans), collector.spans
