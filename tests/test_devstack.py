"""The embedded dev stack against the real PostgreSQL and Temporal dev server binaries."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg
import pytest
from temporalio.api.enums.v1 import IndexedValueType, WorkflowExecutionStatus
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from activities.db import apply_migrations, migration_files
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.stack import run_dev, start_on_free_ports
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.listening import free_port
from kaohe.settings import Settings
from schemas.search_attributes import CLI_TYPES

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "postgres", free_port())
    await pg.start()
    try:
        yield pg
    finally:
        await pg.stop()


@pytest.fixture
async def temporal(tmp_path: Path) -> AsyncIterator[TemporalDevServer]:
    server = TemporalDevServer(
        tmp_path / "temporal",
        port=free_port(),
        ui_port=free_port(),
        http_port=free_port(),
        ui=False,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _fetch_notes(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")]
    finally:
        await conn.close()


async def _add_note(url: str, body: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text)")
        await conn.execute("INSERT INTO notes (body) VALUES ($1)", body)
    finally:
        await conn.close()


async def test_postgres_data_survives_stop_and_kill(postgres: EmbeddedPostgres) -> None:
    assert postgres.url.endswith("/kaohe")
    await _add_note(postgres.url, "before stop")

    await postgres.stop()
    assert not postgres.running
    assert await postgres.start() == postgres.url
    assert await _fetch_notes(postgres.url) == ["before stop"]

    # A committed row must survive a crash of the whole process tree (WAL replay).
    await _add_note(postgres.url, "before kill")
    await postgres.kill()
    await postgres.start()
    assert await _fetch_notes(postgres.url) == ["before stop", "before kill"]


async def test_postgres_stops_a_leftover_server(postgres: EmbeddedPostgres) -> None:
    # A second handle on the same data dir stands for a new run after the old one died.
    old_pid = postgres.pid
    again = EmbeddedPostgres(postgres.data_dir, postgres.port)
    try:
        await again.start()
        assert again.pid != old_pid
        assert await postgres.wait() is not None  # the old postmaster has exited
        await _add_note(again.url, "still works")
    finally:
        await again.stop()


async def test_migrations_apply_once(postgres: EmbeddedPostgres) -> None:
    first = await apply_migrations(postgres.url)
    assert first == [name for name, _ in migration_files()]
    assert await apply_migrations(postgres.url) == []


def _kaohe_attributes(custom: Mapping[str, IndexedValueType.ValueType]) -> dict[str, str]:
    """{name: CLI type name}, e.g. INDEXED_VALUE_TYPE_KEYWORD_LIST -> KeywordList."""
    return {
        name: IndexedValueType.Name(value)
        .removeprefix("INDEXED_VALUE_TYPE_")
        .title()
        .replace("_", "")
        for name, value in custom.items()
        if name.startswith("Kaohe")
    }


async def test_temporal_search_attributes_and_persistence(temporal: TemporalDevServer) -> None:
    client = await Client.connect(temporal.address)
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    assert _kaohe_attributes(listed.custom_attributes) == CLI_TYPES

    # No worker polls this task queue, so the workflow just waits, durably.
    workflow_id = f"probe-{uuid.uuid4()}"
    await client.start_workflow("KaoheProbe", id=workflow_id, task_queue=f"nobody-{uuid.uuid4()}")

    for outage in (temporal.stop, temporal.kill):
        await outage()
        assert not temporal.running
        await temporal.start()
        client = await Client.connect(temporal.address)
        described = await client.get_workflow_handle(workflow_id).describe()
        assert described.workflow_type == "KaoheProbe"
        assert described.raw_description.workflow_execution_info.status == (
            WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
        )

    # A new handle on the same files stands for a new run after the old one died.
    old_pid = temporal.pid
    again = TemporalDevServer(
        temporal.data_dir, port=temporal.port, http_port=temporal.http_port, ui=False
    )
    try:
        await again.start()
        assert await temporal.wait() is not None  # the old server has exited
        assert again.pid != old_pid
        client = await Client.connect(again.address)
        await client.get_workflow_handle(workflow_id).describe()
    finally:
        await again.stop()


async def test_temporal_registers_new_attributes_on_an_existing_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # start-dev only applies --search-attribute when it creates the db file.
    server = TemporalDevServer(tmp_path, port=free_port(), http_port=free_port(), ui=False)
    monkeypatch.setattr("kaohe.devstack.temporal.CLI_TYPES", {"KaoheYear": "Int"})
    await server.start()
    await server.kill()
    monkeypatch.undo()
    await server.start()
    try:
        client = await Client.connect(server.address)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert _kaohe_attributes(listed.custom_attributes) == CLI_TYPES
    finally:
        await server.stop()


async def test_run_dev_stops_everything_on_cancel(tmp_path: Path) -> None:
    grpc_port, pg_port = free_port(), free_port()
    settings = Settings(
        data_dir=tmp_path,
        database_url=None,
        postgres_port=pg_port,
        temporal_address=f"127.0.0.1:{grpc_port}",
        temporal_ui_port=free_port(),
        temporal_http_port=free_port(),
    )
    worker_ready = asyncio.Event()
    worker_stopped = asyncio.Event()
    seen: dict[str, object] = {}

    async def worker(database_url: str) -> None:
        seen["url"] = database_url
        await Client.connect(settings.temporal_address)
        conn = await asyncpg.connect(database_url)
        try:
            # The worker's role may only append to the audit table (schemas/sql/015).
            seen["member"] = await conn.fetchval(
                "SELECT pg_has_role(current_user, 'kaohe_app', 'member')"
            )
        finally:
            await conn.close()
        worker_ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            worker_stopped.set()

    task = asyncio.create_task(run_dev(settings, with_worker=worker))
    ready = asyncio.create_task(worker_ready.wait())
    try:
        await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # run_dev failed: show why
        assert worker_ready.is_set()
        assert seen["url"] == f"postgresql://kaohe_app_user@127.0.0.1:{pg_port}/kaohe"
        assert seen["member"] is True
        assert (tmp_path / "audit-anchor.keys").exists()  # the worker's anchor key
    finally:
        ready.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert worker_stopped.is_set()
    for port in (grpc_port, pg_port):
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
    assert (tmp_path / "postgres" / "pgdata" / "PG_VERSION").exists()
    assert (tmp_path / "temporal" / "temporal.db").exists()
    assert not (tmp_path / "postgres" / "pgdata" / "postmaster.pid").exists()


async def test_a_port_taken_before_the_server_binds_it_is_picked_again(tmp_path: Path) -> None:
    """free_port() races with other processes (the dev server binds ports of its own at
    random): the private servers of tests and benchmarks start again on other ports."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        made: list[EmbeddedPostgres] = []

        def make() -> EmbeddedPostgres:
            made.append(EmbeddedPostgres(tmp_path / "pg", next(ports)))
            return made[-1]

        server, url = await start_on_free_ports(make)
    try:
        assert len(made) == 2 and server is made[1]
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await server.stop()
