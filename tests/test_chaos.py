"""Fault injection on a stack of the test's own: a campaign of 50 units driven to the end
while the worker is killed (SIGKILL) again and again, PostgreSQL crashes and comes back, and
the Temporal dev server crashes and comes back on its database. Nothing is lost or done
twice: every unit completes, the ballots stored are the ballots sent, no notification is
sent twice, and the grades are those an undisturbed run gives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from activities.db import create_pool
from kaohe.ballot_io import token_source
from kaohe.cli import start_campaign
from kaohe.client import connect
from kaohe.simulate import drive_unit, persist, proposal_for, wait_started
from schemas.common import Stage
from schemas.roster import Roster
from tests.conftest import Stack, running_stack
from tests.helpers import TEST_POLICY, sample_unit
from tests.test_worker_restart import spawn_worker
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id

UNITS = 50
BALLOTS_PER_UNIT = 7 * 3  # 7 sheets (groups of 2, 2 and 3), each the team and 2 cadres


class Workers:
    """One `kaohe worker` process at a time, killed with SIGKILL on demand."""

    def __init__(self, stack: Stack, log: Path) -> None:
        self._stack, self._log = stack, log
        self.kills = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self._proc = spawn_worker(self._stack, self._stack.settings.task_queue, self._log)

    def kill(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self.kills += 1
        self.start()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[object]]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def test_a_campaign_survives_kills_and_restarts(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "stack") as stack:
        client = await connect(stack.settings)
        pool = await create_pool(stack.database_url, 1, 5)
        tokens = token_source(pool)
        campaign = f"chaos-{uuid.uuid4().hex[:6]}"
        roster = Roster(
            campaign_id=campaign,
            year=2026,
            title="故障注入",
            units=[sample_unit(f"u{i:02d}") for i in range(UNITS)],
        )
        workers = Workers(stack, tmp_path / "workers.log")
        try:
            await start_campaign(client, roster, stack.settings.task_queue, TEST_POLICY)
            ids = [unit_workflow_id(campaign, u.unit_id) for u in roster.units]

            def drive(stop_at: Stage | None) -> list[Callable[[], Awaitable[object]]]:
                return [
                    lambda wf=wf, u=u: drive_unit(client, wf, u, stop_at=stop_at, tokens=tokens)
                    for wf, u in zip(ids, roster.units, strict=True)
                ]

            async def kill_every(seconds: float, times: int) -> None:
                for _ in range(times):
                    await asyncio.sleep(seconds)
                    workers.kill()

            # 1. Through the evaluation (tokens come from PostgreSQL directly), with kills.
            await asyncio.gather(*(wait_started(client, wf) for wf in ids))
            await asyncio.gather(bounded(10, drive(Stage.TALKS)), kill_every(2.0, 3))

            # 2. The rest, while the worker is killed, PostgreSQL crashes and comes back, and
            # so does the Temporal server (on its database).
            async def crash_servers() -> None:
                await asyncio.sleep(1.0)
                await stack.postgres.kill()
                await asyncio.sleep(2.0)
                await stack.postgres.start()
                await asyncio.sleep(2.0)
                await stack.temporal.kill()
                await asyncio.sleep(1.0)
                await stack.temporal.start()

            await asyncio.wait_for(
                asyncio.gather(bounded(10, drive(None)), kill_every(3.0, 3), crash_servers()),
                timeout=400,
            )
            handle = client.get_workflow_handle_for(
                AssessmentCampaign.run, campaign_workflow_id(campaign)
            )
            progress = await asyncio.wait_for(persist(handle.result), timeout=120)
        finally:
            workers.stop()
        assert workers.kills == 6
        assert progress.completed and progress.by_stage == {Stage.COMPLETED: UNITS}

        async with pool.acquire() as conn:
            ballots = await conn.fetchval(
                "SELECT sum(b.ballots) FROM ballot_batches b JOIN units u USING (workflow_id) "
                "WHERE u.campaign_id = $1 AND b.registered_at IS NOT NULL",
                campaign,
            )
            twice = await conn.fetchval(
                "SELECT count(*) FROM notification_deliveries d JOIN notifications n "
                "USING (idempotency_key) JOIN units u ON u.workflow_id = n.workflow_id "
                "WHERE u.campaign_id = $1 AND (d.attempts <> 1 OR d.status <> 'sent')",
                campaign,
            )
            grades = {
                (r["unit_id"], r["cadre_id"]): r["grade"]
                for r in await conn.fetch(
                    "SELECT unit_id, cadre_id, grade FROM grades g JOIN units u "
                    "USING (workflow_id, unit_id) WHERE u.campaign_id = $1 AND g.final",
                    campaign,
                )
            }
        await pool.close()
        assert ballots == UNITS * BALLOTS_PER_UNIT
        assert twice == 0
        undisturbed = {}
        for u in roster.units:
            proposal = proposal_for(u, TEST_POLICY)
            undisturbed[(u.unit_id, "")] = proposal.team_grade.value
            for cadre_id, grade in proposal.cadre_grades.items():
                undisturbed[(u.unit_id, cadre_id)] = grade.value
        assert grades == undisturbed
