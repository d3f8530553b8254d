"""`python -m bench idle`: many unit workflows waiting, against as many trivial ones.

On a private stack, each side with its worker in a separate process whose resident memory
is sampled every 0.2 s:

(a) floor: `--units` `BenchEcho` workflows (they wait for a signal) on a floor worker
    (`python -m bench.floor_worker`, the same sandbox and workflow cache size as kaohe's);
(b) kaohe: a campaign of `--units` units (its roster stored in PostgreSQL) on `kaohe worker`;
    every unit waits for its notice to be acknowledged, and its notice deadline
    (`--stall-after` seconds) passes, so each ends up stalled (KaoheStalled = true).

Then the stalled units are listed from the visibility store, as `kaohe stalled` lists them,
and so are the floor's running workflows. Last lines: kaohe worker peak RSS / floor worker
peak RSS, kaohe worker peak RSS / 1 GiB (the goal: below 1), and the time to list the
stalled units / the time to list as many floor workflows.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from bench import measure, report
from bench.chaos import roster_of
from bench.floor import EchoWorkflow
from bench.stack import KAOHE, BenchStack, private_stack
from kaohe.starter import start_campaign
from schemas.common import Stage
from schemas.policy import DeadlinePolicy, DemoClock, Policy
from workflows.campaign import AssessmentCampaign, campaign_workflow_id

GIB = 1024**3


class RssPeak:
    """Samples a process's resident memory in the background; `peak` is the highest seen."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self._proc = psutil.Process(pid)
        self._every = every
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            await asyncio.sleep(self._every)

    def __enter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {seconds:.0f} s")
        await asyncio.sleep(1.0)


async def _timed_list(stack: BenchStack, query: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = len([wf async for wf in stack.client.list_workflows(query, page_size=1000)])
    return n, time.perf_counter() - t0


async def floor_side(stack: BenchStack, n: int) -> dict[str, float]:
    queue = stack.task_queue("idle-floor")
    env = stack.worker_env(queue)
    cmd = [sys.executable, "-m", "bench.floor_worker", stack.temporal.address, queue]
    proc = _spawn(cmd, env, stack.root / "floor-worker.log")
    prefix = f"idle-echo-{stack.run_id}"
    try:
        with RssPeak(proc.pid) as rss:
            t0 = time.perf_counter()
            await measure.bounded(
                100,
                [
                    lambda i=i: stack.client.start_workflow(
                        EchoWorkflow.run, id=f"{prefix}-{i}", task_queue=queue
                    )
                    for i in range(n)
                ],
            )

            async def last_ran() -> bool:  # tasks go roughly in order: the last ones last
                tail = [f"{prefix}-{i}" for i in range(max(0, n - 20), n)]
                for wf in tail:
                    history = await stack.client.get_workflow_handle(wf).fetch_history()
                    if len(history.events) < 4:  # started + its first task completed
                        return False
                return True

            await _until(last_ran, 600, "floor workflows running")
            started = time.perf_counter() - t0
        query = (
            f"WorkflowType = 'BenchEcho' AND ExecutionStatus = 'Running' AND TaskQueue = '{queue}'"
        )
        listed, list_time = await _timed_list(stack, query)
    finally:
        _stop(proc)
    if listed != n:
        raise RuntimeError(f"listed {listed} floor workflows, started {n}")
    return {"peak": rss.peak, "start": started, "list": list_time}


async def kaohe_side(stack: BenchStack, n: int, stall_after: float) -> dict[str, float]:
    queue = stack.task_queue("idle-kaohe")
    proc = _spawn([KAOHE, "worker"], stack.worker_env(queue), stack.root / "w.log")
    roster = roster_of(n, "idle", "等待基准")
    policy = Policy(
        deadlines=DeadlinePolicy(
            working_days={Stage.NOTICE: 1},
            reminder_working_days=0,
            escalate_after_working_days=60,
        ),
        demo_clock=DemoClock(working_day_seconds=stall_after),
    )
    stalled = (
        f"KaoheStalled = true AND WorkflowType = 'UnitAssessment' "
        f"AND KaoheCampaign = '{roster.campaign_id}'"
    )
    try:
        with RssPeak(proc.pid) as rss:
            t0 = time.perf_counter()
            await start_campaign(
                stack.client, roster, queue, policy, database_url=stack.database_url
            )
            handle = stack.client.get_workflow_handle_for(
                AssessmentCampaign.run, campaign_workflow_id(roster.campaign_id)
            )

            async def all_started() -> bool:
                try:
                    progress = await handle.query(AssessmentCampaign.progress)
                except Exception:  # between two runs (continue-as-new)
                    return False
                return progress.units_started == n

            await _until(all_started, 3600, "units started")
            started = time.perf_counter() - t0

            async def all_stalled() -> bool:
                return (await stack.client.count_workflows(stalled)).count == n

            await _until(all_stalled, 3600, "units stalled")
            waited = time.perf_counter() - t0
        listed, list_time = await _timed_list(stack, stalled)
    finally:
        _stop(proc)
    if listed != n:
        raise RuntimeError(f"listed {listed} stalled units, started {n}")
    return {"peak": rss.peak, "start": started, "stalled": waited, "list": list_time}


async def main(*, units: int, stall_after: float, keep: bool) -> int:
    async with private_stack(keep) as stack:
        report.console.print(f"idle: {units} floor workflows, then a campaign of {units} units")
        floor = await floor_side(stack, units)
        kaohe = await kaohe_side(stack, units, stall_after)
        rows = [
            ("workflows waiting (each side)", str(units)),
            ("floor worker peak RSS", f"{floor['peak'] / 2**20:.0f} MiB"),
            ("kaohe worker peak RSS", f"{kaohe['peak'] / 2**20:.0f} MiB"),
            ("floor: all started and run", f"{floor['start']:.1f} s"),
            ("kaohe: all units started", f"{kaohe['start']:.1f} s"),
            ("kaohe: all units stalled", f"{kaohe['stalled']:.1f} s"),
            ("list the floor's running workflows", f"{floor['list']:.2f} s"),
            ("list the stalled units", f"{kaohe['list']:.2f} s"),
        ]
        report.console.print(report.figures_table("idle: waiting workflows", rows))
        report.console.print(report.log_summary(stack))
    report.print_ratio_line(
        "kaohe worker peak RSS / floor worker peak RSS", measure.ratio(kaohe["peak"], floor["peak"])
    )
    report.print_ratio_line("kaohe worker peak RSS / 1 GiB", kaohe["peak"] / GIB)
    report.print_ratio_line(
        "list stalled units / list floor workflows", measure.ratio(kaohe["list"], floor["list"])
    )
    return 0
