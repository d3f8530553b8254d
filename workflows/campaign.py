"""AssessmentCampaign: starts every unit of a roster once and follows their progress.

Units are children with ABANDON, so they outlive a campaign that is terminated or
continued-as-new; their deterministic ids (`kaohe-{campaign}-{unit}`) plus
REJECT_DUPLICATE make starting a campaign twice start no unit twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio import workflow
from temporalio.common import (
    RawValue,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.rosters import RosterActivities
    from activities.storage import StorageActivities
    from domain import calibration as pool
    from domain.actions import ActionRejected
    from domain.rules import excellent_quota, graded_by_category
    from domain.stages import TERMINAL
    from schemas import search_attributes as sa
    from schemas.calibration import (
        CalibrationEntry,
        CalibrationRequest,
        CalibrationResult,
        CategoryCalibration,
        DecideCalibration,
    )
    from schemas.common import Role, Stage
    from schemas.messages import ActionResult
    from schemas.roster import Contact, UnitSpec
    from schemas.status import CampaignProgress
    from schemas.workflow_io import (
        CampaignInput,
        CampaignState,
        RosterPage,
        UnitInput,
        UnitProgress,
    )
    from workflows.details import campaign_details
    from workflows.payloads import parse_action, rejection_error
    from workflows.unit import UnitAssessment
    from workflows.unit.io import ACTIVITY_RETRY

# Units of a stored roster read per activity (about 1.3 kB each).
ROSTER_PAGE = 200


def campaign_workflow_id(campaign_id: str) -> str:
    return f"kaohe-campaign-{campaign_id}"


def unit_workflow_id(campaign_id: str, unit_id: str) -> str:
    return f"kaohe-{campaign_id}-{unit_id}"


@workflow.defn(name="AssessmentCampaign")
class AssessmentCampaign:
    @workflow.init
    def __init__(self, input: CampaignInput) -> None:
        self._input = input
        self._header = input.header
        state = input.state
        self._cursor = state.cursor
        self._started: set[str] = set(state.started)
        self._recover: list[str] = list(state.recover)
        self._stages: dict[str, Stage] = dict(state.stages)
        self._by_stage: Counter[Stage] = Counter(self._stages.values())
        self._seqs: dict[str, int] = dict(state.seqs)
        self._calibration: dict[str, CalibrationEntry] = dict(state.calibration)
        self._decisions: dict[str, str] = dict(state.calibration_decisions)
        if input.roster is not None:
            self._graded = graded_by_category(input.roster.units)
        else:
            assert input.stored_roster is not None
            self._graded = dict(input.stored_roster.graded_by_category)

    @workflow.run
    async def run(self, input: CampaignInput) -> CampaignProgress:
        try:
            return await self._run(input)
        except asyncio.CancelledError:
            # Not when the SDK evicts the campaign from its cache (it cancels its tasks too).
            if workflow.cancellation_reason() is not None:
                await self._cancel_units()
            raise

    async def _cancel_units(self) -> None:
        """A cancelled campaign cancels its units that are still running (their children
        are abandoned, so this is not automatic); each records its cancellation itself."""
        running = [u for u in sorted(self._started) if self._stages.get(u) not in TERMINAL]
        step = self._input.max_concurrent_starts
        for i in range(0, len(running), step):
            await asyncio.gather(*(self._cancel_unit(u) for u in running[i : i + step]))

    async def _cancel_unit(self, unit_id: str) -> None:
        workflow_id = unit_workflow_id(self._header.campaign_id, unit_id)
        try:
            await workflow.get_external_workflow_handle(workflow_id).cancel()
        except Exception:  # ended meanwhile: nothing to cancel
            workflow.logger.info("unit %s was not cancelled: it has ended", workflow_id)

    async def _run(self, input: CampaignInput) -> CampaignProgress:
        workflow.upsert_search_attributes(
            [sa.CAMPAIGN.value_set(self._header.campaign_id), sa.YEAR.value_set(self._header.year)]
        )
        self._refresh_details()
        step = input.max_concurrent_starts
        async for page in self._pending_units():
            for i in range(0, len(page), step):
                chunk = page[i : i + step]
                await asyncio.gather(*(self._start_unit(*u) for u in chunk))
                self._cursor += len(chunk)
                self._refresh_details()
                if self._should_continue_as_new():
                    await self._continue_as_new()
        if self._recover:
            # Units an earlier run started: take their stage from the database projection,
            # unless one of them has already told us.
            stored = await workflow.execute_activity_method(
                StorageActivities.load_unit_stages,
                self._header.campaign_id,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=ACTIVITY_RETRY,
            )
            for unit_id in self._recover:
                if unit_id in stored and self._stages.get(unit_id) == Stage.NOTICE:
                    self._set_stage(unit_id, Stage(stored[unit_id]))
            self._recover = []
            self._refresh_details()

        while not self._all_done():
            await workflow.wait_condition(
                lambda: self._all_done() or self._should_continue_as_new()
            )
            if not self._all_done():
                await self._continue_as_new()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._progress()

    async def _pending_units(self) -> AsyncIterator[list[tuple[UnitSpec, dict[str, Contact]]]]:
        """The units not started yet, in roster order, in pages: an inline roster in one,
        a stored one ROSTER_PAGE units per activity."""
        roster, stored = self._input.roster, self._input.stored_roster
        if roster is not None:
            units = roster.units[self._cursor :]
            yield [(u, roster.contacts_of(u)) for u in units if u.unit_id not in self._started]
            return
        assert stored is not None
        while self._cursor < stored.units_total:
            page = await workflow.execute_activity_method(
                RosterActivities.load_roster_units,
                RosterPage(
                    campaign_id=self._header.campaign_id,
                    digest=stored.digest,
                    offset=self._cursor,
                    count=min(ROSTER_PAGE, stored.units_total - self._cursor),
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=ACTIVITY_RETRY,
            )
            yield [(u.unit, u.contacts) for u in page if u.unit.unit_id not in self._started]

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.history_limit
        return info.is_continue_as_new_suggested() or (
            limit is not None and info.get_current_history_length() >= limit
        )

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        state = CampaignState(
            cursor=self._cursor,
            started=sorted(self._started),
            recover=self._recover,
            stages=self._stages,
            seqs=self._seqs,
            calibration=self._calibration,
            calibration_decisions=self._decisions,
        )
        workflow.continue_as_new(self._input.model_copy(update={"state": state}))

    @workflow.signal
    def unit_progress(self, progress: UnitProgress) -> None:
        if progress.seq < self._seqs.get(progress.unit_id, 0):
            return  # an earlier transition delivered late
        self._seqs[progress.unit_id] = progress.seq
        self._set_stage(progress.unit_id, progress.stage)
        self._refresh_details()

    @workflow.query
    def progress(self) -> CampaignProgress:
        return self._progress()

    # ---- cross-unit calibration (grading.excellent_quota_scope = "category") --------------

    @workflow.signal
    async def calibrate(self, request: CalibrationRequest) -> None:
        """A unit's new proposal: cleared if its category's pooled quota still holds it,
        otherwise held for the department. It replaces the unit's earlier proposal."""
        self._calibration[request.unit_id] = self._judge(request)
        self._refresh_details()
        await self._tell_unit(request.unit_id)
        await self._clear_held_that_fit(request.category)

    @workflow.query
    def calibration(self) -> list[CategoryCalibration]:
        return [self._category_view(c) for c in sorted(self._graded)]

    @workflow.update
    async def decide_calibration(self, payload: RawValue) -> ActionResult:
        """Takes a DecideCalibration: the department allows a held proposal beyond the pooled
        quota, or returns it to the unit's assessment group."""
        try:
            a = parse_action(DecideCalibration, payload)
            assert isinstance(a, DecideCalibration)
            if a.idempotency_key in self._decisions:
                return self._result(a.unit_id, self._decisions[a.idempotency_key], duplicate=True)
            self._check_decision(a)
        except ActionRejected as err:  # the state moved since validation
            raise rejection_error(err) from err
        entry = self._calibration[a.unit_id]
        state = "allowed" if a.decision == "allow" else "returned"
        self._calibration[a.unit_id] = CalibrationEntry(
            request=entry.request, state=state, reason=f"{a.actor.id}: {a.reason}"
        )
        message = f"proposal {entry.request.proposal_no} of {a.unit_id} {state}"
        self._decisions[a.idempotency_key] = message
        self._refresh_details()
        await self._tell_unit(a.unit_id, a)
        if state == "returned":
            await self._clear_held_that_fit(entry.request.category)
        return self._result(a.unit_id, message)

    @decide_calibration.validator
    def _validate_decide_calibration(self, payload: RawValue) -> None:
        try:
            a = parse_action(DecideCalibration, payload)
            assert isinstance(a, DecideCalibration)
            if a.idempotency_key not in self._decisions:
                self._check_decision(a)
        except ActionRejected as err:
            raise rejection_error(err) from None

    def _check_decision(self, a: DecideCalibration) -> None:
        if a.actor.role != Role.DEPARTMENT:
            raise ActionRejected(
                f"actor.role: {a.actor.role.value!r} may not decide_calibration; "
                "allowed roles: department"
            )
        entry = self._calibration.get(a.unit_id)
        if entry is None or entry.state != "held":
            held = ", ".join(pool.held(self._calibration))
            raise ActionRejected(
                f"unit_id: {a.unit_id!r} has no proposal on hold; held: {held or 'none'}"
            )

    def _result(self, unit_id: str, message: str, duplicate: bool = False) -> ActionResult:
        stage = self._stages.get(unit_id, Stage.GRADING)
        return ActionResult(accepted=True, stage=stage, message=message, duplicate=duplicate)

    def _quota(self, category: str) -> tuple[int, int]:
        """(graded cadres, pooled 优秀 quota) of a category, from the roster."""
        graded = self._graded.get(category, 0)
        return graded, excellent_quota(graded, self._input.policy.grading.ratio_for(category))

    def _judge(self, request: CalibrationRequest) -> CalibrationEntry:
        graded = self._graded.get(request.category, 0)
        ratio = self._input.policy.grading.ratio_for(request.category)
        return pool.judge(self._calibration, request, graded, ratio)

    async def _clear_held_that_fit(self, category: str) -> None:
        """Held proposals that the pool now holds (another unit asked for fewer, or was
        returned) are cleared, in the order they came."""
        for unit_id in list(self._calibration):
            entry = self._calibration[unit_id]  # as it is now: telling a unit awaits
            if entry.request.category == category and entry.state == "held":
                judged = self._judge(entry.request)
                if judged.state == "cleared":
                    self._calibration[unit_id] = judged
                    self._refresh_details()
                    await self._tell_unit(unit_id)

    async def _tell_unit(self, unit_id: str, decision: DecideCalibration | None = None) -> None:
        entry = self._calibration[unit_id]
        result = CalibrationResult(
            proposal_no=entry.request.proposal_no,
            outcome=entry.state,
            reason=entry.reason,
            actor=decision.actor if decision else None,
        )
        try:
            await workflow.get_external_workflow_handle(
                unit_workflow_id(self._header.campaign_id, unit_id)
            ).signal("calibration_result", result)
        except Exception:  # a unit that is gone has no proposal to hold
            workflow.logger.warning("unit %s did not take its calibration result", unit_id)

    def _category_view(self, category: str) -> CategoryCalibration:
        graded, quota = self._quota(category)
        return CategoryCalibration(
            category=category,
            ratio=str(self._input.policy.grading.ratio_for(category)),
            graded=graded,
            quota=quota,
            reserved=pool.reserved(self._calibration, category),
            held=pool.held(self._calibration, category),
        )

    async def _start_unit(self, unit: UnitSpec, contacts: dict[str, Contact]) -> None:
        """Starts the unit's workflow; one an earlier run of this campaign started is left
        running and its stage recovered."""
        r = self._header
        try:
            await workflow.start_child_workflow(
                UnitAssessment.run,
                UnitInput(
                    campaign_id=r.campaign_id,
                    year=r.year,
                    campaign_title=r.title,
                    unit=unit,
                    policy=self._input.policy,
                    contacts=contacts,
                    group_leader=r.group_leader,
                    department=r.department,
                    assessment_group=r.assessment_group,
                    approver=r.approver,
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
        except WorkflowAlreadyStartedError:
            self._recover.append(unit.unit_id)
        self._started.add(unit.unit_id)
        if unit.unit_id not in self._stages:
            self._set_stage(unit.unit_id, Stage.NOTICE)

    def _set_stage(self, unit_id: str, stage: Stage) -> None:
        """Keeps the per-stage counts with the stages: a signal costs O(1), not O(units)."""
        old = self._stages.get(unit_id)
        if old is not None:
            self._by_stage[old] -= 1
        self._stages[unit_id] = stage
        self._by_stage[stage] += 1

    def _all_done(self) -> bool:
        ended = sum(self._by_stage[s] for s in TERMINAL)
        return len(self._started) == self._input.units_total and ended == len(self._stages)

    def _progress(self) -> CampaignProgress:
        return CampaignProgress(
            campaign_id=self._header.campaign_id,
            year=self._header.year,
            title=self._header.title,
            units_total=self._input.units_total,
            units_started=len(self._started),
            by_stage={stage: n for stage, n in self._by_stage.items() if n},
            completed=self._all_done(),
            calibration_held=pool.held(self._calibration),
        )

    def _refresh_details(self) -> None:
        workflow.set_current_details(campaign_details(self._progress()))


def _roster_markdown(unit: UnitSpec) -> str:
    lines = [f"**{unit.name}** ({unit.category})", "", "| Cadre | Position |", "|---|---|"]
    lines += [
        f"| {c.name}{' (主要负责人)' if c.principal else ''} | {c.position} |" for c in unit.cadres
    ]
    return "\n".join(lines)
