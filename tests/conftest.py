"""Session fixtures: one real PostgreSQL and one real Temporal dev server per test process
(per xdist worker), a kaohe worker in-process, and helpers to start units."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from temporalio.client import Client

from activities.db import create_pool, migrate
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.client import connect
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.stack import start_private_servers
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.ingest.ballot_io import token_source
from kaohe.keys import make_dev_keys
from kaohe.listening import free_port
from kaohe.settings import Settings
from kaohe.sim.simulate import TalkStore, TokenSource, talk_store
from tests.helpers import TEST_ASSERTION_KEYS, TEST_KEY, TEST_TALK_KEYS
from worker import build_worker

# Nor a metrics endpoint on the default port: workers in tests serve none unless a test asks.
os.environ.setdefault("KAOHE_METRICS_PORT", "0")
# Nor kaohe's API on its default port.
os.environ.setdefault("KAOHE_API_PORT", str(free_port()))


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    temporal: TemporalDevServer
    database_url: str  # as the app's role (a member of kaohe_app), as the worker connects
    settings: Settings
    data_dir: Path
    owner_url: str  # as the superuser who ran the migrations: the database owner of the tests

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a worker or the CLI) pointed at this stack."""
        return {
            **os.environ,
            "KAOHE_TEMPORAL_ADDRESS": self.temporal.address,
            "KAOHE_DATABASE_URL": self.database_url,
            "KAOHE_TASK_QUEUE": self.settings.task_queue,
            "KAOHE_DATA_DIR": str(self.data_dir),
            "KAOHE_LOG_FORMAT": "json",
            "KAOHE_TALK_KEYS": TEST_TALK_KEYS,
            "KAOHE_ASSERTION_KEYS": TEST_ASSERTION_KEYS,
        }


@asynccontextmanager
async def running_stack(root: Path) -> AsyncIterator[Stack]:
    """A real PostgreSQL and Temporal dev server under `root`, migrated, on free ports."""
    postgres, owner_url, temporal = await start_private_servers(root)
    url = postgres.app_url
    _, warnings = await migrate(owner_url, url)
    assert warnings == [], warnings
    settings = Settings(
        temporal_address=temporal.address,
        database_url=url,
        task_queue=f"kaohe-test-{uuid.uuid4().hex[:8]}",
        data_dir=root,
        assertion_keys=TEST_ASSERTION_KEYS,
    )
    make_dev_keys(settings)  # the payload key file, as `kaohe dev` makes it
    try:
        yield Stack(postgres, temporal, url, settings, root, owner_url)
    finally:
        await temporal.stop()
        await postgres.stop()


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    # Not under pytest's basetemp: another pytest session on the machine resets
    # pytest-of-<user> to 0700, and PostgreSQL (run as its own user under root) must
    # traverse the path.
    root = Path(tempfile.mkdtemp(prefix="kaohe-test-stack-"))
    try:
        async with running_stack(root) as s:
            yield s
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def client(stack: Stack) -> Client:
    return await connect(stack.settings)


@pytest.fixture(scope="session")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(stack.database_url, 1, 10)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def worker(stack: Stack, client: Client, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A worker in this process on the session's task queue; yields the task queue."""
    w = build_worker(
        client, StorageActivities(pool), NotifyActivities(pool), stack.settings.task_queue
    )
    async with w:
        yield stack.settings.task_queue


@pytest.fixture(scope="session")
def tokens(pool: asyncpg.Pool) -> TokenSource:
    """Issues a unit's one-time ballot tokens as `kaohe tokens issue` does (once per unit)."""
    return token_source(pool)


@pytest.fixture(scope="session")
def talks(pool: asyncpg.Pool) -> TalkStore:
    """Stores a talk's content as kaohe's API does (encrypted, in talk_store); the unit then
    gets only its reference (kaohe.sim.simulate.talk_by_reference)."""
    return talk_store(pool, TEST_KEY)


@dataclass
class ApiStack:
    """kaohe's API in this process on the session's stack, with an issuer of its own."""

    url: str
    issuer: DevIssuer

    def token(self, subject: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint(subject, **kwargs)}"}


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """An ASGI app served by uvicorn on a free port of this host, its lifespan run: its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def api(client: Client, pool: asyncpg.Pool) -> AsyncIterator[ApiStack]:
    issuer = DevIssuer.generate()
    app = create_app(Api(client, pool, issuer.verifier(), TEST_KEY), jwks=issuer.jwks())
    async with serving(app) as url:
        yield ApiStack(url, issuer)
