"""Session fixtures: one real PostgreSQL and one real Temporal dev server per test process
(per xdist worker), a kaohe worker in-process, and helpers to start units."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from activities.db import apply_migrations, create_pool
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from kaohe.client import connect
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.devstack.stack import start_private_servers
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.ingest.ballot_io import token_source
from kaohe.listening import free_port
from kaohe.settings import Settings
from kaohe.sim.simulate import TokenSource
from tests.helpers import TEST_KEY, TEST_KEY_B64
from worker import build_worker

# run_dev() in tests starts a codec server: never on the port of a `make run` on this machine.
os.environ.setdefault("KAOHE_CODEC_PORT", str(free_port()))
# Nor a metrics endpoint on the default port: workers in tests serve none unless a test asks.
os.environ.setdefault("KAOHE_METRICS_PORT", "0")
# Nor the dev issuer's JWKS endpoint: a test that wants it gives a port.
os.environ.setdefault("KAOHE_ISSUER_PORT", "0")


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    temporal: TemporalDevServer
    database_url: str
    settings: Settings
    data_dir: Path

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a worker or the CLI) pointed at this stack."""
        return {
            **os.environ,
            "KAOHE_TEMPORAL_ADDRESS": self.temporal.address,
            "KAOHE_DATABASE_URL": self.database_url,
            "KAOHE_TASK_QUEUE": self.settings.task_queue,
            "KAOHE_DATA_DIR": str(self.data_dir),
            "KAOHE_LOG_FORMAT": "json",
            "KAOHE_TALK_KEY": TEST_KEY_B64,
        }


@asynccontextmanager
async def running_stack(root: Path) -> AsyncIterator[Stack]:
    """A real PostgreSQL and Temporal dev server under `root`, migrated, on free ports."""
    postgres, url, temporal = await start_private_servers(root)
    await apply_migrations(url)
    settings = Settings(
        temporal_address=temporal.address,
        database_url=url,
        task_queue=f"kaohe-test-{uuid.uuid4().hex[:8]}",
        data_dir=root,
    )
    try:
        yield Stack(postgres, temporal, url, settings, root)
    finally:
        await temporal.stop()
        await postgres.stop()


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


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
        client, StorageActivities(pool, TEST_KEY), NotifyActivities(pool), stack.settings.task_queue
    )
    async with w:
        yield stack.settings.task_queue


@pytest.fixture(scope="session")
def tokens(pool: asyncpg.Pool) -> TokenSource:
    """Issues a unit's one-time ballot tokens as `kaohe tokens issue` does (once per unit)."""
    return token_source(pool)
