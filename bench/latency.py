"""`python -m bench latency`: an integrator's update round trip, against the floor's.

On a private stack with both workers in this process: one unit is driven to its talks
(planned talks: enough for the run), and a `BenchEcho` workflow (the floor: an update
handler that only returns its argument) is started. Then, alternately and sequentially,
one `ping` to the floor and one `record_talk` to the unit (a talk recorded: validated,
encrypted, stored in PostgreSQL with its audit row, acknowledged), `--updates` of each
after `--warmup` untimed. Alternating puts both under the same load at every moment.

Each round trip is the whole client `execute_update`. Last lines: the unit's p50 and p99
over the floor's; the goal is p99 <= 2.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import WorkflowHandle

from activities.talk_store import store_talk
from bench import measure, report
from bench.floor import EchoWorkflow, floor_worker
from bench.stack import BENCH_KEY, BenchStack, private_stack
from kaohe.ingest.ballot_io import token_source
from kaohe.sim.simulate import GROUP, drive_unit, simulated_unit, talk_by_reference
from schemas.common import Stage
from schemas.messages import RecordTalk
from schemas.talks import Talk
from workflows.unit import UnitAssessment


async def _unit_at_talks(stack: BenchStack, task_queue: str, planned: int) -> WorkflowHandle:
    unit = simulated_unit("u0001", 2, (2, 2, 3), planned_talks=planned)
    handle = await stack.start_unit(task_queue, f"latency-{stack.run_id}", unit, "延迟基准")
    status = await drive_unit(
        stack.client, handle.id, unit, tokens=token_source(stack.pool), stop_at=Stage.TALKS
    )
    if status.stage != Stage.TALKS:
        raise RuntimeError(f"{handle.id} is in {status.stage.value}, not talks")
    return handle


def _talk(n: int) -> Talk:
    return Talk(
        idempotency_key=f"latency-talk-{n}",
        talk_id=f"t{n}",
        interviewer="考核组成员",
        interviewee_role="班子成员",
        talk_date=dt.date(2026, 12, 15),
        content=f"谈话内容(保密) #{n}",
    )


async def _stored(stack: BenchStack, unit: WorkflowHandle, n: int) -> RecordTalk:
    """The talk's content stored as kaohe's API stores it; the update the unit then gets."""
    talk = _talk(n)
    return talk_by_reference(talk, await store_talk(stack.pool, BENCH_KEY, unit.id, talk, GROUP.id))


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await call()
    return time.perf_counter() - t0


async def measure_round_trips(
    stack: BenchStack, updates: int, warmup: int
) -> tuple[list[float], list[float], WorkflowHandle]:
    kaohe_queue, floor_queue = stack.task_queue("kaohe"), stack.task_queue("floor")
    async with stack.kaohe_worker(kaohe_queue), floor_worker(stack, floor_queue):
        unit = await _unit_at_talks(stack, kaohe_queue, planned=updates + warmup + 1)
        echo = await stack.client.start_workflow(
            EchoWorkflow.run, id=f"bench-latency-echo-{stack.run_id}", task_queue=floor_queue
        )
        floor: list[float] = []
        talks: list[float] = []
        await measure.settle(stack)
        for i in range(warmup + updates):
            f = await _timed(lambda i=i: echo.execute_update(EchoWorkflow.ping, i))
            talk = await _stored(stack, unit, i)  # not timed: the update's round trip is
            t = await _timed(
                lambda talk=talk: unit.execute_update(UnitAssessment.record_talk, talk)
            )
            if i >= warmup:
                floor.append(f)
                talks.append(t)
        await echo.signal(EchoWorkflow.finish)
    return floor, talks, unit


async def main(*, updates: int, warmup: int, keep: bool) -> int:
    async with private_stack(keep) as stack:
        report.console.print(
            f"latency: {updates} record_talk updates to one unit and {updates} floor pings, "
            f"alternating, after {warmup} of each to warm up"
        )
        floor, talks, unit = await measure_round_trips(stack, updates, warmup)
        _, phases = await measure.history_breakdown([unit])
        rows = [
            ("updates of each", str(updates)),
            ("floor ping p50 / p99 / max", _three(floor)),
            ("record_talk p50 / p99 / max", _three(talks)),
        ]
        report.console.print(
            report.figures_table("update round trips (client execute_update)", rows)
        )
        report.console.print(
            report.phases_table("unit tasks, server-side (history timestamps)", phases)
        )
        report.console.print(report.log_summary(stack))
    report.print_percentile_ratios("record_talk", talks, "floor update", floor)
    return 0


def _three(samples: list[float]) -> str:
    return " / ".join(
        report.ms(x)
        for x in (measure.percentile(samples, 50), measure.percentile(samples, 99), max(samples))
    )
