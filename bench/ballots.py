"""`python -m bench ballots`: the two ways ballots come in, each against its own floor.

On a private stack, with units in their evaluation whose rater groups plan enough tokens:

(a) raw COPY: asyncpg `copy_records_to_table` of the bulk batch's mark rows into a scratch
    table shaped like `ballot_marks` (same columns, checks and index);
(b) bulk path: `kaohe.ingest.ballot_io.import_ballots` end to end on a CSV of the same sheets
    (written first, untimed): parse, check, tokens, COPY, the register_ballot_batch update;
each `--runs` times on a fresh unit. Sheets sent one by one (a rater's page, a ballot
system) are `python -m bench vote`'s; none goes through a workflow any more.

The ratio, last: bulk rows/s over raw COPY rows/s, the median of the runs (goal >= 0.5).
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measure, report
from bench.stack import BenchStack, private_stack
from domain.ballots import sheet_marks
from kaohe.ingest.ballot_csv import write_ballot_csv
from kaohe.ingest.ballot_io import import_ballots, issue_tokens, token_source
from kaohe.sim.simulate import drive_unit, sheet_for, simulated_unit
from schemas.common import Stage
from schemas.messages import BallotSheet
from schemas.policy import Policy
from schemas.roster import UnitSpec

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


async def one_run(
    stack: BenchStack, task_queue: str, campaign: str, run: int, cadres: int, sheets_needed: int
) -> tuple[Timed, Timed, Any, list[tuple[str, str]], float, int]:
    """(a) and (b) on a fresh unit: raw COPY of its sheets' marks, then their import."""
    unit = bench_unit(f"bulk{run}", cadres, sheets_needed)
    wf, sheets = await unit_in_evaluation(stack, task_queue, campaign, unit, sheets_needed, run)
    raw = await raw_copy(stack, wf, sheets)
    with tempfile.TemporaryDirectory(dir=stack.root) as tmp:
        path = Path(tmp) / "ballots.csv"
        write_ballot_csv(path, [(str(i), s) for i, s in enumerate(sheets)])
        size = path.stat().st_size
        await measure.settle(stack)
        cpu_before = measure.cpu_snapshot(stack)
        t0 = time.perf_counter()
        imported = await import_ballots(stack.client, stack.pool, path, campaign, unit.unit_id)
        seconds = time.perf_counter() - t0
        cpu = measure.cpu_rows(cpu_before, measure.cpu_snapshot(stack), seconds)
    close_seconds = await close_evaluation(stack, wf)
    return raw, Timed(seconds, imported.rows), imported, cpu, close_seconds, size


async def main(*, n: int, cadres: int, runs: int, keep: bool) -> int:
    per_sheet = 1 + cadres
    sheets_needed = math.ceil(n / per_sheet)
    ratios: list[float] = []
    async with private_stack(keep) as stack:
        task_queue = stack.task_queue("kaohe")
        campaign = f"bench-{stack.run_id}"
        report.console.print(
            f"ballots: {sheets_needed} sheets of {per_sheet} ballots "
            f"(a team ballot and {cadres} cadres) = {sheets_needed * per_sheet} ballots, "
            f"{runs} runs"
        )
        async with stack.kaohe_worker(task_queue):
            for run in range(1, runs + 1):
                raw, bulk, imported, cpu, close_seconds, size = await one_run(
                    stack, task_queue, campaign, run, cadres, sheets_needed
                )
                ratios.append(measure.ratio(bulk.rows_per_s, raw.rows_per_s))
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
                    *[(f"    {name}", value) for name, value in cpu],
                    (
                        "close_evaluation (pool closed, SQL tallies)",
                        f"{close_seconds * 1000:.0f} ms",
                    ),
                    ("bulk / raw COPY", f"{ratios[-1]:.2f}"),
                ]
                report.console.print(
                    report.figures_table(f"ballots, run {run}: bulk import vs raw COPY", rows)
                )
        report.console.print(report.log_summary(stack))
    report.print_ratio_line(
        f"bulk rows/s / raw COPY rows/s, median of {runs} runs", statistics.median(ratios)
    )
    return 0
