"""`python -m bench floor`: what the dev server and the SDK can do at best on this machine.

A hello-world workflow with one activity, started many at a time with bounded concurrency
(workflows/s, history events/s), and a workflow with a trivial update handler driven by
sequential execute_update calls (update round-trip p50/p99). The kaohe figures are compared
with these, measured on the same stack in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import WorkflowHandle
    from temporalio.worker import Worker

    from bench import measure, report
    from bench.stack import BenchStack, private_stack
    from worker import sandbox_runner


@activity.defn(name="bench_hello")
async def hello(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="BenchHello")
class HelloWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            hello, name, start_to_close_timeout=timedelta(seconds=30)
        )


@workflow.defn(name="BenchEcho")
class EchoWorkflow:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._done)
        return 0

    @workflow.update
    def ping(self, n: int) -> int:
        return n

    @workflow.update
    def carry(self, payload: Any) -> int:
        """Takes a payload and ignores it: the floor of an update of that size."""
        return 0

    @workflow.signal
    def finish(self) -> None:
        self._done = True


@dataclass
class FloorResult:
    workflows: int
    concurrency: int
    wall: float  # seconds to start and complete every hello workflow
    events: int  # history events of those workflows
    updates: list[float] = field(default_factory=list)  # round trips, seconds
    update_wall: float = 0.0
    cpu: list[tuple[str, str]] = field(default_factory=list)  # during the hello workflows
    phases: dict[str, measure.Phase] = field(default_factory=dict)  # of the hello workflows

    @property
    def workflows_per_s(self) -> float:
        return measure.ratio(self.workflows, self.wall)

    @property
    def events_per_s(self) -> float:
        return measure.ratio(self.events, self.wall)

    @property
    def update_p50(self) -> float:
        return measure.percentile(self.updates, 50)

    @property
    def update_p99(self) -> float:
        return measure.percentile(self.updates, 99)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("hello workflows (1 activity each)", str(self.workflows)),
            ("in flight at most", str(self.concurrency)),
            ("wall time", f"{self.wall:.2f} s"),
            ("workflows/s", f"{self.workflows_per_s:.1f}"),
            ("history events", str(self.events)),
            ("events per workflow", f"{measure.ratio(self.events, self.workflows):.1f}"),
            ("history events/s", f"{self.events_per_s:.1f}"),
            *self.cpu,
            ("sequential updates (trivial handler)", str(len(self.updates))),
            ("updates/s", f"{measure.ratio(len(self.updates), self.update_wall):.1f}"),
            ("update round trip p50", report.ms(self.update_p50)),
            ("update round trip p99", report.ms(self.update_p99)),
            ("update round trip max", report.ms(max(self.updates, default=float("nan")))),
        ]


def floor_worker(stack: BenchStack, task_queue: str) -> Worker:
    # The same sandbox as the kaohe worker, so the floor pays the same per-task overhead.
    return Worker(
        stack.client,
        task_queue=task_queue,
        workflows=[HelloWorkflow, EchoWorkflow],
        activities=[hello],
        workflow_runner=sandbox_runner(),
    )


async def _hello_batch(
    stack: BenchStack, task_queue: str, prefix: str, n: int, limit: int
) -> list[WorkflowHandle[Any, str]]:
    handles: list[WorkflowHandle[Any, str]] = []

    async def one(i: int) -> None:
        handle = await stack.client.start_workflow(
            HelloWorkflow.run, f"w{i}", id=f"{prefix}-{i}", task_queue=task_queue
        )
        handles.append(handle)
        await handle.result()

    await measure.bounded(limit, [lambda i=i: one(i) for i in range(n)])
    return handles


async def _updates(stack: BenchStack, task_queue: str, workflow_id: str, n: int) -> list[float]:
    handle = await stack.client.start_workflow(
        EchoWorkflow.run, id=workflow_id, task_queue=task_queue
    )
    samples: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        echoed = await handle.execute_update(EchoWorkflow.ping, i)
        samples.append(time.perf_counter() - t0)
        if echoed != i:
            raise RuntimeError(f"update ping({i}) returned {echoed}")
    await handle.signal(EchoWorkflow.finish)
    await handle.result()
    return samples


async def measure_floor(
    stack: BenchStack, workflows: int, updates: int, concurrency: int, warmup: int
) -> FloorResult:
    task_queue = stack.task_queue("floor")
    prefix = f"bench-floor-{stack.run_id}"
    async with floor_worker(stack, task_queue):
        if warmup:
            await _hello_batch(stack, task_queue, f"{prefix}-warmup", warmup, concurrency)
            await _updates(stack, task_queue, f"{prefix}-echo-warmup", warmup)
        cpu_before = measure.cpu_snapshot(stack)
        t0 = time.perf_counter()
        handles = await _hello_batch(stack, task_queue, f"{prefix}-hello", workflows, concurrency)
        wall = time.perf_counter() - t0
        cpu = measure.cpu_rows(cpu_before, measure.cpu_snapshot(stack), wall)
        t0 = time.perf_counter()
        samples = await _updates(stack, task_queue, f"{prefix}-echo", updates)
        update_wall = time.perf_counter() - t0
    events, phases = await measure.history_breakdown(handles)
    return FloorResult(workflows, concurrency, wall, events, samples, update_wall, cpu, phases)


async def main(workflows: int, updates: int, concurrency: int, warmup: int, keep: bool) -> int:
    async with private_stack(keep) as stack:
        report.console.print(
            f"floor: {workflows} hello workflows ({concurrency} in flight), "
            f"{updates} sequential updates, after {warmup} of each to warm up"
        )
        result = await measure_floor(stack, workflows, updates, concurrency, warmup)
        report.console.print(
            report.figures_table("floor (dev server + SDK, trivial workflows)", result.rows())
        )
        report.console.print(
            report.phases_table("floor tasks, server-side (history timestamps)", result.phases)
        )
        report.console.print(report.log_summary(stack))
    report.print_ratio_line(
        "floor update p99 / p50", measure.ratio(result.update_p99, result.update_p50)
    )
    return 0
