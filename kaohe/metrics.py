"""The worker's Prometheus endpoint: the SDK's runtime metrics and kaohe's own on one port.

`GET /metrics` answers kaohe's registry (counters kept by the activities, gauges refreshed
from Temporal's visibility store) followed by the SDK's own exposition (workflow and activity
task latencies, slots, sticky cache, polls: `temporal_*`), which the SDK's core serves on a
loopback port of its own; `GET /healthz` answers 200 while the worker runs.

Every worker process is a target of its own: counters are per process (sum them), the
per-stage gauges are the same figures read by each (take the max).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from activities.metrics import REGISTRY
from kaohe.listening import free_port, listen
from kaohe.settings import Settings
from schemas.common import Stage

log = structlog.get_logger("kaohe.metrics")

UNITS = Gauge(
    "kaohe_units_running",
    "Running unit workflows on this task queue, by stage (Temporal visibility).",
    ["stage"],
    registry=REGISTRY,
)
STALLED = Gauge(
    "kaohe_units_stalled",
    "Running units past their stage deadline (KaoheStalled), by stage.",
    ["stage"],
    registry=REGISTRY,
)
CAMPAIGNS = Gauge(
    "kaohe_campaigns_running",
    "Running campaign workflows on this task queue.",
    registry=REGISTRY,
)
REFRESHED = Gauge(
    "kaohe_visibility_refreshed_timestamp_seconds",
    "When the per-stage gauges were last read from Temporal (unix time).",
    registry=REGISTRY,
)

# The stages a running unit can be in (completed and cancelled units are closed workflows).
OPEN_STAGES = [s for s in Stage if s not in (Stage.COMPLETED, Stage.CANCELLED)]


def metrics_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's metrics on a loopback port; (runtime, address)."""
    address = f"127.0.0.1:{free_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    return runtime, address


async def refresh_gauges(client: Client, task_queue: str) -> None:
    """Reads the per-stage counts of running units (and stalled ones) from visibility."""
    base = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    units = f"{base} AND WorkflowType = 'UnitAssessment'"
    for stage in OPEN_STAGES:
        running = await client.count_workflows(f"{units} AND KaoheStage = '{stage}'")
        stalled = await client.count_workflows(
            f"{units} AND KaoheStage = '{stage}' AND KaoheStalled = true"
        )
        UNITS.labels(stage.value).set(running.count)
        STALLED.labels(stage.value).set(stalled.count)
    campaigns = await client.count_workflows(f"{base} AND WorkflowType = 'AssessmentCampaign'")
    CAMPAIGNS.set(campaigns.count)
    REFRESHED.set_to_current_time()


async def keep_gauges_fresh(client: Client, task_queue: str, every: float) -> None:
    """Refreshes the gauges every `every` seconds; a failed read keeps the last figures."""
    while True:
        try:
            await refresh_gauges(client, task_queue)
        except Exception as err:
            # Whatever failed, the loop goes on: the refresh timestamp shows stale figures.
            log.warning("visibility read for metrics failed", error=str(err))
        await asyncio.sleep(every)


@dataclass
class MetricsServer:
    """Serves /metrics and /healthz on host:port; `sdk_address` is the SDK's exporter."""

    host: str
    port: int
    sdk_address: str | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = await listen(app, self.host, self.port)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        log.info("metrics endpoint listening", url=f"http://{self.host}:{self.port}/metrics")

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        if self.sdk_address is not None:
            body += await self._sdk_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _sdk_metrics(self) -> bytes:
        try:
            async with self._session.get(f"http://{self.sdk_address}/metrics") as response:
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            # kaohe's figures are still worth serving; the gap shows in the SDK's series.
            log.warning("SDK metrics unavailable", error=str(err))
            return b""

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


@asynccontextmanager
async def serving_metrics(
    settings: Settings, client: Client, sdk_address: str | None
) -> AsyncIterator[None]:
    """The endpoint and the gauges' refresh while the body runs (nothing if metrics_port is
    0). A port already taken is logged, not fatal: the worker's work matters more than its
    figures, and a probe on /healthz shows the gap."""
    if not settings.metrics_port:
        yield
        return
    server = MetricsServer(settings.metrics_host, settings.metrics_port, sdk_address)
    try:
        await server.start()
    except OSError as err:
        log.error("metrics endpoint: cannot listen", port=settings.metrics_port, error=str(err))
        yield
        return
    gauges = asyncio.create_task(
        keep_gauges_fresh(client, settings.task_queue, settings.metrics_refresh_seconds)
    )
    try:
        yield
    finally:
        gauges.cancel()
        await server.stop()
