"""UnitAssessment: one unit (领导班子 and its cadres) through the six stages.

Every action is a Workflow Update with a validator (rejected synchronously, never in
history) and also a Signal for fire-and-forget integrators; each is one line below naming
its row of domain/actions.py (model, stages, roles, checks) and its effect (the stage
modules beside this one). See handlers.py for how a message becomes an action.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.actions import ACTIONS
    from domain.state import UnitState
    from schemas import search_attributes as sa
    from schemas.calibration import CalibrationResult
    from schemas.common import Stage
    from schemas.status import UnitStatus
    from schemas.workflow_io import RegisterUnit, UnitInput
    from workflows.unit import (
        clock,
        closing,
        continuing,
        early_stages,
        evaluation,
        grading,
        io,
        result_use,
    )
    from workflows.unit.context import Unit
    from workflows.unit.handlers import action_handlers


def _ended(loops: list[asyncio.Task[None]]) -> bool:
    """Both clocks ran to the unit's end, or one of them failed."""
    return all(t.done() for t in loops) or any(t.done() and t.exception() for t in loops)


@workflow.defn(name="UnitAssessment")
class UnitAssessment:
    @workflow.init
    def __init__(self, input: UnitInput) -> None:
        carried = input.carried_state
        state = (
            UnitState.starting(workflow.now())
            if carried is None
            else UnitState.model_validate(carried)
        )
        self.unit = Unit(input, state)
        self.unit.on_enter[Stage.RESULT_USE] = result_use.enter

    @workflow.run
    async def run(self, input: UnitInput) -> UnitStatus:
        """A continued run (workflows/unit/continuing.py) starts from the state it carries:
        the unit is registered and its stage recorded already."""
        u = self.unit
        if input.carried_state is None:
            await self._start(input)
        else:
            u.registered = True
            u.refresh_details()
        loops = [
            asyncio.create_task(grading.follow_publicity(u)),
            asyncio.create_task(clock.watch_deadlines(u)),
        ]
        try:
            await workflow.wait_condition(lambda: _ended(loops) or continuing.due())
        except asyncio.CancelledError:
            for task in loops:
                task.cancel()
            # Only a cancellation asked of the server: the SDK also cancels the tasks of a
            # workflow it evicts from its cache, which must not record anything.
            if workflow.cancellation_reason() is not None:
                await self._cancelled()
            raise
        if not _ended(loops):
            await continuing.continue_as_new(u, input, loops)
        for task in loops:
            task.result()  # a clock's failure is the run's
        await workflow.wait_condition(workflow.all_handlers_finished)
        if u.background:
            await asyncio.gather(*u.background)
        return u.status()

    async def _start(self, input: UnitInput) -> None:
        u = self.unit
        async with u.lock:
            workflow.upsert_search_attributes(
                [
                    sa.CAMPAIGN.value_set(input.campaign_id),
                    sa.YEAR.value_set(input.year),
                    sa.UNIT.value_set(input.unit.unit_id),
                    sa.STAGE.value_set(u.state.stage.value),
                    sa.STALLED.value_set(False),
                    sa.ESCALATION.value_set(0),
                ]
            )
            await self._register(input)
            await u.record_transition(None, Stage.NOTICE, None, None)
            early_stages.send_notice(u)
            u.refresh_details()
            u.registered = True

    async def _register(self, input: UnitInput) -> None:
        """The unit's rows; until they are stored no action is taken (handlers wait for
        `registered`), so a storage failure is recorded and the write tried again later."""
        u = self.unit
        record = RegisterUnit(
            ref=u.ref(),
            year=input.year,
            campaign_title=input.campaign_title,
            unit=input.unit,
            rater_groups=input.rater_groups,
            grade_labels=input.policy.grading.grade_labels(),
        )
        while True:
            try:
                await io.store(io.storage.register_unit, record)
                return
            except io.StorageFailed as err:
                u.storage_failed(err, "registering the unit")
            await workflow.sleep(io.STORAGE_PAUSE)

    async def _cancelled(self) -> None:
        """Cancelled (by the department, or with its campaign): the stage projection, the
        audit table and the campaign learn it before the workflow ends as cancelled."""
        u = self.unit
        async with u.lock:
            await u.move_to(Stage.CANCELLED, "cancelled", None)
            u.set_escalation(0)
            u.refresh_details()
        await asyncio.gather(*u.background)  # the campaign's signal, notifications

    @workflow.query
    def status(self) -> UnitStatus:
        return self.unit.status()

    # ---- the actions: an update and a signal each ------------------------------------------

    acknowledge_notice, acknowledge_notice_signal = action_handlers(
        ACTIONS["acknowledge_notice"], early_stages.acknowledge_notice
    )
    submit_report, submit_report_signal = action_handlers(
        ACTIONS["submit_report"], early_stages.submit_report
    )
    register_ballot_batch, register_ballot_batch_signal = action_handlers(
        ACTIONS["register_ballot_batch"], evaluation.register_ballot_batch
    )
    close_evaluation, close_evaluation_signal = action_handlers(
        ACTIONS["close_evaluation"], evaluation.close_evaluation
    )
    record_talk, record_talk_signal = action_handlers(
        ACTIONS["record_talk"], early_stages.record_talk
    )
    propose_grades, propose_grades_signal = action_handlers(
        ACTIONS["propose_grades"], grading.propose_grades
    )
    approve_grades, approve_grades_signal = action_handlers(
        ACTIONS["approve_grades"], grading.approve_grades
    )
    raise_objection, raise_objection_signal = action_handlers(
        ACTIONS["raise_objection"], grading.raise_objection
    )
    resolve_objection, resolve_objection_signal = action_handlers(
        ACTIONS["resolve_objection"], grading.resolve_objection
    )
    record_follow_up, record_follow_up_signal = action_handlers(
        ACTIONS["record_follow_up"], result_use.record_follow_up
    )
    request_review, request_review_signal = action_handlers(
        ACTIONS["request_review"], result_use.request_review
    )
    close_follow_up, close_follow_up_signal = action_handlers(
        ACTIONS["close_follow_up"], result_use.close_follow_up
    )
    close_stage, close_stage_signal = action_handlers(ACTIONS["close_stage"], closing.close_stage)
    extend_deadline, extend_deadline_signal = action_handlers(
        ACTIONS["extend_deadline"], clock.extend_deadline
    )
    pause, pause_signal = action_handlers(ACTIONS["pause"], clock.pause)
    resume, resume_signal = action_handlers(ACTIONS["resume"], clock.resume)

    # ---- from the campaign -----------------------------------------------------------------

    @workflow.signal(name="calibration_result")
    async def calibration_result(self, result: CalibrationResult) -> None:
        """The campaign cleared, held, allowed or returned a proposal."""
        u = self.unit
        await workflow.wait_condition(lambda: u.registered)
        async with u.lock:
            await grading.take_calibration_result(u, result)
            u.refresh_details()
