"""`python -m bench campaign`: a whole campaign driven to the end, against the floor.

On a private stack with the product's worker in this process: the floor first (hello
workflows: history events/s), then a campaign of `--units` units started as `kaohe start`
starts it (a roster above 256 kB is stored in PostgreSQL and read in pages) and driven
through every stage by the simulated integrators, at most `--concurrency` units at once,
until the campaign workflow returns. Every history event of the units and of every run of
the campaign is counted.

Last lines: wall time / (its events / floor events/s), goal <= 1.5, and unit events/s /
floor events/s, goal >= 0.8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio.client import WorkflowHandle

from bench import measure, report
from bench.chaos import POLICY, drive_campaign, roster_of
from bench.floor import FloorResult, measure_floor
from bench.stack import BenchStack, private_stack
from schemas.roster import Roster
from workflows.campaign import campaign_workflow_id, unit_workflow_id


def bench_roster(units: int, tag: str) -> Roster:
    return roster_of(units, tag, "规模基准")


@dataclass
class CampaignResult:
    units: int
    concurrency: int
    roster_bytes: int
    wall: float
    unit_events: int
    campaign_events: int
    campaign_runs: int
    cpu: list[tuple[str, str]] = field(default_factory=list)
    phases: dict[str, measure.Phase] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.unit_events + self.campaign_events

    @property
    def unit_events_per_s(self) -> float:
        return measure.ratio(self.unit_events, self.wall)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("units (all six stages)", str(self.units)),
            ("roster JSON", f"{self.roster_bytes / 1024:.0f} kB"),
            ("units driven at once at most", str(self.concurrency)),
            ("wall time (start to campaign result)", f"{self.wall:.1f} s"),
            ("units/s", f"{measure.ratio(self.units, self.wall):.2f}"),
            ("unit history events", str(self.unit_events)),
            ("campaign history events (all runs)", str(self.campaign_events)),
            ("campaign runs (continue-as-new)", str(self.campaign_runs)),
            ("unit events/s", f"{self.unit_events_per_s:.1f}"),
            ("all events/s", f"{measure.ratio(self.events, self.wall):.1f}"),
            *self.cpu,
        ]


async def _campaign_handles(
    stack: BenchStack, roster: Roster
) -> tuple[list[WorkflowHandle[Any, Any]], list[WorkflowHandle[Any, Any]]]:
    units = [
        stack.client.get_workflow_handle(unit_workflow_id(roster.campaign_id, u.unit_id))
        for u in roster.units
    ]
    wf_id = campaign_workflow_id(roster.campaign_id)
    runs = [
        stack.client.get_workflow_handle(wf_id, run_id=wf.run_id)
        async for wf in stack.client.list_workflows(f'WorkflowId="{wf_id}"')
    ]
    return units, runs


async def measure_campaign(stack: BenchStack, units: int, concurrency: int) -> CampaignResult:
    task_queue = stack.task_queue("kaohe")
    async with stack.kaohe_worker(task_queue):
        # Warm up: the worker's first sandbox, pools and caches are not the campaign's.
        await drive_campaign(
            stack.client, stack.pool, bench_roster(2, "warmup"), task_queue, concurrency
        )
        roster = bench_roster(units, "bench")
        await measure.settle(stack)
        cpu_before = measure.cpu_snapshot(stack)
        wall = await drive_campaign(
            stack.client,
            stack.pool,
            roster,
            task_queue,
            concurrency,
            database_url=stack.database_url,
        )
        cpu = measure.cpu_rows(cpu_before, measure.cpu_snapshot(stack), wall)
    unit_handles, run_handles = await _campaign_handles(stack, roster)
    unit_events, phases = await measure.history_breakdown(unit_handles)
    campaign_events, _ = await measure.history_breakdown(run_handles)
    return CampaignResult(
        units=units,
        concurrency=concurrency,
        roster_bytes=len(roster.model_dump_json()),
        wall=wall,
        unit_events=unit_events,
        campaign_events=campaign_events,
        campaign_runs=len(run_handles),
        cpu=cpu,
        phases=phases,
    )


async def main(
    *,
    units: int,
    concurrency: int,
    floor_workflows: int,
    floor_concurrency: int,
    floor_warmup: int,
    keep: bool,
) -> int:
    async with private_stack(keep) as stack:
        report.console.print(
            f"floor: {floor_workflows} hello workflows ({floor_concurrency} in flight)"
        )
        floor: FloorResult = await measure_floor(
            stack, floor_workflows, 50, floor_concurrency, floor_warmup
        )
        report.console.print(
            report.figures_table("floor (dev server + SDK, trivial workflows)", floor.rows())
        )
        report.console.print(
            f"campaign: {units} units of 2 cadres, driven to the end by simulated integrators, "
            f"{concurrency} at once (publicity {POLICY.demo.publicity_seconds} s)"
        )
        result = await measure_campaign(stack, units, concurrency)
        report.console.print(
            report.figures_table("campaign (AssessmentCampaign + its units)", result.rows())
        )
        report.console.print(
            report.phases_table("unit tasks, server-side (history timestamps)", result.phases)
        )
        report.console.print(report.log_summary(stack))
    floor_time = measure.ratio(result.events, floor.events_per_s)
    report.console.print(
        f"the floor would take {floor_time:.1f} s for the campaign's {result.events} events "
        f"at {floor.events_per_s:.0f} events/s; the campaign took {result.wall:.1f} s"
    )
    report.print_ratio_line(
        "campaign wall time / (events / floor events/s)", result.wall / floor_time
    )
    report.print_ratio_line(
        "unit events/s / floor events/s",
        measure.ratio(result.unit_events_per_s, floor.events_per_s),
    )
    return 0
