"""Fault injection on a stack of the test's own (bench/chaos.py has the 200-unit version):
a campaign of 50 units driven to the end while the worker is killed (SIGKILL) six times,
PostgreSQL crashes and comes back, and the Temporal dev server crashes and comes back on its
database. Nothing is lost or done twice: every unit completes, the ballots stored are the
ballots sent, no notification is sent twice, and the grades are an undisturbed run's."""

from __future__ import annotations

from pathlib import Path

from activities.db import create_pool
from bench.chaos import (
    WorkerProcesses,
    drive_campaign,
    faults,
    problems,
    replay_failures,
    roster_of,
)
from kaohe.client import connect, data_converter
from tests.conftest import running_stack


async def test_a_campaign_survives_kills_and_crashes(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "stack") as stack:
        client = await connect(stack.settings)
        pool = await create_pool(stack.database_url, 1, 5)
        workers = WorkerProcesses(stack.env(), tmp_path / "workers.log")
        workers.start()
        roster = roster_of(50, "chaos")
        try:
            chaos = faults(workers, stack.postgres, stack.temporal, kills=6, span=12.0)
            await drive_campaign(client, pool, roster, stack.settings.task_queue, 10, faults=chaos)
        finally:
            workers.stop()
        try:
            assert workers.kills == 6
            assert await problems(pool, roster) == []
            converter = data_converter(stack.settings)
            assert await replay_failures(client, converter, roster, tmp_path) == []
        finally:
            await pool.close()
