"""The embedded development stack behind ``kaohe dev``: PostgreSQL and the Temporal dev server,
in order, with the worker the caller gives (and kaohe's API beside it); and the same servers
on free ports for tests and benchmarks.

The dev UI decodes payloads through kaohe's API (``/v1/codec``, kaohe/api/codec.py) as the
developer who opened the one-time login link printed at start (the dev user, bound
``codec_decode``): no token or key reaches the page. It is served through kaohe/devstack/
ui_proxy.py, which tells it to send the login's cookie with its codec requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from rich.console import Console

from activities.db import migrate
from kaohe.access.bindings import codec_binding, grant
from kaohe.access.issuer import DevIssuer
from kaohe.anchors import anchor_file, anchor_keys
from kaohe.api.codec import PREFIX as CODEC_PREFIX
from kaohe.api.codec import login_link
from kaohe.codec.payloads import codec_from_settings
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.processes import ChildServer, stop_in_order
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.devstack.ui_proxy import UiProxy
from kaohe.keys import make_dev_keys
from kaohe.listening import free_port
from kaohe.settings import Settings
from schemas.common import Role

# The dev stack's developer: bound codec_decode at start, the login link is theirs.
DEV_USER = "developer"

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
    Everything is stopped in reverse order (worker, the UI's proxy, Temporal, PostgreSQL)
    however it ends. With payload keys and kaohe's API (api_port) the UI's codec endpoint is
    the API's /v1/codec, and the login link for DEV_USER is printed.
    """
    console = Console()
    data_dir = settings.data_dir.resolve()
    postgres: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None
    ui_proxy: UiProxy | None = None
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

        # The UI decodes through kaohe's API as the developer who logs in (no key, no token
        # in the UI's settings): when there are payload keys to decode with and the API runs.
        dev_issuer = None if settings.oidc_jwks_url else DevIssuer.in_dir(data_dir)
        api_runs = with_worker is not None and bool(settings.api_port)
        codec_endpoint = None
        if api_runs and codec_from_settings(settings) is not None:
            codec_endpoint = f"{settings.effective_api_url}{CODEC_PREFIX}"
            if dev_issuer is not None:
                conn = await asyncpg.connect(database_url)
                try:
                    await grant(conn, codec_binding(DEV_USER, Role.CODEC_DECODE), "kaohe dev")
                finally:
                    await conn.close()

        ui_host = settings.temporal_host
        temporal = TemporalDevServer(
            data_dir / "temporal",
            host=settings.temporal_host,
            port=settings.temporal_grpc_port,
            # Behind the proxy, the dev server's own UI is on a port of its own.
            ui_port=free_port(ui_host) if codec_endpoint else settings.temporal_ui_port,
            http_port=settings.temporal_http_port,
            namespace=settings.temporal_namespace,
            ui_codec_endpoint=codec_endpoint,
        )
        await temporal.start()
        ui_url = temporal.ui_url
        if codec_endpoint is not None and temporal.ui_url is not None:
            ui_proxy = UiProxy(ui_host, settings.temporal_ui_port, temporal.ui_url)
            try:
                ui_url = await ui_proxy.start()
            except OSError as err:
                ui_proxy = None
                raise RuntimeError(
                    f"Temporal UI: cannot listen on port {settings.temporal_ui_port} ({err}); "
                    "set KAOHE_TEMPORAL_UI_PORT"
                ) from err

        console.print("[bold green]kaohe dev stack is up[/]")
        console.print(f"  Temporal UI    [cyan]{ui_url}[/]")
        console.print(f"  HTTP API       [cyan]{temporal.http_url}[/]")
        console.print(f"  gRPC           [cyan]{temporal.address}[/] ({temporal.namespace})")
        console.print(f"  PostgreSQL     [cyan]{database_url}[/]")
        if codec_endpoint is not None:
            console.print(f"  UI decodes at  [cyan]{codec_endpoint}[/] (as whoever logged in)")
        if codec_endpoint is not None and dev_issuer is not None:
            link = login_link(
                settings.effective_api_url, dev_issuer, DEV_USER, settings.oidc_audience
            )
            # One line, never wrapped: a terminal makes it a link to click.
            console.print(
                f"  codec login    {link}\n"
                f"                 (one-time: the UI then decodes as {DEV_USER}; "
                f"another: kaohe token codec-login {DEV_USER})",
                soft_wrap=True,
                highlight=False,
            )
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
                await stop_in_order(ui_proxy, temporal, postgres)
            finally:
                if sigterm_handled:
                    loop.remove_signal_handler(signal.SIGTERM)
                console.print("kaohe dev stack stopped")


async def _await(awaitable: Awaitable[None]) -> None:
    """create_task() needs a coroutine; with_worker may return any awaitable."""
    await awaitable
