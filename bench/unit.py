"""`python -m bench unit`: UnitAssessment workflows driven through all six stages.

N units are started directly (as tests/helpers.start_unit does, with unique ids) and each is
driven by kaohe.sim.simulate.drive_unit with real updates, at most `concurrency` units at once.
The floor is measured first on the same stack; the ratios against it are printed last.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from temporalio.client import Client, WorkflowHandle

from bench import measure, report
from bench.floor import FloorResult, measure_floor
from bench.stack import BENCH_KEY, BenchStack, private_stack
from kaohe.ingest.ballot_io import token_source
from kaohe.sim.simulate import drive_unit, simulated_unit, talk_store
from schemas.common import Stage
from schemas.roster import UnitSpec


class _TimedHandle:
    """A workflow handle that times every execute_update (the whole client round trip)."""

    def __init__(self, handle: WorkflowHandle[Any, Any], samples: dict[str, list[float]]):
        self._handle = handle
        self._samples = samples

    async def execute_update(self, update: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self._handle.execute_update(update, *args, **kwargs)
        finally:
            name = getattr(update, "__name__", str(update))
            self._samples[name].append(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _TimedClient:
    """Enough of a Client for drive_unit, handing out timed handles."""

    def __init__(self, client: Client, samples: dict[str, list[float]]):
        self._client = client
        self._samples = samples

    def get_workflow_handle_for(self, *args: Any, **kwargs: Any) -> _TimedHandle:
        return _TimedHandle(self._client.get_workflow_handle_for(*args, **kwargs), self._samples)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def bench_unit(unit_id: str, cadres: int, voters: int) -> UnitSpec:
    """`voters` sheets in three rater groups (A, B, C), every token used."""
    sizes = tuple(voters // 3 + (1 if i < voters % 3 else 0) for i in range(3))
    return simulated_unit(unit_id, cadres, sizes, name="基准单位")  # type: ignore[arg-type]


@dataclass
class UnitResult:
    units: int
    concurrency: int
    voters: int
    cadres: int
    wall: float
    events: int
    updates: dict[str, list[float]] = field(default_factory=dict)
    cpu: list[tuple[str, str]] = field(default_factory=list)
    # Server-side times from the histories, per activity type and for workflow tasks.
    phases: dict[str, measure.Phase] = field(default_factory=dict)

    @property
    def all_updates(self) -> list[float]:
        return [s for samples in self.updates.values() for s in samples]

    @property
    def events_per_s(self) -> float:
        return measure.ratio(self.events, self.wall)

    @property
    def update_p50(self) -> float:
        return measure.percentile(self.all_updates, 50)

    @property
    def update_p99(self) -> float:
        return measure.percentile(self.all_updates, 99)

    def rows(self) -> list[tuple[str, str]]:
        n_updates = len(self.all_updates)
        return [
            ("units (all six stages)", str(self.units)),
            ("cadres per unit / voters", f"{self.cadres} / {self.voters}"),
            ("units in flight at most", str(self.concurrency)),
            ("wall time", f"{self.wall:.2f} s"),
            ("units/s", f"{measure.ratio(self.units, self.wall):.2f}"),
            ("updates", str(n_updates)),
            ("updates/s", f"{measure.ratio(n_updates, self.wall):.1f}"),
            ("history events", str(self.events)),
            ("events per unit", f"{measure.ratio(self.events, self.units):.1f}"),
            ("unit events/s", f"{self.events_per_s:.1f}"),
            *self.cpu,
            ("update round trip p50", report.ms(self.update_p50)),
            ("update round trip p99", report.ms(self.update_p99)),
            ("update round trip max", report.ms(max(self.all_updates, default=float("nan")))),
        ]

    def per_update_table(self) -> Table:
        table = Table(title="unit update round trips by update", title_justify="left")
        for column in ("update", "count", "p50", "p99", "max"):
            table.add_column(column, justify="left" if column == "update" else "right")
        for name, samples in sorted(
            self.updates.items(), key=lambda kv: -measure.percentile(kv[1], 50)
        ):
            table.add_row(
                name,
                str(len(samples)),
                report.ms(measure.percentile(samples, 50)),
                report.ms(measure.percentile(samples, 99)),
                report.ms(max(samples)),
            )
        return table


async def _run_units(
    stack: BenchStack,
    task_queue: str,
    prefix: str,
    n: int,
    *,
    cadres: int,
    voters: int,
    batch_size: int,
    concurrency: int,
    samples: dict[str, list[float]],
) -> list[WorkflowHandle[Any, Any]]:
    timed = _TimedClient(stack.client, samples)
    tokens = token_source(stack.pool)
    talks = talk_store(stack.pool, BENCH_KEY)
    handles: list[WorkflowHandle[Any, Any]] = []

    async def one(i: int) -> None:
        unit = bench_unit(f"u{i:04d}", cadres, voters)
        handle = await stack.start_unit(task_queue, prefix, unit)
        handles.append(handle)
        status = await drive_unit(
            timed,  # type: ignore[arg-type]  # duck-typed: drive_unit only asks for handles
            handle.id,
            unit,
            tokens=tokens,
            talks=talks,
            batch_size=batch_size,
            seed=i,
        )
        if status.stage != Stage.COMPLETED:
            raise RuntimeError(f"{handle.id} ended in stage {status.stage.value}, not completed")
        result = await handle.result()
        if result.stage != Stage.COMPLETED:
            raise RuntimeError(f"{handle.id} returned stage {result.stage.value}")

    await measure.bounded(concurrency, [lambda i=i: one(i) for i in range(n)])
    return handles


async def measure_units(
    stack: BenchStack,
    units: int,
    *,
    cadres: int,
    voters: int,
    batch_size: int,
    concurrency: int,
    warmup: int,
) -> UnitResult:
    task_queue = stack.task_queue("kaohe")
    prefix = f"bench-{stack.run_id}"
    options: dict[str, Any] = {"cadres": cadres, "voters": voters, "batch_size": batch_size}
    async with stack.kaohe_worker(task_queue):
        if warmup:
            await _run_units(
                stack,
                task_queue,
                f"{prefix}-warmup",
                warmup,
                concurrency=concurrency,
                samples=defaultdict(list),
                **options,
            )
        samples: dict[str, list[float]] = defaultdict(list)
        cpu_before = measure.cpu_snapshot(stack)
        t0 = time.perf_counter()
        handles = await _run_units(
            stack, task_queue, prefix, units, concurrency=concurrency, samples=samples, **options
        )
        wall = time.perf_counter() - t0
        cpu = measure.cpu_rows(cpu_before, measure.cpu_snapshot(stack), wall)
    events, phases = await measure.history_breakdown(handles)
    return UnitResult(units, concurrency, voters, cadres, wall, events, dict(samples), cpu, phases)


def comparison_table(floor: FloorResult, unit: UnitResult) -> Table:
    table = Table(title="unit vs floor", title_justify="left")
    for column in ("figure", "floor", "unit", "unit / floor"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row(
        "history events/s",
        f"{floor.events_per_s:.1f}",
        f"{unit.events_per_s:.1f}",
        f"{measure.ratio(unit.events_per_s, floor.events_per_s):.2f}",
    )
    rows = [
        ("update round trip p50", floor.update_p50, unit.update_p50),
        ("update round trip p99", floor.update_p99, unit.update_p99),
    ]
    # Workflow tasks as the server saw them: how long the worker took, how long they waited.
    floor_wft = floor.phases.get("workflow task", measure.Phase())
    unit_wft = unit.phases.get("workflow task", measure.Phase())
    for what, p in (("running", 50), ("running", 99), ("queued", 50), ("queued", 99)):
        rows.append(
            (
                f"workflow task {'run' if what == 'running' else what} p{p}",
                measure.percentile(getattr(floor_wft, what), p),
                measure.percentile(getattr(unit_wft, what), p),
            )
        )
    for label, f, u in rows:
        table.add_row(label, report.ms(f), report.ms(u), f"{measure.ratio(u, f):.2f}")
    return table


async def main(
    *,
    units: int,
    voters: int,
    cadres: int,
    batch_size: int,
    concurrency: int,
    warmup: int,
    floor_workflows: int,
    floor_updates: int,
    floor_concurrency: int,
    floor_warmup: int,
    keep: bool,
) -> int:
    async with private_stack(keep) as stack:
        report.console.print(
            f"floor: {floor_workflows} hello workflows ({floor_concurrency} in flight), "
            f"{floor_updates} sequential updates"
        )
        floor = await measure_floor(
            stack, floor_workflows, floor_updates, floor_concurrency, floor_warmup
        )
        report.console.print(
            report.figures_table("floor (dev server + SDK, trivial workflows)", floor.rows())
        )
        report.console.print(
            f"unit: {units} UnitAssessment workflows, {cadres} cadres and {voters} voters each, "
            f"{concurrency} in flight, after {warmup} to warm up"
        )
        unit = await measure_units(
            stack,
            units,
            cadres=cadres,
            voters=voters,
            batch_size=batch_size,
            concurrency=concurrency,
            warmup=warmup,
        )
        report.console.print(
            report.figures_table("unit (UnitAssessment, all six stages)", unit.rows())
        )
        report.console.print(unit.per_update_table())
        report.console.print(
            report.phases_table("unit tasks, server-side (history timestamps)", unit.phases)
        )
        report.console.print(report.log_summary(stack))
        report.console.print(comparison_table(floor, unit))
        report.console.print(
            "[dim]note: floor updates are sequential on one idle workflow; unit updates run "
            f"{concurrency} units at once and each does PostgreSQL writes in activities.[/]"
        )
    report.print_ratio_line(
        "unit update p50 / floor update p50", measure.ratio(unit.update_p50, floor.update_p50)
    )
    report.print_ratio_line(
        "unit update p99 / floor update p99", measure.ratio(unit.update_p99, floor.update_p99)
    )
    report.print_ratio_line(
        "unit events/s / floor events/s", measure.ratio(unit.events_per_s, floor.events_per_s)
    )
    return 0
