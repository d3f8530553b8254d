"""`python -m bench chaos`: a campaign driven to the end through faults, against the same
campaign undisturbed in the same run.

On a private stack, with the worker as a separate `kaohe worker` process (so it can be
killed with SIGKILL) and simulated integrators that retry calls failing in transit:

(a) undisturbed: `--units` units through every stage;
(b) faults: another campaign of as many units while the worker is killed `--kills` times
    (spread over (a)'s duration), PostgreSQL crashes and restarts, and the Temporal dev
    server crashes and restarts on its database.

Both must end the same: every unit completed, the ballots stored equal the ballots sent, no
notification delivery took a second attempt, the final grades those of an undisturbed run,
and every unit's history replays with the code (no nondeterminism from the restarts).
Last line: `ratio faults time / undisturbed time = X.XX`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from bench.stack import BENCH_KEY, KAOHE
from kaohe.client import data_converter
from kaohe.ingest.ballot_io import TokensError, token_source
from kaohe.sim.simulate import (
    TokenSource,
    drive_unit,
    persist,
    proposal_for,
    simulated_unit,
    talk_store,
    wait_campaign_started,
)
from schemas.common import Stage
from schemas.policy import DemoClock, Policy
from schemas.roster import Roster, UnitSpec
from worker import WORKFLOWS, sandbox_runner
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id

POLICY = Policy(demo_clock=DemoClock(publicity_seconds=1))


class WorkerProcesses:
    """One `kaohe worker` process at a time; kill() is SIGKILL, then a new one starts."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._env, self._log = env, log
        self.kills = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as out:
            self._proc = subprocess.Popen([KAOHE, "worker"], env=self._env, stdout=out, stderr=out)

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
            self._proc = None


# Units of 2 cadres and rater groups of 2, 2 and 3 sheets: 7 sheets of 3 ballots each.
SHEETS_PER_UNIT = 7
BALLOTS_PER_UNIT = SHEETS_PER_UNIT * 3


def roster_of(units: int, tag: str, title: str = "故障注入") -> Roster:
    """Units of 2 cadres with rater groups of 2, 2 and 3 sheets (the other benches' too)."""
    return Roster(
        campaign_id=f"{tag}-{uuid.uuid4().hex[:6]}",
        year=2026,
        title=title,
        units=[simulated_unit(f"u{i:05d}", 2, (2, 2, 3)) for i in range(units)],
    )


async def issue_all(tokens: TokenSource, ids: list[str]) -> None:
    """Every unit's ballot tokens, up front: issuing talks to PostgreSQL directly, and a
    simulated ballot system would not be asked for them while the database is down."""
    for wf in ids:
        for _ in range(600):
            try:
                await tokens(wf)
                break
            except TokensError:  # not registered yet
                await asyncio.sleep(0.1)


async def drive_campaign(
    client: Client,
    pool: asyncpg.Pool,
    roster: Roster,
    task_queue: str,
    concurrency: int,
    faults: Callable[[], Awaitable[None]] | None = None,
    database_url: str | None = None,
) -> float:
    """Starts the campaign (its roster stored in `database_url` if too large to inline),
    drives every unit to the end (with `faults` running meanwhile) and waits for the
    campaign; returns the seconds it took."""
    from kaohe.starter import start_campaign

    t0 = time.perf_counter()
    await start_campaign(client, roster, task_queue, POLICY, database_url=database_url)
    ids = [unit_workflow_id(roster.campaign_id, u.unit_id) for u in roster.units]
    await wait_campaign_started(client, roster.campaign_id)
    tokens = token_source(pool)
    talks = talk_store(pool, BENCH_KEY)
    await issue_all(tokens, ids)
    gate = asyncio.Semaphore(concurrency)

    async def one(wf: str, unit: UnitSpec) -> None:
        async with gate:
            status = await drive_unit(client, wf, unit, tokens=tokens, talks=talks)
        if status.stage != Stage.COMPLETED:  # else the campaign below would wait forever
            raise AssertionError(f"{wf} was driven to the end but is in {status.stage}")

    work = [one(wf, u) for wf, u in zip(ids, roster.units, strict=True)]
    await asyncio.gather(*work, *([faults()] if faults else []))
    handle = client.get_workflow_handle_for(
        AssessmentCampaign.run, campaign_workflow_id(roster.campaign_id)
    )
    progress = await persist(handle.result)
    if progress.by_stage != {Stage.COMPLETED: len(roster.units)}:
        raise AssertionError(f"not every unit completed: {progress.by_stage}")
    return time.perf_counter() - t0


async def problems(pool: asyncpg.Pool, roster: Roster) -> list[str]:
    """What differs from an undisturbed run: ballots stored, notifications, final grades."""
    campaign = roster.campaign_id
    async with pool.acquire() as conn:
        ballots = await conn.fetchval(
            "SELECT coalesce(sum(b.ballots), 0) FROM ballot_batches b JOIN units u "
            "USING (workflow_id) WHERE u.campaign_id = $1 AND b.registered_at IS NOT NULL",
            campaign,
        )
        # The marks themselves, per unit and target (not the batches' own counts): a batch
        # lost in one unit and stored twice in another would still add up above.
        marks = {
            (r["unit_id"], r["target_id"]): (r["sheets"], r["marks"])
            for r in await conn.fetch(
                "SELECT u.unit_id, t.target_id, count(DISTINCT (t.batch_id, t.sheet_no)) "
                "AS sheets, count(*) AS marks FROM ballot_marks t "
                "JOIN ballot_batches b USING (workflow_id, batch_id) JOIN units u "
                "USING (workflow_id) WHERE u.campaign_id = $1 AND b.registered_at IS NOT NULL "
                "AND t.item = 'overall' AND t.kind IN ('team', 'cadre') GROUP BY 1, 2",
                campaign,
            )
        }
        resent = await conn.fetchval(
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
    expected: dict[tuple[str, str], str] = {}
    for u in roster.units:
        proposal = proposal_for(u, POLICY)
        expected[(u.unit_id, "")] = proposal.team_grade.value
        expected.update({(u.unit_id, c): g.value for c, g in proposal.cadre_grades.items()})
    out = []
    sent = BALLOTS_PER_UNIT * len(roster.units)
    if ballots != sent:
        out.append(f"ballots stored {ballots}, sent {sent}")
    # One overall mark on each of a unit's 7 sheets for the team and for each cadre.
    expected_marks = {
        (u.unit_id, target): (SHEETS_PER_UNIT, SHEETS_PER_UNIT)
        for u in roster.units
        for target in ("", *(c.cadre_id for c in u.cadres))
    }
    if marks != expected_marks:
        wrong = differing(expected_marks, marks)
        out.append(f"overall marks stored differ from those sent for {wrong}")
    if resent:
        out.append(f"{resent} notification deliveries took more than one attempt")
    if grades != expected:
        out.append(f"grades differ from an undisturbed run for {differing(expected, grades)}")
    return out


def differing(expected: dict[Any, Any], found: dict[Any, Any]) -> list[Any]:
    """The first five keys whose values differ (or that only one side has)."""
    return sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))[:5]


async def replay_failures(
    client: Client, converter: DataConverter, roster: Roster, save_to: Path | None = None
) -> list[str]:
    """Replays every unit's history with today's code: each nondeterminism found (the
    history is saved under `save_to` to look at)."""
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=converter, workflow_runner=sandbox_runner()
    )
    out = []
    for u in roster.units:
        wf = unit_workflow_id(roster.campaign_id, u.unit_id)
        history = await client.get_workflow_handle(wf).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            out.append(f"{wf} does not replay: {result.replay_failure}")
            if save_to is not None:
                (save_to / f"{wf}.json").write_text(history.to_json())
    return out


def faults(
    workers: WorkerProcesses, postgres: object, temporal: object, kills: int, span: float
) -> Callable[[], Awaitable[None]]:
    """Kills the worker `kills` times over `span` seconds; PostgreSQL crashes a third of
    the way in and the Temporal server two thirds in, each back a couple of seconds later."""
    interval = span / (kills + 1)

    async def kill_worker() -> None:
        for _ in range(kills):
            await asyncio.sleep(interval)
            await asyncio.to_thread(workers.kill)

    async def crash_servers() -> None:
        await asyncio.sleep(span / 3)
        await postgres.kill()  # type: ignore[attr-defined]
        await asyncio.sleep(2.0)
        await postgres.start()  # type: ignore[attr-defined]
        await asyncio.sleep(span / 3)
        await temporal.kill()  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        await temporal.start()  # type: ignore[attr-defined]

    async def both() -> None:
        await asyncio.gather(kill_worker(), crash_servers())

    return both


async def main(*, units: int, kills: int, concurrency: int, keep: bool) -> int:
    from bench import measure, report
    from bench.stack import private_stack

    async with private_stack(keep) as stack:
        env = stack.worker_env(stack.task_queue("chaos"))
        workers = WorkerProcesses(env, stack.root / "workers.log")
        workers.start()
        try:
            calm = roster_of(units, "calm")
            calm_seconds = await drive_campaign(
                stack.client, stack.pool, calm, env["KAOHE_TASK_QUEUE"], concurrency
            )
            stormy = roster_of(units, "faults")
            chaos = faults(workers, stack.postgres, stack.temporal, kills, calm_seconds)
            storm_seconds = await drive_campaign(
                stack.client, stack.pool, stormy, env["KAOHE_TASK_QUEUE"], concurrency, chaos
            )
        finally:
            workers.stop()
        found = await problems(stack.pool, calm) + await problems(stack.pool, stormy)
        converter = data_converter(stack.settings)
        for roster in (calm, stormy):
            found += await replay_failures(stack.client, converter, roster, stack.root)
        rows = [
            ("units per campaign", str(units)),
            ("(a) undisturbed", f"{calm_seconds:.1f} s"),
            ("(b) with faults", f"{storm_seconds:.1f} s"),
            ("worker SIGKILLs", str(workers.kills)),
            ("PostgreSQL / Temporal crashes", "1 / 1"),
            ("differences from an undisturbed run", "; ".join(found) or "none"),
        ]
        report.console.print(report.figures_table("chaos: a campaign through faults", rows))
    report.print_ratio_line(
        "faults time / undisturbed time", measure.ratio(storm_seconds, calm_seconds)
    )
    return 1 if found else 0
