"""`python -m bench ballots`: the two ways ballots come in, each against its own floor.

On a private stack, with units in their evaluation whose rater groups plan enough tokens:

(a) raw COPY: asyncpg `copy_records_to_table` of the bulk batch's mark rows into a scratch
    table shaped like `ballot_marks` (same columns, checks and index);
(b) bulk path: `kaohe.ingest.ballot_io.import_ballots` end to end on a CSV of the same sheets
    (written first, untimed): parse, check, tokens, COPY, the register_ballot_batch update;
(c) update path: the same number of ballots on another unit through `record_ballots`
    updates of at most `--batch-size` ballots (each sheet: a team ballot and one per cadre);
(d) bare updates: as many execute_update calls as (c) made, to BenchEcho's no-op update,
    empty, and (d') carrying the very batches (c) sent: the floor of an update that size.

Ratios, last: bulk rows/s over raw COPY rows/s (goal >= 0.5), and update path time over
bare updates time for the same number of calls (goal <= 2; the last line uses the
same-size floor (d')).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measure, report
from bench.floor import EchoWorkflow, floor_worker
from bench.stack import BenchStack, private_stack
from domain.ballots import sheet_marks
from kaohe.ingest.ballot_csv import write_ballot_csv
from kaohe.ingest.ballot_io import import_ballots, issue_tokens, token_source
from kaohe.sim.simulate import BALLOT_SYSTEM, batches_of, drive_unit, sheet_for, simulated_unit
from schemas.common import Stage
from schemas.messages import BallotSheet, RecordBallots
from schemas.policy import Policy
from schemas.roster import UnitSpec
from workflows.unit import UnitAssessment

SCRATCH = "bench_raw_marks"


def bench_unit(unit_id: str, cadres: int, sheets: int) -> UnitSpec:
    """A unit whose three rater groups plan one more token than the run uses, so that the
    evaluation stays open (closing it is timed on its own)."""
    per_group = math.ceil(sheets / 3) + 1
    return simulated_unit(unit_id, cadres, (per_group,) * 3, name="基准单位")


async def unit_in_evaluation(
    stack: BenchStack, task_queue: str, campaign: str, unit: UnitSpec, sheets: int, seed: int
) -> tuple[str, list[BallotSheet]]:
    """Starts the unit, drives it to its evaluation, issues its tokens and fills `sheets`."""
    handle = await stack.start_unit(task_queue, campaign, unit)
    await drive_unit(
        stack.client,
        handle.id,
        unit,
        stop_at=Stage.EVALUATION,
        tokens=token_source(stack.pool),
        seed=seed,
    )
    issued = (await issue_tokens(stack.pool, handle.id)).tokens
    tokens = [t for group in zip(*issued.values(), strict=False) for t in group][:sheets]
    rng = random.Random(seed)
    policy = Policy().ballots
    return handle.id, [sheet_for(t, unit, policy, rng) for t in tokens]


@dataclass
class Timed:
    seconds: float
    rows: int

    @property
    def rows_per_s(self) -> float:
        return measure.ratio(self.rows, self.seconds)


async def raw_copy(stack: BenchStack, workflow_id: str, sheets: list[BallotSheet]) -> Timed:
    records = [
        (workflow_id, "raw", n, "A", *mark)
        for n, sheet in enumerate(sheets)
        for mark in sheet_marks(sheet)
    ]
    async with stack.pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {SCRATCH} (LIKE ballot_marks INCLUDING ALL)")
        columns = ["workflow_id", "batch_id", "sheet_no", "rater_group", "kind"]
        columns += ["target_id", "item", "option"]
        await conn.copy_records_to_table(SCRATCH, records=records[:10_000], columns=columns)
        await conn.execute(f"TRUNCATE {SCRATCH}")
        await measure.settle(stack)
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(SCRATCH, records=records, columns=columns)
        seconds = time.perf_counter() - t0
        await conn.execute(f"DROP TABLE {SCRATCH}")
    return Timed(seconds, len(records))


@dataclass
class UpdatePath:
    timed: Timed
    calls: int
    samples: list[float]
    payloads: list[RecordBallots]


async def update_path(
    stack: BenchStack, workflow_id: str, sheets: list[BallotSheet], batch_size: int
) -> UpdatePath:
    handle = stack.client.get_workflow_handle_for(UnitAssessment.run, workflow_id)
    batches = batches_of(sheets, batch_size)
    rows = sum(len(sheet_marks(s)) for s in sheets)
    samples: list[float] = []
    await measure.settle(stack)
    t0 = time.perf_counter()
    for n, batch in enumerate(batches):
        t1 = time.perf_counter()
        result = await handle.execute_update(
            UnitAssessment.record_ballots,
            RecordBallots(
                idempotency_key=f"bench-{n}", actor=BALLOT_SYSTEM, batch_id=f"b{n}", sheets=batch
            ),
        )
        samples.append(time.perf_counter() - t1)
        if not result.accepted:
            raise RuntimeError(f"batch {n}: {result.message}")
    seconds = time.perf_counter() - t0
    payloads = [
        RecordBallots(
            idempotency_key=f"bench-{n}", actor=BALLOT_SYSTEM, batch_id=f"b{n}", sheets=batch
        )
        for n, batch in enumerate(batches)
    ]
    return UpdatePath(Timed(seconds, rows), len(batches), samples, payloads)


async def bare_updates(stack: BenchStack, calls: int, payloads: list[Any] | None = None) -> float:
    """`calls` updates to a no-op handler: empty ones, or carrying `payloads` (the same
    batches the update path sent, so transport, encryption and decoding cost the same)."""
    task_queue = stack.task_queue("echo")
    async with floor_worker(stack, task_queue):
        handle = await stack.client.start_workflow(
            EchoWorkflow.run, id=f"bench-echo-{stack.run_id}", task_queue=task_queue
        )
        for i in range(10):  # warm-up
            await handle.execute_update(EchoWorkflow.ping, i)
        await measure.settle(stack)
        t0 = time.perf_counter()
        for i in range(calls):
            if payloads is None:
                await handle.execute_update(EchoWorkflow.ping, i)
            else:
                await handle.execute_update(EchoWorkflow.carry, payloads[i])
        seconds = time.perf_counter() - t0
        await handle.signal(EchoWorkflow.finish)
        await handle.result()
    return seconds


async def close_evaluation(stack: BenchStack, workflow_id: str) -> float:
    """close_evaluation: count_ballots (SQL GROUP BY over every mark) and the tallies."""
    handle = stack.client.get_workflow_handle(workflow_id)
    t0 = time.perf_counter()
    await handle.execute_update(
        "close_evaluation",
        {
            "idempotency_key": "bench-close",
            "actor": {"id": "group", "role": "assessment_group"},
            "reason": "基准测试结束",
        },
        result_type=dict,
    )
    return time.perf_counter() - t0


async def main(*, n: int, cadres: int, batch_size: int, keep: bool) -> int:
    per_sheet = 1 + cadres
    sheets_needed = math.ceil(n / per_sheet)
    async with private_stack(keep) as stack:
        task_queue = stack.task_queue("kaohe")
        campaign = f"bench-{stack.run_id}"
        report.console.print(
            f"ballots: {sheets_needed} sheets of {per_sheet} ballots "
            f"(a team ballot and {cadres} cadres) = {sheets_needed * per_sheet} ballots per path"
        )
        async with stack.kaohe_worker(task_queue):
            bulk_wf, bulk_sheets = await unit_in_evaluation(
                stack,
                task_queue,
                campaign,
                bench_unit("bulk", cadres, sheets_needed),
                sheets_needed,
                1,
            )
            raw = await raw_copy(stack, bulk_wf, bulk_sheets)
            with tempfile.TemporaryDirectory(dir=stack.root) as tmp:
                path = Path(tmp) / "ballots.csv"
                write_ballot_csv(path, [(str(i), s) for i, s in enumerate(bulk_sheets)])
                size = path.stat().st_size
                await measure.settle(stack)
                cpu_before = measure.cpu_snapshot(stack)
                t0 = time.perf_counter()
                imported = await import_ballots(stack.client, stack.pool, path, campaign, "bulk")
                bulk_seconds = time.perf_counter() - t0
                bulk_cpu = measure.cpu_rows(cpu_before, measure.cpu_snapshot(stack), bulk_seconds)
            bulk = Timed(bulk_seconds, imported.rows)
            close_seconds = await close_evaluation(stack, bulk_wf)

            upd_wf, upd_sheets = await unit_in_evaluation(
                stack,
                task_queue,
                campaign,
                bench_unit("upd", cadres, sheets_needed),
                sheets_needed,
                2,
            )
            updates = await update_path(stack, upd_wf, upd_sheets, batch_size)
        bare = await bare_updates(stack, updates.calls)
        carried = await bare_updates(stack, updates.calls, updates.payloads)

        phases = ", ".join(f"{k} {v:.2f} s" for k, v in imported.seconds.items())
        rows: list[tuple[str, str]] = [
            (
                "ballots / sheets / mark rows",
                f"{imported.ballots} / {imported.sheets} / {imported.rows}",
            ),
            ("CSV size", f"{size / 1e6:.1f} MB"),
            ("(a) raw COPY", f"{raw.seconds:.2f} s, {raw.rows_per_s:,.0f} rows/s"),
            ("(b) bulk import", f"{bulk.seconds:.2f} s, {bulk.rows_per_s:,.0f} rows/s"),
            ("    phases", phases),
            *[(f"    {name}", value) for name, value in bulk_cpu],
            ("close_evaluation (SQL tallies)", f"{close_seconds * 1000:.0f} ms"),
            (
                f"(c) update path ({updates.calls} updates of <= {batch_size} ballots)",
                f"{updates.timed.seconds:.2f} s, {updates.timed.rows_per_s:,.0f} rows/s",
            ),
            (
                "    per update p50 / p99",
                f"{report.ms(measure.percentile(updates.samples, 50))} / "
                f"{report.ms(measure.percentile(updates.samples, 99))}",
            ),
            (
                f"(d) bare updates ({updates.calls}), empty",
                f"{bare:.2f} s, {measure.ratio(bare, updates.calls) * 1000:.1f} ms each",
            ),
            (
                f"(d') bare updates ({updates.calls}) carrying the same batches",
                f"{carried:.2f} s, {measure.ratio(carried, updates.calls) * 1000:.1f} ms each",
            ),
        ]
        report.console.print(
            report.figures_table("ballots: bulk import and updates vs their floors", rows)
        )
        _, phases = await measure.history_breakdown([stack.client.get_workflow_handle(upd_wf)])
        report.console.print(
            report.phases_table("(c) update path unit, server-side (history timestamps)", phases)
        )
        report.console.print(report.log_summary(stack))
    report.print_ratio_line(
        "bulk rows/s / raw COPY rows/s", measure.ratio(bulk.rows_per_s, raw.rows_per_s)
    )
    report.print_ratio_line(
        "update path time / empty bare updates time", measure.ratio(updates.timed.seconds, bare)
    )
    report.print_ratio_line(
        "update path time / bare updates of the same batches time",
        measure.ratio(updates.timed.seconds, carried),
    )
    return 0
