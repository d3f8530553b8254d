"""`kaohe worker --processes N`: N workers share the task queue, a killed one comes back, and
SIGTERM stops them all; the worker takes its tuning from the settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
from temporalio.client import Client

from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from kaohe.settings import Settings
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_cli import KAOHE
from worker import build_worker


def spawn_processes(stack: Stack, task_queue: str, n: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**stack.env(), "KAOHE_TASK_QUEUE": task_queue}
    with log.open("ab") as out:
        return subprocess.Popen(
            [KAOHE, "worker", "--processes", str(n)], env=env, stdout=out, stderr=out
        )


def workers_of(parent: subprocess.Popen[bytes]) -> list[int]:
    return sorted(p.pid for p in psutil.Process(parent.pid).children() if p.is_running())


async def until(predicate, seconds: float = 60.0):  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 10)):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_processes_share_the_queue_and_a_dead_one_is_restarted(
    stack: Stack, client: Client, tmp_path: Path, tokens: TokenSource, talks: TalkStore
) -> None:
    task_queue = f"procs-{uuid.uuid4().hex[:8]}"
    parent = spawn_processes(stack, task_queue, 2, tmp_path / "workers.log")
    try:
        first = await until(lambda: (ws := workers_of(parent)) and len(ws) == 2 and ws)
        unit = sample_unit()
        handle = await start_unit(client, task_queue, unit)
        status = await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
        assert status.stage == Stage.TALKS

        os.kill(first[0], signal.SIGKILL)
        again = await until(
            lambda: (ws := workers_of(parent)) and len(ws) == 2 and first[0] not in ws and ws
        )
        assert first[1] in again  # the other one kept running
        status = await asyncio.wait_for(
            drive_unit(client, handle.id, unit, tokens=tokens, talks=talks), 120
        )
        assert status.stage == Stage.COMPLETED

        parent.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(parent.wait, 40) == 0
        assert not [pid for pid in again if _alive(pid)]
    finally:
        if parent.poll() is None:
            parent.kill()
            for pid in workers_of(parent):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_the_worker_is_tuned_by_the_settings(stack: Stack, client: Client) -> None:
    settings = Settings(
        worker_max_cached_workflows=123,
        worker_max_concurrent_workflow_tasks=7,
        worker_max_concurrent_activities=9,
    )
    pool = None  # the worker is built, not run: no connection is taken
    worker = build_worker(
        client,
        StorageActivities(pool),  # type: ignore[arg-type]
        NotifyActivities(pool),  # type: ignore[arg-type]
        "tuning",
        settings,
    )
    config = worker.config()
    assert config["max_cached_workflows"] == 123
    assert config["max_concurrent_workflow_tasks"] == 7
    assert config["max_concurrent_activities"] == 9
