"""The embedded development stack behind ``kaohe dev``: PostgreSQL, the codec server and the
Temporal dev server, in order, with the worker the caller gives; and the same servers on free
ports for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from activities.db import migrate
from kaohe.access.issuer import DevIssuer
from kaohe.anchors import anchor_file, anchor_keys
from kaohe.codec.payloads import codec_from_settings
from kaohe.codec.server import CodecServer
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.processes import ChildServer, stop_in_order
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.keys import make_dev_keys
from kaohe.listening import free_port
from kaohe.settings import Settings

S = TypeVar("S", bound="ChildServer")


async def start_on_free_ports(make: Callable[[], S], attempts: int = 5) -> tuple[S, str]:
    """`make()` a server on ports from free_port() and start it; returns it and what start()
    returned. A port free a moment ago can be taken before the server binds it (the Temporal
    dev server binds more ports of its own at random), so on "already in use" the server is
    made again, on new ports. For tests and benchmarks: a configured port never moves."""
    for attempt in range(attempts):
        server = make()
        try:
            return server, await server.start()
        except RuntimeError as err:
            await server.stop()
            if "already in use" not in str(err).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def start_private_servers(root: Path) -> tuple[EmbeddedPostgres, str, TemporalDevServer]:
    """PostgreSQL and the Temporal dev server (no UI) under `root`, on free ports, for tests
    and benchmarks: (postgres, its URL, temporal). If one fails to start, the other is
    cancelled."""
    async with asyncio.TaskGroup() as tg:
        pg = tg.create_task(
            start_on_free_ports(lambda: EmbeddedPostgres(root / "postgres", free_port()))
        )
        temporal = tg.create_task(
            start_on_free_ports(
                lambda: TemporalDevServer(
                    root / "temporal",
                    port=free_port(),
                    ui_port=free_port(),
                    http_port=free_port(),
                    ui=False,
                )
            )
        )
    (postgres, url), (server, _) = pg.result(), temporal.result()
    return postgres, url, server


async def run_dev(
    settings: Settings, *, with_worker: Callable[[str], Awaitable[None]] | None = None
) -> None:
    """Run PostgreSQL, Temporal and (if given) the worker until Ctrl-C, SIGTERM or cancellation.

    Run it with asyncio.run(), which turns Ctrl-C into cancellation of this coroutine.
    Everything is stopped in reverse order (worker, Temporal, codec server, PostgreSQL)
    however it ends. The codec server starts before Temporal so the UI can decode payloads.
    """
    console = Console()
    data_dir = settings.data_dir.resolve()
    postgres: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None
    codec_server: CodecServer | None = None
    tasks: dict[asyncio.Task[Any], str] = {}
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    terminated = False
    sigterm_handled = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if current is not None:
            current.cancel()

    # SIGTERM would otherwise end the process without any cleanup.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        sigterm_handled = True
    try:
        if settings.database_url is None:
            postgres = EmbeddedPostgres(
                data_dir / "postgres",
                settings.postgres_port,
                system_user=settings.pg_system_user,
            )
            owner_url = await postgres.start()
            database_url = postgres.app_url
        else:
            owner_url = settings.effective_migration_database_url
            database_url = settings.database_url.get_secret_value()
        # As the tables' owner; the worker and the API get the app's role (kaohe_app).
        applied, warnings = await migrate(owner_url, database_url)
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {warning}")

        # The payload, talk and assertion keys: made here once, and only here (kaohe/keys.py).
        make_dev_keys(settings)
        # The key the worker signs audit chain heads with (kaohe/anchors.py): also only here.
        anchor_keys(settings, create=True)

        # The dev stack's own token issuer, unless the settings name a real one (the API
        # serves its JWKS).
        if settings.oidc_jwks_url is None:
            DevIssuer.in_dir(data_dir, create=True)

        # Before Temporal, so the UI finds it; only when there are payload keys to decode with.
        if codec_from_settings(settings) is not None:
            codec_server = CodecServer(settings, settings.temporal_host)
            try:
                await codec_server.start()
            except OSError as err:
                codec_server = None
                raise RuntimeError(
                    f"codec server: cannot listen on port {settings.codec_port} ({err}); "
                    "set KAOHE_CODEC_PORT"
                ) from err

        temporal = TemporalDevServer(
            data_dir / "temporal",
            host=settings.temporal_host,
            port=settings.temporal_grpc_port,
            ui_port=settings.temporal_ui_port,
            http_port=settings.temporal_http_port,
            namespace=settings.temporal_namespace,
            ui_codec_endpoint=codec_server.ui_endpoint if codec_server is not None else None,
        )
        await temporal.start()

        console.print("[bold green]kaohe dev stack is up[/]")
        console.print(f"  Temporal UI    [cyan]{temporal.ui_url}[/]")
        console.print(f"  HTTP API       [cyan]{temporal.http_url}[/]")
        console.print(f"  gRPC           [cyan]{temporal.address}[/] ({temporal.namespace})")
        console.print(f"  PostgreSQL     [cyan]{database_url}[/]")
        if codec_server is not None:
            token = codec_server.token_file or "$KAOHE_CODEC_TOKEN"
            console.print(f"  codec server   [cyan]{codec_server.url}[/] (token: {token})")
        if with_worker is not None and settings.metrics_port:
            metrics = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
            console.print(f"  metrics        [cyan]{metrics}[/]")
        if with_worker is not None and settings.api_port:
            api = f"http://{settings.api_host}:{settings.api_port}"
            console.print(f"  kaohe API      [cyan]{api}/docs[/] (kaohe token mint NAME)")
        console.print(f"  migrations     {', '.join(applied) if applied else 'up to date'}")
        console.print(f"  data / logs    {data_dir}")
        if with_worker is not None and settings.audit_anchor_interval:
            # Signed audit chain heads, every audit_anchor_interval seconds (kaohe/anchors.py).
            anchors = anchor_file(settings)
            console.print(f"  audit anchors  {anchors} (kaohe audit verify --anchors {anchors})")

        # Watch the servers too: if one dies, the worker would otherwise retry forever.
        for name, server in (("PostgreSQL", postgres), ("Temporal", temporal)):
            if server is not None:
                tasks[asyncio.create_task(server.wait())] = name
        if with_worker is not None:
            tasks[asyncio.create_task(_await(with_worker(database_url)))] = "worker"
        console.print("Press Ctrl-C to stop.")
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if tasks[task] == "worker":
                task.result()  # re-raises the worker's error
            else:
                raise RuntimeError(f"{tasks[task]} exited unexpectedly (code {task.result()})")
    except asyncio.CancelledError:
        if not terminated or current is None:
            raise
        current.uncancel()  # SIGTERM is a normal way to stop: return once cleaned up
    finally:
        try:
            for task, name in tasks.items():
                task.cancel()
                if name == "worker":
                    # Await it so the worker drains before its server goes away.
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            try:
                await stop_in_order(temporal, codec_server, postgres)
            finally:
                if sigterm_handled:
                    loop.remove_signal_handler(signal.SIGTERM)
                console.print("kaohe dev stack stopped")


async def _await(awaitable: Awaitable[None]) -> None:
    """create_task() needs a coroutine; with_worker may return any awaitable."""
    await awaitable
