"""AssessmentCampaign: starts every unit of a roster once and follows their progress.

Units are children with ABANDON, so they outlive a campaign that is terminated or
continued-as-new; their deterministic ids (`kaohe-{campaign}-{unit}`) plus
REJECT_DUPLICATE make starting a campaign twice start no unit twice.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from schemas import search_attributes as sa
    from schemas.common import Stage
    from schemas.roster import UnitSpec
    from schemas.status import CampaignProgress
    from schemas.workflow_io import CampaignInput, UnitInput, UnitProgress
    from workflows.details import campaign_details
    from workflows.stages import TERMINAL
    from workflows.unit import ACTIVITY_RETRY, UnitAssessment


def campaign_workflow_id(campaign_id: str) -> str:
    return f"kaohe-campaign-{campaign_id}"


def unit_workflow_id(campaign_id: str, unit_id: str) -> str:
    return f"kaohe-{campaign_id}-{unit_id}"


@workflow.defn(name="AssessmentCampaign")
class AssessmentCampaign:
    @workflow.init
    def __init__(self, input: CampaignInput) -> None:
        self._input = input
        self._roster = input.roster
        self._started: set[str] = set(input.started)
        self._stages: dict[str, Stage] = dict(input.stages)
        self._seqs: dict[str, int] = dict(input.seqs)

    @workflow.run
    async def run(self, input: CampaignInput) -> CampaignProgress:
        workflow.upsert_search_attributes(
            [sa.CAMPAIGN.value_set(self._roster.campaign_id), sa.YEAR.value_set(self._roster.year)]
        )
        self._refresh_details()
        pending = [u for u in self._roster.units if u.unit_id not in self._started]
        existing: list[str] = []
        step = input.max_concurrent_starts
        for i in range(0, len(pending), step):
            chunk = pending[i : i + step]
            results = await asyncio.gather(*(self._start_unit(u) for u in chunk))
            existing += [u.unit_id for u, new in zip(chunk, results, strict=True) if not new]
            self._refresh_details()
        if existing:
            # Units an earlier run started: take their stage from the database projection,
            # unless one of them has already told us.
            stored: dict[str, str] = await workflow.execute_activity(
                "load_unit_stages",
                self._roster.campaign_id,
                result_type=dict[str, str],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=ACTIVITY_RETRY,
            )
            for unit_id in existing:
                if unit_id in stored and self._stages.get(unit_id) == Stage.NOTICE:
                    self._stages[unit_id] = Stage(stored[unit_id])
            self._refresh_details()

        while not self._all_done():
            await workflow.wait_condition(
                lambda: self._all_done() or workflow.info().is_continue_as_new_suggested()
            )
            if not self._all_done():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    CampaignInput(
                        roster=self._roster,
                        policy=self._input.policy,
                        max_concurrent_starts=step,
                        started=sorted(self._started),
                        stages=self._stages,
                        seqs=self._seqs,
                    )
                )
        return self._progress()

    @workflow.signal
    def unit_progress(self, progress: UnitProgress) -> None:
        if progress.seq < self._seqs.get(progress.unit_id, 0):
            return  # an earlier transition delivered late
        self._seqs[progress.unit_id] = progress.seq
        self._stages[progress.unit_id] = progress.stage
        self._refresh_details()

    @workflow.query
    def progress(self) -> CampaignProgress:
        return self._progress()

    async def _start_unit(self, unit: UnitSpec) -> bool:
        """Starts the unit's workflow; False if an earlier run of this campaign had."""
        r = self._roster
        try:
            await workflow.start_child_workflow(
                UnitAssessment.run,
                UnitInput(
                    campaign_id=r.campaign_id,
                    year=r.year,
                    campaign_title=r.title,
                    unit=unit,
                    policy=self._input.policy,
                ),
                id=unit_workflow_id(r.campaign_id, unit.unit_id),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.CAMPAIGN, r.campaign_id),
                        SearchAttributePair(sa.YEAR, r.year),
                        SearchAttributePair(sa.UNIT, unit.unit_id),
                        SearchAttributePair(sa.STAGE, Stage.NOTICE.value),
                        SearchAttributePair(sa.STALLED, False),
                        SearchAttributePair(sa.ESCALATION, 0),
                    ]
                ),
                static_summary=f"{unit.name} · {r.year}年度考核 · {len(unit.cadres)} cadres",
                static_details=_roster_markdown(unit),
            )
            new = True
        except WorkflowAlreadyStartedError:
            new = False
        self._started.add(unit.unit_id)
        self._stages.setdefault(unit.unit_id, Stage.NOTICE)
        return new

    def _all_done(self) -> bool:
        return len(self._started) == len(self._roster.units) and all(
            self._stages.get(u.unit_id) in TERMINAL for u in self._roster.units
        )

    def _progress(self) -> CampaignProgress:
        by_stage: dict[Stage, int] = {}
        for stage in self._stages.values():
            by_stage[stage] = by_stage.get(stage, 0) + 1
        return CampaignProgress(
            campaign_id=self._roster.campaign_id,
            year=self._roster.year,
            title=self._roster.title,
            units_total=len(self._roster.units),
            units_started=len(self._started),
            by_stage=by_stage,
            completed=self._all_done(),
        )

    def _refresh_details(self) -> None:
        workflow.set_current_details(campaign_details(self._progress()))


def _roster_markdown(unit: UnitSpec) -> str:
    lines = [f"**{unit.name}** ({unit.category})", "", "| Cadre | Position |", "|---|---|"]
    lines += [
        f"| {c.name}{' (主要负责人)' if c.principal else ''} | {c.position} |" for c in unit.cadres
    ]
    return "\n".join(lines)
