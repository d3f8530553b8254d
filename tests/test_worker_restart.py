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

from activities.failpoints import ENV as FAILPOINT_ENV
from activities.failpoints import KILLED
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit

KAOHE = str(Path(sys.executable).parent / "kaohe")


def spawn_worker(
    stack: Stack,
    task_queue: str,
    log: Path,
    failpoint: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {**stack.env(), "KAOHE_TASK_QUEUE": task_queue, **(env or {})}
    if failpoint is not None:
        env[FAILPOINT_ENV] = failpoint
    with log.open("ab") as out:
        return subprocess.Popen([KAOHE, "worker"], env=env, stdout=out, stderr=out)


async def test_killed_worker_is_replaced_and_the_unit_finishes(
    stack: Stack,
    client: Client,
    pool: asyncpg.Pool,
    tmp_path: Path,
    tokens: TokenSource,
    talks: TalkStore,
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
    rest = asyncio.create_task(drive_unit(client, handle.id, unit, tokens=tokens, talks=talks))
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
        recorded = await conn.fetchval("SELECT count(*) FROM talks WHERE workflow_id=$1", handle.id)
    assert (transitions, acks, recorded) == (7, 1, 3)
    # JSON logs carry the workflow id, unit and stage; never talk content.
    text = log.read_text()
    assert f'"workflow_id": "{handle.id}"' in text and '"unit":' in text and '"stage":' in text
    assert "谈话内容" not in text


async def test_follow_ups_and_feedback_once_though_the_worker_dies_after_each_commit(
    stack: Stack,
    client: Client,
    pool: asyncpg.Pool,
    tmp_path: Path,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    """The worker dies right after the follow-ups are committed and before the workflow has
    recorded it; its successor dies right after the feedback notification is committed. The
    third finishes: every follow-up, audit row and notification exists exactly once."""
    task_queue = f"crash-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    unit = sample_unit(cadres=5)  # one 优秀 (incentive follow-ups) and four 称职
    handle = await start_unit(client, task_queue, unit)
    drive = asyncio.create_task(
        drive_unit(client, handle.id, unit, stop_at=Stage.RESULT_USE, tokens=tokens, talks=talks)
    )
    for point in ("create_follow_ups:committed", "notify:feedback:committed"):
        doomed = spawn_worker(stack, task_queue, log, failpoint=point)
        exit_code = await asyncio.to_thread(doomed.wait, 120)
        assert exit_code == KILLED, f"the worker was to die at {point}"
        if point.startswith("create_follow_ups"):
            # Still grading; the feedback is sent in result use, which the drive may see
            # before the second worker dies.
            assert not drive.done()
    last = spawn_worker(stack, task_queue, log)
    try:
        status = await asyncio.wait_for(drive, timeout=120)
    finally:
        last.terminate()
        last.wait(timeout=30)
    assert status.stage == Stage.RESULT_USE
    expected = sorted(f.follow_up_id for f in status.follow_ups.items)
    assert expected and any(f.kind == "incentive" for f in status.follow_ups.items)

    async with pool.acquire() as conn:
        stored = [
            r["follow_up_id"]
            for r in await conn.fetch(
                "SELECT follow_up_id FROM follow_ups WHERE workflow_id = $1 ORDER BY 1", handle.id
            )
        ]
        audits = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE workflow_id = $1 AND kind = 'follow_ups_created'",
            handle.id,
        )
        feedback = await conn.fetch(
            "SELECT status, attempts FROM notifications WHERE idempotency_key = $1",
            f"{handle.id}:feedback",
        )
    assert stored == expected
    assert audits == 1
    assert [(r["status"], r["attempts"]) for r in feedback] == [("sent", 1)]
