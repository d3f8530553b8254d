"""A worker killed with SIGKILL mid-flow: another worker picks the unit up and finishes it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from temporalio.client import Client

from kaohe.simulate import TokenSource, drive_unit
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit

KAOHE = str(Path(sys.executable).parent / "kaohe")


def spawn_worker(stack: Stack, task_queue: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**stack.env(), "KAOHE_TASK_QUEUE": task_queue}
    with log.open("ab") as out:
        return subprocess.Popen([KAOHE, "worker"], env=env, stdout=out, stderr=out)


async def test_killed_worker_is_replaced_and_the_unit_finishes(
    stack: Stack, client: Client, pool: asyncpg.Pool, tmp_path: Path, tokens: TokenSource
) -> None:
    task_queue = f"kill-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    first = spawn_worker(stack, task_queue, log)
    try:
        unit = sample_unit(cadres=3)
        handle = await start_unit(client, task_queue, unit)
        status = await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
        assert status.stage == Stage.TALKS
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()

    # With no worker, the rest of the flow waits; a new worker takes it from history.
    rest = asyncio.create_task(drive_unit(client, handle.id, unit, tokens=tokens))
    await asyncio.sleep(1)
    assert not rest.done()
    second = spawn_worker(stack, task_queue, log)
    try:
        status = await asyncio.wait_for(rest, timeout=120)
        assert status.stage == Stage.COMPLETED
        result = await handle.result()
        assert result.stage == Stage.COMPLETED
    finally:
        second.terminate()
        second.wait(timeout=30)

    async with pool.acquire() as conn:
        transitions = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE workflow_id=$1 AND kind='transition'", handle.id
        )
        acks = await conn.fetchval(
            "SELECT count(*) FROM acknowledgements WHERE workflow_id=$1", handle.id
        )
        talks = await conn.fetchval("SELECT count(*) FROM talks WHERE workflow_id=$1", handle.id)
    assert (transitions, acks, talks) == (7, 1, 3)
    # JSON logs carry the workflow id, unit and stage; never talk content.
    text = log.read_text()
    assert f'"workflow_id": "{handle.id}"' in text and '"unit":' in text and '"stage":' in text
    assert "谈话内容" not in text
