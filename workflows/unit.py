"""UnitAssessment: one unit (领导班子 and its cadres) through the six stages.

Every action is a Workflow Update with a validator (rejected synchronously, never in
history) and also a Signal for fire-and-forget integrators (validated in the handler;
a bad one is recorded as rejected). Handlers run one at a time under a lock, as in
temporalio/samples-python `safe_message_handlers`, and re-check under the lock because
the state may have moved since validation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain.ballots import batch_problems
    from domain.calendar import SHANGHAI, publicity_end
    from domain.deadlines import Step, extended, next_step, resumed, stage_deadline
    from domain.rules import derive_follow_ups, proposal_violations, suggested_grade
    from domain.stages import ACTION_RULES, CLOSABLE_EARLY, NEXT, TERMINAL
    from domain.tally import group_participation, groups_complete, tally_ballots
    from schemas import search_attributes as sa
    from schemas.calibration import CalibrationRequest, CalibrationResult, CalibrationView
    from schemas.common import Action, Actor, CadreGrade, Role, Stage
    from schemas.messages import (
        ACTION_MODELS,
        AcknowledgeNotice,
        ActionResult,
        ApproveGrades,
        CloseEvaluation,
        CloseFollowUp,
        CloseStage,
        ExtendDeadline,
        FollowUpKind,
        GroupEvaluation,
        PauseUnit,
        ProposeGrades,
        RaiseObjection,
        RecordBallots,
        RecordFollowUp,
        RecordTalk,
        RegisterBallotBatch,
        RequestReview,
        ResolveObjection,
        ResumeUnit,
        SubmitReport,
    )
    from schemas.status import (
        EvaluationProgress,
        Flag,
        FollowUpProgress,
        FollowUpView,
        GradingProgress,
        GroupParticipation,
        ObjectionView,
        Rejection,
        ReportProgress,
        StageVisit,
        TalkProgress,
        TargetTally,
        UnitStatus,
    )
    from schemas.workflow_io import (
        AcknowledgementRecord,
        AuditRecord,
        BallotBatchCheck,
        BallotBatchReceipt,
        BallotBatchRecord,
        BallotCounts,
        BallotSheetsRecord,
        Delivery,
        FollowUpClosure,
        FollowUpRecord,
        FollowUpsRecord,
        GradeDecisionRecord,
        GradeProposalRecord,
        Notification,
        NotifyOutcome,
        ObjectionDecision,
        ObjectionRecord,
        PreviousGradesQuery,
        RegisterUnit,
        ReportRecord,
        TalkRecord,
        TransitionRecord,
        UnitInput,
        UnitProgress,
        UnitRef,
    )
    from workflows.details import unit_details
    from workflows.payloads import ActionRejected, idempotency_key_of, parse_action

# Storage survives a database restart: retry with backoff for as long as it takes
# (past a minute the SDK waits between local attempts with a timer), except for errors
# that say the request itself is wrong.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["BatchConflict", "BallotRejected"],
)
ACTIVITY_TIMEOUT = timedelta(seconds=30)
NOTIFY_HEARTBEAT_TIMEOUT = timedelta(seconds=5)
MAX_REJECTIONS_KEPT = 50
# workflow.patched id: storage moved from activities to local activities.
LOCAL_STORAGE_PATCH = "local-storage-activities"
# workflow.patched id: tokened ballot sheets, weighted tallies and flags (issue 4); units
# started before keep flat ballots and plain tallies.
BALLOT_SHEETS_PATCH = "ballot-sheets"
# workflow.patched id: approved grades go through publicity (公示) and objections (issue 5).
PUBLICITY_PATCH = "publicity"
# workflow.patched id: each cadre signs for its feedback; the two-year rule (issue 5).
RESULT_USE_PATCH = "result-use-two-years"
# workflow.patched id: proposals calibrated across the campaign's units (issue 5).
CALIBRATION_PATCH = "cross-unit-calibration"
# workflow.patched id: stage deadlines, reminders and escalation (issue 6).
DEADLINES_PATCH = "stage-deadlines"
# workflow.patched id: notifications by the roster's channels, sent in the background (issue 6).
NOTIFY_CHANNELS_PATCH = "notify-channels"
# workflow.patched id: notify as a server-scheduled activity. A local activity keeps the
# workflow task open while it runs and retries, so a failing webhook held up every update.
NOTIFY_ACTIVITY_PATCH = "notify-activity"
# workflow.patched id: result use is closed by its follow-ups only, each cadre's feedback is
# signed by the cadre (or recorded by the department), and a 复核 answered late escalates.
RESULT_USE_SIGNED_PATCH = "result-use-signed"
# workflow.patched id: resume gives back the working days paused, not the wall-clock time.
RESUME_WORKING_DAYS_PATCH = "resume-working-days"
# workflow.patched id: a batch the database refuses is a rejection, by signal as by update.
BALLOT_REJECTION_PATCH = "ballot-rejection-local"
MAX_PROBLEMS_SHOWN = 20
# Who may close feedback (反馈) follow-ups: the one it is sent to signs, or the department
# records a signature on paper (or a refusal to sign).
_CADRE_SIGNERS = frozenset({Role.CADRE, Role.DEPARTMENT})
_UNIT_SIGNERS = frozenset({Role.UNIT, Role.INTEGRATOR, Role.DEPARTMENT})


@workflow.defn(name="UnitAssessment")
class UnitAssessment:
    @workflow.init
    def __init__(self, input: UnitInput) -> None:
        self._input = input
        self._unit = input.unit
        self._stage = Stage.NOTICE
        self._history = [StageVisit(stage=Stage.NOTICE, entered_at=workflow.now())]
        self._seq = 0
        self._lock = asyncio.Lock()
        # Updates can be delivered in the same activation as the start, before run() has
        # registered the unit: handlers wait for this.
        self._registered = False
        self._processed: dict[str, tuple[str, ActionResult]] = {}
        self._validated: tuple[str, bytes, Action] | None = None  # see _validate
        self._parse_context = {"grade_names": input.policy.grading.grade_names()}
        self._calibration: CalibrationView | None = None  # of the latest proposal
        # The deadline clock of the current stage (see _watch_deadlines).
        self._deadline: dt.datetime | None = None
        self._deadline_visit = 0  # len(self._history) the deadline belongs to
        self._reminded = False
        self._escalation = 0
        self._deadline_steps: list[str] = []  # the current stage's, for status and details
        self._paused_since: dt.datetime | None = None
        self._dead_letters: list[str] = []  # notifications given up after their attempts
        self._acks = 0
        self._reports: dict[str, int] = {}  # "team" or a cadre id -> latest revision
        self._report_times: dict[str, dt.datetime] = {}  # first submission
        self._batches: dict[str, int] = {}  # batch id -> ballots
        self._sheets_mode = False  # set in run(), see BALLOT_SHEETS_PATCH
        self._group_sheets: dict[str, int] = {}  # rater group -> sheets returned
        self._flags: list[Flag] = []
        self._talk_roles: dict[str, int] = {}  # interviewee role -> talks
        self._evaluation_closed = False
        self._evaluation_close_reason: str | None = None
        self._tallies: list[TargetTally] = []
        self._talks: set[str] = set()
        self._proposal_no = 0
        self._pending: ProposeGrades | None = None  # sealed until approved
        self._returned = 0
        self._final: ProposeGrades | None = None  # approved: published, sealed no more
        self._publicity_ends: dt.datetime | None = None  # set while publicity runs
        self._grades_final = False
        self._objections: dict[str, ObjectionView] = {}
        self._notified_at: dt.datetime | None = None  # results notified (复核 counts from it)
        self._follow_ups: dict[str, FollowUpView] = {}
        self._result_use_signed = False  # see RESULT_USE_SIGNED_PATCH
        self._rejections: list[Rejection] = []
        self._rejection_count = 0
        self._background: list[asyncio.Task[None]] = []
        self._appliers: dict[str, Callable[[Any], Awaitable[str]]] = {
            "acknowledge_notice": self._apply_acknowledge_notice,
            "submit_report": self._apply_submit_report,
            "record_ballots": self._apply_record_ballots,
            "register_ballot_batch": self._apply_register_ballot_batch,
            "close_evaluation": self._apply_close_evaluation,
            "record_talk": self._apply_record_talk,
            "propose_grades": self._apply_propose_grades,
            "approve_grades": self._apply_approve_grades,
            "raise_objection": self._apply_raise_objection,
            "resolve_objection": self._apply_resolve_objection,
            "record_follow_up": self._apply_record_follow_up,
            "request_review": self._apply_request_review,
            "close_follow_up": self._apply_close_follow_up,
            "close_stage": self._apply_close_stage,
            "extend_deadline": self._apply_extend_deadline,
            "pause": self._apply_pause,
            "resume": self._apply_resume,
        }
        # Checks against the roster, the policy and settled results (the evaluation's flags):
        # run by validators and signal handlers, never again on replay, so they may grow
        # stricter without breaking recorded histories.
        self._payload_checkers: dict[str, Callable[[Any], None]] = {
            "record_ballots": self._check_sheets,
            "propose_grades": self._check_grading_rules,
        }
        self._checkers: dict[str, Callable[[Any], None]] = {
            "request_review": self._check_request_review,
            "submit_report": self._check_submit_report,
            "record_ballots": self._check_record_ballots,
            "register_ballot_batch": self._check_register_ballot_batch,
            "close_evaluation": self._check_close_evaluation,
            "record_talk": self._check_record_talk,
            "propose_grades": self._check_propose_grades,
            "approve_grades": self._check_approve_grades,
            "raise_objection": self._check_raise_objection,
            "resolve_objection": self._check_resolve_objection,
            "record_follow_up": self._check_record_follow_up,
            "close_follow_up": self._check_close_follow_up,
            "close_stage": self._check_close_stage,
            "pause": self._check_pause,
            "resume": self._check_resume,
            "extend_deadline": self._check_extend_deadline,
        }

    @workflow.run
    async def run(self, input: UnitInput) -> UnitStatus:
        self._sheets_mode = workflow.patched(BALLOT_SHEETS_PATCH)
        async with self._lock:
            workflow.upsert_search_attributes(
                [
                    sa.CAMPAIGN.value_set(input.campaign_id),
                    sa.YEAR.value_set(input.year),
                    sa.UNIT.value_set(self._unit.unit_id),
                    sa.STAGE.value_set(self._stage.value),
                    sa.STALLED.value_set(False),
                    sa.ESCALATION.value_set(0),
                ]
            )
            await self._activity(
                "register_unit",
                RegisterUnit(
                    ref=self._ref(),
                    year=input.year,
                    campaign_title=input.campaign_title,
                    unit=self._unit,
                    rater_groups=input.rater_groups,
                    grade_labels=input.policy.grading.grade_labels(),
                ),
            )
            await self._record_transition(None, Stage.NOTICE, None, None)
            await self._notify(
                "notice",
                [
                    self._unit.contact or self._unit.unit_id,
                    *(c.cadre_id for c in self._unit.cadres),
                ],
                f"{input.campaign_title}: 考核通知",
                f"{self._unit.name} 年度考核已启动, 请确认收到通知。",
            )
            self._refresh_details()
            self._registered = True
        try:
            if workflow.patched(DEADLINES_PATCH):
                await asyncio.gather(self._follow_publicity(), self._watch_deadlines())
            else:  # units started before deadlines existed keep none
                await self._follow_publicity()
        except asyncio.CancelledError:
            # Only a cancellation asked of the server: the SDK also cancels the tasks of a
            # workflow it evicts from its cache, which must not record anything.
            if workflow.cancellation_reason() is not None:
                await self._cancelled()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._background:
            await asyncio.gather(*self._background)
        return self._status()

    # ---- queries -------------------------------------------------------------------------

    @workflow.query
    def status(self) -> UnitStatus:
        return self._status()

    # ---- updates (validator + handler per action) ----------------------------------------
    # Payloads are taken raw (RawValue: the JSON bytes as sent) and parsed here with the
    # action's model, once, straight from JSON: a malformed one is rejected naming its fields,
    # where the SDK's decoder would only say "Failed decoding arguments", and a 500-ballot
    # batch is not decoded into dicts twice (the SDK decodes typed arguments again after the
    # validator). Python callers still pass the models; they travel as JSON.

    @workflow.update
    async def acknowledge_notice(self, payload: RawValue) -> ActionResult:
        """Takes a AcknowledgeNotice."""
        return await self._handle_update("acknowledge_notice", payload)

    @acknowledge_notice.validator
    def _validate_acknowledge_notice(self, payload: RawValue) -> None:
        self._validate("acknowledge_notice", payload)

    @workflow.update
    async def submit_report(self, payload: RawValue) -> ActionResult:
        """Takes a SubmitReport."""
        return await self._handle_update("submit_report", payload)

    @submit_report.validator
    def _validate_submit_report(self, payload: RawValue) -> None:
        self._validate("submit_report", payload)

    @workflow.update
    async def record_ballots(self, payload: RawValue) -> ActionResult:
        """Takes a RecordBallots."""
        return await self._handle_update("record_ballots", payload)

    @record_ballots.validator
    def _validate_record_ballots(self, payload: RawValue) -> None:
        self._validate("record_ballots", payload)

    @workflow.update
    async def register_ballot_batch(self, payload: RawValue) -> ActionResult:
        """Takes a RegisterBallotBatch."""
        return await self._handle_update("register_ballot_batch", payload)

    @register_ballot_batch.validator
    def _validate_register_ballot_batch(self, payload: RawValue) -> None:
        self._validate("register_ballot_batch", payload)

    @workflow.update
    async def close_evaluation(self, payload: RawValue) -> ActionResult:
        """Takes a CloseEvaluation."""
        return await self._handle_update("close_evaluation", payload)

    @close_evaluation.validator
    def _validate_close_evaluation(self, payload: RawValue) -> None:
        self._validate("close_evaluation", payload)

    @workflow.update
    async def record_talk(self, payload: RawValue) -> ActionResult:
        """Takes a RecordTalk."""
        return await self._handle_update("record_talk", payload)

    @record_talk.validator
    def _validate_record_talk(self, payload: RawValue) -> None:
        self._validate("record_talk", payload)

    @workflow.update
    async def propose_grades(self, payload: RawValue) -> ActionResult:
        """Takes a ProposeGrades."""
        return await self._handle_update("propose_grades", payload)

    @propose_grades.validator
    def _validate_propose_grades(self, payload: RawValue) -> None:
        self._validate("propose_grades", payload)

    @workflow.update
    async def approve_grades(self, payload: RawValue) -> ActionResult:
        """Takes a ApproveGrades."""
        return await self._handle_update("approve_grades", payload)

    @approve_grades.validator
    def _validate_approve_grades(self, payload: RawValue) -> None:
        self._validate("approve_grades", payload)

    @workflow.update
    async def raise_objection(self, payload: RawValue) -> ActionResult:
        """Takes a RaiseObjection."""
        return await self._handle_update("raise_objection", payload)

    @raise_objection.validator
    def _validate_raise_objection(self, payload: RawValue) -> None:
        self._validate("raise_objection", payload)

    @workflow.update
    async def resolve_objection(self, payload: RawValue) -> ActionResult:
        """Takes a ResolveObjection."""
        return await self._handle_update("resolve_objection", payload)

    @resolve_objection.validator
    def _validate_resolve_objection(self, payload: RawValue) -> None:
        self._validate("resolve_objection", payload)

    @workflow.update
    async def record_follow_up(self, payload: RawValue) -> ActionResult:
        """Takes a RecordFollowUp."""
        return await self._handle_update("record_follow_up", payload)

    @record_follow_up.validator
    def _validate_record_follow_up(self, payload: RawValue) -> None:
        self._validate("record_follow_up", payload)

    @workflow.update
    async def request_review(self, payload: RawValue) -> ActionResult:
        """Takes a RequestReview."""
        return await self._handle_update("request_review", payload)

    @request_review.validator
    def _validate_request_review(self, payload: RawValue) -> None:
        self._validate("request_review", payload)

    @workflow.update
    async def close_follow_up(self, payload: RawValue) -> ActionResult:
        """Takes a CloseFollowUp."""
        return await self._handle_update("close_follow_up", payload)

    @close_follow_up.validator
    def _validate_close_follow_up(self, payload: RawValue) -> None:
        self._validate("close_follow_up", payload)

    @workflow.update
    async def close_stage(self, payload: RawValue) -> ActionResult:
        """Takes a CloseStage."""
        return await self._handle_update("close_stage", payload)

    @close_stage.validator
    def _validate_close_stage(self, payload: RawValue) -> None:
        self._validate("close_stage", payload)

    @workflow.update
    async def extend_deadline(self, payload: RawValue) -> ActionResult:
        """Takes a ExtendDeadline."""
        return await self._handle_update("extend_deadline", payload)

    @extend_deadline.validator
    def _validate_extend_deadline(self, payload: RawValue) -> None:
        self._validate("extend_deadline", payload)

    @workflow.update
    async def pause(self, payload: RawValue) -> ActionResult:
        """Takes a PauseUnit."""
        return await self._handle_update("pause", payload)

    @pause.validator
    def _validate_pause(self, payload: RawValue) -> None:
        self._validate("pause", payload)

    @workflow.update
    async def resume(self, payload: RawValue) -> ActionResult:
        """Takes a ResumeUnit."""
        return await self._handle_update("resume", payload)

    @resume.validator
    def _validate_resume(self, payload: RawValue) -> None:
        self._validate("resume", payload)

    # ---- signals: the same actions, fire and forget ------------------------------------
    # Raw payloads here too, so that a malformed one reaches us and is recorded as rejected
    # instead of being dropped by the SDK's decoder.

    @workflow.signal(name="acknowledge_notice")
    async def acknowledge_notice_signal(self, payload: RawValue) -> None:
        await self._handle_signal("acknowledge_notice", payload)

    @workflow.signal(name="submit_report")
    async def submit_report_signal(self, payload: RawValue) -> None:
        await self._handle_signal("submit_report", payload)

    @workflow.signal(name="record_ballots")
    async def record_ballots_signal(self, payload: RawValue) -> None:
        await self._handle_signal("record_ballots", payload)

    @workflow.signal(name="register_ballot_batch")
    async def register_ballot_batch_signal(self, payload: RawValue) -> None:
        await self._handle_signal("register_ballot_batch", payload)

    @workflow.signal(name="close_evaluation")
    async def close_evaluation_signal(self, payload: RawValue) -> None:
        await self._handle_signal("close_evaluation", payload)

    @workflow.signal(name="record_talk")
    async def record_talk_signal(self, payload: RawValue) -> None:
        await self._handle_signal("record_talk", payload)

    @workflow.signal(name="propose_grades")
    async def propose_grades_signal(self, payload: RawValue) -> None:
        await self._handle_signal("propose_grades", payload)

    @workflow.signal(name="approve_grades")
    async def approve_grades_signal(self, payload: RawValue) -> None:
        await self._handle_signal("approve_grades", payload)

    @workflow.signal(name="raise_objection")
    async def raise_objection_signal(self, payload: RawValue) -> None:
        await self._handle_signal("raise_objection", payload)

    @workflow.signal(name="resolve_objection")
    async def resolve_objection_signal(self, payload: RawValue) -> None:
        await self._handle_signal("resolve_objection", payload)

    @workflow.signal(name="record_follow_up")
    async def record_follow_up_signal(self, payload: RawValue) -> None:
        await self._handle_signal("record_follow_up", payload)

    @workflow.signal(name="request_review")
    async def request_review_signal(self, payload: RawValue) -> None:
        await self._handle_signal("request_review", payload)

    @workflow.signal(name="close_follow_up")
    async def close_follow_up_signal(self, payload: RawValue) -> None:
        await self._handle_signal("close_follow_up", payload)

    @workflow.signal(name="close_stage")
    async def close_stage_signal(self, payload: RawValue) -> None:
        await self._handle_signal("close_stage", payload)

    @workflow.signal(name="extend_deadline")
    async def extend_deadline_signal(self, payload: RawValue) -> None:
        await self._handle_signal("extend_deadline", payload)

    @workflow.signal(name="pause")
    async def pause_signal(self, payload: RawValue) -> None:
        await self._handle_signal("pause", payload)

    @workflow.signal(name="resume")
    async def resume_signal(self, payload: RawValue) -> None:
        await self._handle_signal("resume", payload)

    # ---- from the campaign ---------------------------------------------------------------

    @workflow.signal(name="calibration_result")
    async def calibration_result(self, result: CalibrationResult) -> None:
        """The campaign cleared, held, allowed or returned a proposal (see _calibrates)."""
        await workflow.wait_condition(lambda: self._registered)
        async with self._lock:
            c = self._calibration
            if (
                c is None
                or c.proposal_no != result.proposal_no
                or c.state
                not in (
                    "pending",
                    "held",
                )
            ):
                return  # about an earlier proposal, or said already
            self._calibration = CalibrationView(
                proposal_no=result.proposal_no, state=result.outcome, reason=result.reason
            )
            await self._audit_calibration(result.actor)
            if result.outcome == "returned" and self._pending is not None:
                decision = ApproveGrades(
                    idempotency_key=f"calibration-{result.proposal_no}",
                    actor=result.actor or Actor(id="campaign", role=Role.DEPARTMENT),
                    decision="return",
                    comment=f"cross-unit calibration: {result.reason}"[:200],
                )
                await self._activity(
                    "save_grade_decision",
                    GradeDecisionRecord(
                        ref=self._ref(), proposal_no=result.proposal_no, action=decision
                    ),
                )
                self._pending = None
                self._returned += 1
            self._refresh_details()

    # ---- dispatch ------------------------------------------------------------------------

    def _duplicate(self, name: str, action: Action) -> ActionResult | None:
        seen = self._processed.get(action.idempotency_key)
        if seen is None:
            return None
        first_name, result = seen
        if first_name != name:
            raise ActionRejected(
                f"idempotency_key {action.idempotency_key!r} was already used for {first_name}"
            )
        return result.model_copy(update={"duplicate": True})

    def _parse(self, name: str, payload: RawValue) -> Action:
        return parse_action(ACTION_MODELS[name], payload, self._parse_context)

    def _validate(self, name: str, payload: RawValue) -> None:
        action = self._parse(name, payload)
        if self._duplicate(name, action) is None:
            self._check(name, action, payload_checked=False)
        # The handler takes this parse instead of its own (a ballot batch is large). Only a
        # cache: on replay validators do not run and the handler parses the same bytes.
        self._validated = (name, payload.payload.data, action)

    def _validated_action(self, name: str, payload: RawValue) -> Action:
        validated, self._validated = self._validated, None
        if validated is not None and validated[0] == name and validated[1] == payload.payload.data:
            return validated[2]
        return self._parse(name, payload)

    def _check(self, name: str, action: Action, *, payload_checked: bool) -> None:
        """Raises ActionRejected if the unit's state or the payload does not allow the action.

        Payload-only checks (against the roster and the policy, which never change) run once:
        in the validator for an update, here for a signal (`payload_checked`)."""
        rule = ACTION_RULES[name]
        if self._stage not in rule.stages:
            allowed = ", ".join(sorted(s.value for s in rule.stages))
            raise ActionRejected(
                f"{name} is not accepted now: the unit is in stage {self._stage.value!r} "
                f"(current stage), and {name} belongs to {allowed}"
            )
        if action.actor.role not in rule.roles:
            roles = ", ".join(sorted(r.value for r in rule.roles))
            raise ActionRejected(
                f"actor.role: {action.actor.role.value!r} may not {name}; allowed roles: {roles}"
            )
        if not payload_checked and name in self._payload_checkers:
            self._payload_checkers[name](action)
        checker = self._checkers.get(name)
        if checker is not None:
            checker(action)

    async def _handle_update(self, name: str, payload: RawValue) -> ActionResult:
        try:
            action = self._validated_action(name, payload)
            return await self._perform(name, action, payload_checked=True)
        except ActionRejected as err:
            # The state moved between validation and handling: fail the update, not the task.
            raise ApplicationError(str(err), type="ActionRejected", non_retryable=True) from err

    async def _handle_signal(self, name: str, payload: RawValue) -> None:
        key = idempotency_key_of(payload)
        try:
            action = self._parse(name, payload)
            await self._perform(name, action, payload_checked=False)
        except ActionRejected as err:
            await self._reject(name, key, str(err))

    async def _perform(self, name: str, action: Action, *, payload_checked: bool) -> ActionResult:
        await workflow.wait_condition(lambda: self._registered)
        async with self._lock:
            duplicate = self._duplicate(name, action)
            if duplicate is not None:
                return duplicate
            self._check(name, action, payload_checked=payload_checked)
            message = await self._appliers[name](action)
            result = ActionResult(accepted=True, stage=self._stage, message=message)
            self._processed[action.idempotency_key] = (name, result)
            self._refresh_details()
            return result

    async def _reject(self, name: str, key: str | None, reason: str) -> None:
        await workflow.wait_condition(lambda: self._registered)
        async with self._lock:
            self._rejection_count += 1
            self._rejections.append(
                Rejection(name=name, idempotency_key=key, reason=reason, at=workflow.now())
            )
            del self._rejections[:-MAX_REJECTIONS_KEPT]
            await self._activity(
                "append_audit",
                AuditRecord(
                    ref=self._ref(),
                    event_key=f"rejected:{self._rejection_count}",
                    kind="signal_rejected",
                    detail={"signal": name, "idempotency_key": key, "reason": reason},
                ),
            )
            self._refresh_details()
            workflow.logger.warning("signal %s rejected: %s", name, reason)

    # ---- checks per action (raise ActionRejected; never mutate) --------------------------

    def _require_cadre(self, field: str, cadre_id: str | None) -> None:
        if cadre_id is not None and self._unit.cadre(cadre_id) is None:
            raise ActionRejected(
                f"{field}: unknown cadre {cadre_id!r}; unit {self._unit.unit_id} has "
                + ", ".join(c.cadre_id for c in self._unit.cadres)
            )

    def _check_submit_report(self, a: SubmitReport) -> None:
        self._require_cadre("cadre_id", a.cadre_id)
        subject = a.cadre_id or "team"
        if subject in self._reports and a.revision_reason is None:
            raise ActionRejected(
                f"revision_reason: a {a.kind} report for {subject!r} was already submitted; "
                "give revision_reason to replace it"
            )

    def _check_record_ballots(self, a: RecordBallots) -> None:
        if a.batch_id in self._batches:
            raise ActionRejected(f"batch_id: batch {a.batch_id!r} was already recorded")
        if not self._sheets_mode:
            for i, ballot in enumerate(a.ballots):
                self._require_cadre(f"ballots[{i}].target_id", ballot.target_id)
            return
        if a.ballots:
            raise ActionRejected(
                "ballots: flat ballots without tokens are not accepted; send sheets"
            )
        size_mb = workflow.info().get_current_history_size() / 1_000_000
        limit_mb = self._input.policy.ballots.update_history_limit_mb
        if size_mb > limit_mb:
            raise ActionRejected(
                f"sheets: the unit's history holds {size_mb:.1f} MB, past the policy's "
                f"{limit_mb:g} MB for ballots sent by update; import the remaining ballots "
                "with `kaohe ballots import` (they go to PostgreSQL, not into the history)"
            )

    def _check_sheets(self, a: RecordBallots) -> None:
        if not self._sheets_mode:
            return
        problems = batch_problems(a.sheets, self._unit, self._input.policy.ballots)
        if problems:
            more = len(problems) - MAX_PROBLEMS_SHOWN
            raise ActionRejected(
                "; ".join(problems[:MAX_PROBLEMS_SHOWN])
                + (f"; and {more} more" if more > 0 else "")
            )

    def _check_register_ballot_batch(self, a: RegisterBallotBatch) -> None:
        if a.batch_id in self._batches:
            raise ActionRejected(f"batch_id: batch {a.batch_id!r} was already recorded")

    def _check_close_evaluation(self, a: CloseEvaluation) -> None:
        if not self._batches and a.reason is None:
            raise ActionRejected("reason: no ballots were recorded; give a reason to close anyway")

    def _check_record_talk(self, a: RecordTalk) -> None:
        if a.talk_id in self._talks:
            raise ActionRejected(f"talk_id: talk {a.talk_id!r} was already recorded")
        plan = self._unit.talk_plan
        if plan is not None and a.interviewee_role not in plan:
            raise ActionRejected(
                f"interviewee_role: {a.interviewee_role!r} is not in the talk plan "
                f"({', '.join(plan)})"
            )

    def _check_propose_grades(self, a: ProposeGrades) -> None:
        if self._final is not None:
            raise ActionRejected(
                f"proposal {self._proposal_no} is approved and published; a new proposal "
                "follows only an upheld objection"
            )
        if self._pending is not None:
            raise ActionRejected(
                f"proposal {self._proposal_no} awaits approval; it must be approved or returned"
            )
        for cadre_id in a.cadre_grades:
            self._require_cadre(f"cadre_grades.{cadre_id}", cadre_id)
        if isinstance(a.evaluation, GroupEvaluation):
            for cadre_id in a.evaluation.cadres:
                self._require_cadre(f"evaluation.cadres.{cadre_id}", cadre_id)
        missing = [c.cadre_id for c in self._unit.cadres if c.cadre_id not in a.cadre_grades]
        if missing:
            raise ActionRejected(f"cadre_grades: no grade for {', '.join(missing)}")

    def _check_raise_objection(self, a: RaiseObjection) -> None:
        if self._publicity_ends is None or workflow.now() >= self._publicity_ends:
            raise ActionRejected("objections are taken during publicity (公示) only")
        if a.objection_id in self._objections:
            raise ActionRejected(f"objection_id: {a.objection_id!r} already exists")
        self._require_cadre("cadre_id", a.cadre_id)

    def _check_resolve_objection(self, a: ResolveObjection) -> None:
        item = self._objections.get(a.objection_id)
        if item is None:
            known = ", ".join(self._objections) or "none"
            raise ActionRejected(f"objection_id: unknown objection {a.objection_id!r}; {known}")
        if item.state != "open":
            raise ActionRejected(f"objection_id: {a.objection_id!r} is already {item.state}")

    def _check_pause(self, a: PauseUnit) -> None:
        if self._paused_since is not None:
            raise ActionRejected(f"the unit is paused since {self._paused_since.isoformat()}")
        if not self._deadlines_on:
            raise ActionRejected("the unit started before deadlines existed; it has no clock")

    def _check_resume(self, a: ResumeUnit) -> None:
        if self._paused_since is None:
            raise ActionRejected("the unit is not paused")

    def _check_extend_deadline(self, a: ExtendDeadline) -> None:
        if self._deadline is None:
            raise ActionRejected(f"stage {self._stage.value!r} has no deadline to extend")

    def _check_grading_rules(self, a: ProposeGrades) -> None:
        flagged = {
            f.target_id for f in self._flags if f.code == "incompetent_votes" and f.target_id
        }
        violations = proposal_violations(
            self._unit,
            self._input.year,
            self._input.policy.grading,
            {k: v.value for k, v in a.cadre_grades.items()},
            flagged,
            a.determinations,
        )
        if violations:
            raise ActionRejected("cadre_grades: " + "; ".join(violations))

    def _check_approve_grades(self, a: ApproveGrades) -> None:
        if self._pending is None:
            raise ActionRejected("there is no grade proposal awaiting approval")
        c = self._calibration
        if c is not None and c.proposal_no == self._proposal_no:
            if c.state == "pending":
                raise ActionRejected(
                    f"proposal {c.proposal_no} awaits cross-unit calibration by the campaign"
                )
            if c.state == "held":
                raise ActionRejected(
                    f"proposal {c.proposal_no} is on hold by cross-unit calibration ({c.reason}); "
                    "the department decides with the campaign's decide_calibration"
                )
        if a.actor.id == self._pending.actor.id:
            raise ActionRejected(
                f"actor.id: {a.actor.id!r} proposed these grades and cannot approve them"
            )

    def _check_record_follow_up(self, a: RecordFollowUp) -> None:
        if a.follow_up_id in self._follow_ups:
            raise ActionRejected(f"follow_up_id: {a.follow_up_id!r} already exists")
        self._require_cadre("cadre_id", a.cadre_id)

    def _check_request_review(self, a: RequestReview) -> None:
        self._require_cadre("cadre_id", a.cadre_id)
        if a.actor.role == Role.CADRE and a.actor.id != a.cadre_id:
            raise ActionRejected(
                f"actor.id: cadre {a.actor.id!r} may ask 复核 for itself only, not {a.cadre_id!r}"
            )
        days = self._input.policy.result_use.review_request_days
        if self._notified_at is None or workflow.now() > self._notified_at + timedelta(days=days):
            raise ActionRejected(f"复核 must be requested within {days} days of notification")
        if f"review-{a.cadre_id}" in self._follow_ups:
            raise ActionRejected(f"cadre_id: {a.cadre_id!r} has already requested 复核")

    def _check_close_follow_up(self, a: CloseFollowUp) -> None:
        item = self._follow_ups.get(a.follow_up_id)
        if item is None:
            known = ", ".join(self._follow_ups) or "none"
            raise ActionRejected(
                f"follow_up_id: unknown follow-up {a.follow_up_id!r}; open: {known}"
            )
        if item.closed:
            raise ActionRejected(f"follow_up_id: {a.follow_up_id!r} is already closed")
        role = a.actor.role
        own_feedback = item.kind == FollowUpKind.FEEDBACK and item.cadre_id == a.actor.id
        if role == Role.CADRE and not own_feedback:
            raise ActionRejected(
                f"actor.role: a cadre signs only its own feedback (feedback-{a.actor.id}), "
                f"not {a.follow_up_id!r}"
            )
        if self._result_use_signed and item.kind == FollowUpKind.FEEDBACK:
            signers = _CADRE_SIGNERS if item.cadre_id else _UNIT_SIGNERS
            if role not in signers:
                who = (
                    f"cadre {item.cadre_id} itself (actor.role 'cadre', actor.id {item.cadre_id!r})"
                    if item.cadre_id
                    else "the unit (actor.role 'unit' or 'integrator')"
                )
                raise ActionRejected(
                    f"actor.role: {a.follow_up_id!r} is signed by {who} or recorded by the "
                    f"department, not by {role.value!r}"
                )

    def _check_close_stage(self, a: CloseStage) -> None:
        if a.stage != self._stage:
            raise ActionRejected(
                f"stage: {a.stage.value!r} is not the current stage {self._stage.value!r}"
            )
        if a.stage not in CLOSABLE_EARLY:
            raise ActionRejected(f"stage: {a.stage.value!r} cannot be closed early")
        if a.stage == Stage.RESULT_USE and self._result_use_signed:
            open_ids = [f.follow_up_id for f in self._follow_ups.values() if not f.closed]
            if open_ids:
                raise ActionRejected(
                    f"stage: result_use ends when every follow-up is closed; open: "
                    f"{', '.join(open_ids)} (close_follow_up each)"
                )

    # ---- effects per action (run under the lock, after the checks) -----------------------

    async def _apply_acknowledge_notice(self, a: AcknowledgeNotice) -> str:
        await self._activity(
            "save_acknowledgement", AcknowledgementRecord(ref=self._ref(), action=a)
        )
        self._acks += 1
        await self._advance(None, a.actor)
        return "notice acknowledged"

    async def _apply_submit_report(self, a: SubmitReport) -> str:
        subject = a.cadre_id or "team"
        revision = self._reports.get(subject, 0) + 1
        await self._activity(
            "save_report", ReportRecord(ref=self._ref(), action=a, revision=revision)
        )
        self._reports[subject] = revision
        self._report_times.setdefault(subject, workflow.now())
        missing = self._missing_reports()
        if not missing:
            await self._advance(None, a.actor)
            return f"{a.kind} report stored; all reports are in"
        return f"{a.kind} report stored (revision {revision}); missing: {', '.join(missing)}"

    async def _apply_record_ballots(self, a: RecordBallots) -> str:
        if not self._sheets_mode:
            receipt = await self._activity(
                "save_ballots",
                BallotBatchRecord(ref=self._ref(), action=a),
                result_type=BallotBatchReceipt,
            )
            self._batches[a.batch_id] = receipt.count
            return f"batch {a.batch_id}: {receipt.count} ballots recorded"
        record = BallotSheetsRecord(ref=self._ref(), action=a)
        return await self._take_batch("save_ballot_sheets", record, a)

    async def _apply_register_ballot_batch(self, a: RegisterBallotBatch) -> str:
        return await self._take_batch(
            "verify_ballot_batch", BallotBatchCheck(ref=self._ref(), action=a), a
        )

    async def _take_batch(self, activity: str, record: Any, a: Action) -> str:
        """Stores or verifies a batch, counts its sheets per group, and closes the evaluation
        when every rater group has returned its planned sheets."""
        try:
            receipt: BallotBatchReceipt = await self._activity(
                activity, record, result_type=BallotBatchReceipt
            )
        except (ActivityError, ApplicationError) as err:
            # A scheduled activity's failure arrives as an ActivityError around it; a local
            # activity's as the activity's own ApplicationError, which failed the whole unit
            # when it came by signal (patched: histories that failed so replay as they ran).
            cause = err.cause if isinstance(err, ActivityError) else err
            rejected = isinstance(cause, ApplicationError) and cause.type == "BallotRejected"
            if rejected and (
                isinstance(err, ActivityError) or workflow.patched(BALLOT_REJECTION_PATCH)
            ):
                raise ActionRejected(cause.message) from err
            raise
        self._batches[receipt.batch_id] = receipt.count
        for group, n in receipt.sheets_by_group.items():
            self._group_sheets[group] = self._group_sheets.get(group, 0) + n
        message = (
            f"batch {receipt.batch_id}: {receipt.count} ballots on "
            f"{sum(receipt.sheets_by_group.values())} sheets recorded"
        )
        if groups_complete(self._input.rater_groups, self._group_sheets):
            reason = "every rater group returned its planned sheets"
            await self._finish_evaluation(reason)
            await self._advance(reason, a.actor)
            return f"{message}; {reason}, evaluation closed"
        return message

    async def _apply_close_evaluation(self, a: CloseEvaluation) -> str:
        await self._finish_evaluation(a.reason)
        await self._advance(a.reason, a.actor)
        return f"evaluation closed with {self._ballot_count()} ballots"

    async def _apply_record_talk(self, a: RecordTalk) -> str:
        await self._activity("save_talk", TalkRecord(ref=self._ref(), action=a))
        self._talks.add(a.talk_id)
        self._talk_roles[a.interviewee_role] = self._talk_roles.get(a.interviewee_role, 0) + 1
        if self._talk_plan_met():
            await self._advance(None, a.actor)
            return "talk recorded; the talk plan is complete"
        return f"talk recorded ({len(self._talks)}/{self._unit.talks_planned})"

    async def _apply_propose_grades(self, a: ProposeGrades) -> str:
        self._proposal_no += 1
        await self._activity(
            "save_grade_proposal",
            GradeProposalRecord(ref=self._ref(), proposal_no=self._proposal_no, action=a),
        )
        self._pending = a
        message = f"proposal {self._proposal_no} recorded; sealed until approved and published"
        if self._calibrates() and workflow.patched(CALIBRATION_PATCH):
            await self._request_calibration(a)
            message += f"; cross-unit calibration: {self._calibration_state()}"
        return message

    def _calibrates(self) -> bool:
        """A pooled 优秀 quota is calibrated by the campaign; a unit started on its own has
        none to ask."""
        pooled = self._input.policy.grading.excellent_quota_scope == "category"
        return pooled and workflow.info().parent is not None

    async def _request_calibration(self, a: ProposeGrades) -> None:
        parent = workflow.info().parent
        assert parent is not None
        request = CalibrationRequest(
            unit_id=self._unit.unit_id,
            category=self._unit.category,
            proposal_no=self._proposal_no,
            excellent=sum(g == CadreGrade.EXCELLENT for g in a.cadre_grades.values()),
            graded=sum(g != CadreGrade.UNDETERMINED for g in a.cadre_grades.values()),
        )
        self._calibration = CalibrationView(proposal_no=self._proposal_no, state="pending")
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                "calibrate", request
            )
        except Exception:
            # No campaign to hold the proposal (terminated): approval is not blocked, and
            # the audit table says why.
            self._calibration = CalibrationView(
                proposal_no=self._proposal_no,
                state="unavailable",
                reason=f"campaign {parent.workflow_id} did not take the request",
            )
            await self._audit_calibration(None)

    def _calibration_state(self) -> str:
        c = self._calibration
        return "none" if c is None else c.state + (f" ({c.reason})" if c.reason else "")

    async def _audit_calibration(self, actor: Actor | None) -> None:
        c = self._calibration
        assert c is not None
        await self._append_audit(
            f"calibration:{c.proposal_no}:{c.state}",
            f"calibration_{c.state}",
            actor,
            {"proposal_no": c.proposal_no, "reason": c.reason},
        )

    async def _apply_extend_deadline(self, a: ExtendDeadline) -> str:
        assert self._deadline is not None
        old = self._deadline
        self._deadline = extended(self._input.policy.deadlines, old, a.days)
        if self._deadline > workflow.now():
            self._reminded = False  # a reminder is due again before the new deadline
            self._set_escalation(0)
        workflow.upsert_search_attributes([sa.DEADLINE.value_set(self._deadline)])
        await self._audit_clock(
            a.idempotency_key,
            "deadline_extended",
            a.actor,
            {
                "from": old.isoformat(),
                "to": self._deadline.isoformat(),
                "days": a.days,
                "reason": a.reason,
            },
        )
        return f"deadline of {self._stage.value} moved to {self._deadline.isoformat()}"

    async def _apply_pause(self, a: PauseUnit) -> str:
        self._paused_since = workflow.now()
        await self._audit_clock(a.idempotency_key, "paused", a.actor, {"reason": a.reason})
        return "paused: the deadline clock stands still until resume"

    async def _apply_resume(self, a: ResumeUnit) -> str:
        assert self._paused_since is not None
        since, now = self._paused_since, workflow.now()
        paused = now - since
        self._paused_since = None
        if self._deadline is not None:
            if workflow.patched(RESUME_WORKING_DAYS_PATCH):
                policy = self._input.policy.deadlines
                self._deadline = resumed(policy, self._deadline, since, now)
            else:
                self._deadline += paused
            workflow.upsert_search_attributes([sa.DEADLINE.value_set(self._deadline)])
        await self._audit_clock(
            a.idempotency_key,
            "resumed",
            a.actor,
            {"reason": a.reason, "paused_seconds": paused.total_seconds()},
        )
        where = f"; deadline {self._deadline.isoformat()}" if self._deadline else ""
        return f"resumed after {paused}{where}"

    async def _apply_approve_grades(self, a: ApproveGrades) -> str:
        # Units approved before publicity existed went straight to result use.
        publicity = a.decision == "approve" and workflow.patched(PUBLICITY_PATCH)
        await self._activity(
            "save_grade_decision",
            GradeDecisionRecord(
                ref=self._ref(), proposal_no=self._proposal_no, action=a, publicity=publicity
            ),
        )
        proposal, self._pending = self._pending, None
        if a.decision == "return":
            self._returned += 1
            return f"proposal {self._proposal_no} returned to the assessment group"
        assert proposal is not None
        self._final = proposal
        workflow.upsert_search_attributes([sa.TEAM_GRADE.value_set(proposal.team_grade.value)])
        if publicity:
            self._publicity_ends = self._publicity_end()
            await self._notify(
                f"publicity-{self._proposal_no}",
                [self._unit.contact or self._unit.unit_id],
                f"{self._input.campaign_title}: 考核结果公示",
                f"{self._unit.name} 的考核等次已公示, 至 "
                f"{self._publicity_ends.astimezone(SHANGHAI):%Y-%m-%d %H:%M} 止。",
            )
            return (
                f"proposal {self._proposal_no} approved; grades published for publicity "
                f"until {self._publicity_ends.isoformat()}"
            )
        await self._advance(None, a.actor)
        return f"proposal {self._proposal_no} approved; grades published"

    async def _apply_raise_objection(self, a: RaiseObjection) -> str:
        await self._activity("save_objection", ObjectionRecord(ref=self._ref(), action=a))
        self._objections[a.objection_id] = ObjectionView(
            objection_id=a.objection_id, cadre_id=a.cadre_id, state="open"
        )
        return f"objection {a.objection_id} recorded; the grades are not final until it is resolved"

    async def _apply_resolve_objection(self, a: ResolveObjection) -> str:
        await self._activity("resolve_objection", ObjectionDecision(ref=self._ref(), action=a))
        item = self._objections[a.objection_id]
        if a.decision == "dismiss":
            item.state = "dismissed"
            return f"objection {a.objection_id} dismissed"
        item.state = "upheld"
        # The published grades are withdrawn: the group proposes again, the approver approves
        # again, and a new publicity follows.
        self._final = None
        self._publicity_ends = None
        workflow.upsert_search_attributes([sa.TEAM_GRADE.value_unset()])
        return f"objection {a.objection_id} upheld; grades withdrawn for a new proposal"

    async def _apply_record_follow_up(self, a: RecordFollowUp) -> str:
        await self._activity("save_follow_up", FollowUpRecord(ref=self._ref(), action=a))
        self._follow_ups[a.follow_up_id] = FollowUpView(
            follow_up_id=a.follow_up_id,
            kind=a.kind,
            cadre_id=a.cadre_id,
            owner=a.owner,
            due_date=a.due_date,
        )
        return f"follow-up {a.follow_up_id} recorded"

    async def _apply_request_review(self, a: RequestReview) -> str:
        cadre = self._unit.cadre(a.cadre_id)
        assert cadre is not None
        policy = self._input.policy.result_use
        days = policy.review_answer_days
        follow_up = RecordFollowUp(
            idempotency_key=a.idempotency_key,
            actor=a.actor,
            follow_up_id=f"review-{a.cadre_id}",
            kind=FollowUpKind.REVIEW,
            cadre_id=a.cadre_id,
            owner="department",
            due_date=(workflow.now() + timedelta(days=days)).date(),
            description=f"{cadre.name}: 复核 — {a.reason}"[:200],
        )
        await self._apply_record_follow_up(follow_up)
        if self._result_use_signed:
            answer_by = workflow.now() + (
                timedelta(seconds=policy.review_answer_seconds)
                if policy.review_answer_seconds is not None
                else timedelta(days=days)
            )
            self._background.append(
                asyncio.create_task(self._watch_review(follow_up.follow_up_id, answer_by))
            )
        return f"复核 requested; the department answers by {follow_up.due_date}"

    async def _watch_review(self, follow_up_id: str, answer_by: dt.datetime) -> None:
        """A 复核 not answered by its date goes to the organization department, once."""
        answered = lambda: self._follow_ups[follow_up_id].closed or self._stage in TERMINAL  # noqa: E731
        try:  # a wait_condition timeout must not fail the task (sdk-python #792)
            await workflow.wait_condition(
                answered, timeout=max((answer_by - workflow.now()).total_seconds(), 0.001)
            )
            return
        except TimeoutError:
            pass
        async with self._lock:
            if answered():
                return
            self._follow_ups[follow_up_id].overdue = True
            cadre_id = self._follow_ups[follow_up_id].cadre_id
            due = answer_by.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
            await self._notify(
                f"overdue-{follow_up_id}",
                [self._input.department],
                f"{self._input.campaign_title}: 复核逾期未答复",
                f"{self._unit.name}: 干部 {cadre_id} 的复核申请应于 {due} 前答复, 尚未答复。",
            )
            await self._append_audit(
                f"overdue:{follow_up_id}",
                "review_overdue",
                None,
                {
                    "follow_up_id": follow_up_id,
                    "answer_by": answer_by.isoformat(),
                    "notified": self._input.department,
                },
            )
            self._refresh_details()

    async def _apply_close_follow_up(self, a: CloseFollowUp) -> str:
        await self._activity("close_follow_up", FollowUpClosure(ref=self._ref(), action=a))
        self._follow_ups[a.follow_up_id].closed = True
        self._follow_ups[a.follow_up_id].closed_by = a.actor.id
        open_ids = [f.follow_up_id for f in self._follow_ups.values() if not f.closed]
        if not open_ids:
            await self._advance(None, a.actor)
            return f"follow-up {a.follow_up_id} closed; every follow-up is closed"
        return f"follow-up {a.follow_up_id} closed; open: {', '.join(open_ids)}"

    async def _apply_close_stage(self, a: CloseStage) -> str:
        closed = self._stage
        if closed == Stage.EVALUATION:
            await self._finish_evaluation(a.reason)
        await self._advance(a.reason, a.actor)
        return f"stage {closed.value} closed early: {a.reason}"

    # ---- stage machinery -----------------------------------------------------------------

    def _publicity_end(self) -> dt.datetime:
        grading = self._input.policy.grading
        if grading.publicity_seconds is not None:
            return workflow.now() + timedelta(seconds=grading.publicity_seconds)
        return publicity_end(workflow.now(), grading.publicity_working_days)

    def _open_objections(self) -> bool:
        return any(o.state == "open" for o in self._objections.values())

    async def _follow_publicity(self) -> None:
        """Until the unit ends: when a publicity period is over and no objection is open, the
        published grades become final and the unit moves to result use."""
        while self._stage not in TERMINAL:
            ends = self._publicity_ends
            if ends is None:
                await workflow.wait_condition(
                    lambda: self._stage in TERMINAL or self._publicity_ends is not None
                )
                continue
            remaining = (ends - workflow.now()).total_seconds()
            if remaining > 0:
                try:  # a wait_condition timeout must not fail the task (sdk-python #792)
                    await workflow.wait_condition(
                        lambda ends=ends: self._publicity_ends != ends, timeout=remaining
                    )
                except TimeoutError:
                    pass
                continue
            await workflow.wait_condition(
                lambda ends=ends: self._publicity_ends != ends or not self._open_objections()
            )
            async with self._lock:
                if self._publicity_ends != ends or self._open_objections():
                    continue  # an objection was upheld, or raised, while we waited
                await self._activity("finalize_grades", self._ref())
                self._publicity_ends = None
                self._grades_final = True
                await self._advance("publicity ended with no open objection", None)

    @property
    def _deadlines_on(self) -> bool:
        return self._deadline_visit > 0

    def _clock(self) -> tuple[int, dt.datetime | None, dt.datetime | None, int, bool]:
        """What a pending deadline step depends on: it is re-planned when this changes."""
        return (
            len(self._history),
            self._deadline,
            self._paused_since,
            self._escalation,
            self._reminded,
        )

    async def _watch_deadlines(self) -> None:
        """The current stage's deadline as an updatable timer (temporalio/samples-python
        `updatable_timer`): a reminder before it, escalation level 1 when it passes and level
        2 later; extending or pausing moves it, a new stage starts a new one."""
        policy = self._input.policy.deadlines
        while self._stage not in TERMINAL:
            if self._deadline_visit != len(self._history):
                self._start_clock()
            clock = self._clock()
            changed = lambda clock=clock: self._stage in TERMINAL or self._clock() != clock  # noqa: E731
            step = None
            if self._deadline is not None and self._paused_since is None:
                step = next_step(policy, self._deadline, self._reminded, self._escalation)
            if step is None:
                await workflow.wait_condition(changed)
                continue
            remaining = (step[1] - workflow.now()).total_seconds()
            if remaining > 0:
                try:  # a wait_condition timeout must not fail the task (sdk-python #792)
                    await workflow.wait_condition(changed, timeout=remaining)
                except TimeoutError:
                    pass
                continue
            async with self._lock:
                if not changed():
                    await self._take_step(step[0])
        self._set_escalation(0)  # an ended unit is not stalled

    def _start_clock(self) -> None:
        self._deadline_visit = len(self._history)
        self._deadline = stage_deadline(
            self._input.policy.deadlines, self._stage, self._history[-1].entered_at
        )
        self._reminded = False
        self._deadline_steps = []
        self._set_escalation(0)
        if self._deadline is not None:
            workflow.upsert_search_attributes([sa.DEADLINE.value_set(self._deadline)])
        self._refresh_details()

    def _set_escalation(self, level: int) -> None:
        if level != self._escalation:
            self._escalation = level
            workflow.upsert_search_attributes(
                [sa.STALLED.value_set(level > 0), sa.ESCALATION.value_set(level)]
            )

    async def _take_step(self, step: Step) -> None:
        assert self._deadline is not None
        visit, stage = len(self._history), self._stage.value
        deadline = self._deadline.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        if step == "reminder":
            self._reminded = True
            recipient, subject = self._responsible(), f"{stage} 截止提醒"
            body = f"{self._unit.name}: {stage} 阶段将于 {deadline} 截止。"
        else:
            self._set_escalation(1 if step == "level1" else 2)
            recipient = self._input.group_leader if step == "level1" else self._input.department
            subject = f"{stage} 逾期 (督办 {self._escalation} 级)"
            body = f"{self._unit.name}: {stage} 阶段已于 {deadline} 截止, 尚未完成。"
        key = f"{step}-{visit}-{int(self._deadline.timestamp())}"
        label = "reminder" if step == "reminder" else f"escalation level {self._escalation}"
        at = workflow.now().astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        self._deadline_steps.append(f"{label} {at} → {recipient}")
        await self._notify(key, [recipient], f"{self._input.campaign_title}: {subject}", body)
        await self._audit_clock(
            key,
            "deadline_reminder" if step == "reminder" else "escalation",
            None,
            {
                "step": step,
                "level": self._escalation,
                "deadline": self._deadline.isoformat(),
                "notified": recipient,
            },
        )
        self._refresh_details()

    def _responsible(self) -> str:
        """Who a reminder goes to: the party whose work the stage waits for."""
        if self._stage == Stage.TALKS:
            return self._input.assessment_group
        if self._stage == Stage.GRADING:
            return self._input.approver if self._pending else self._input.assessment_group
        return self._unit.contact or self._unit.unit_id

    async def _audit_clock(
        self, key: str, kind: str, actor: Actor | None, detail: dict[str, Any]
    ) -> None:
        await self._append_audit(f"clock:{key}", kind, actor, detail)

    async def _append_audit(
        self, event_key: str, kind: str, actor: Actor | None, detail: dict[str, Any]
    ) -> None:
        """An audit row of its own (once per event_key), beside those the storage
        activities write with their changes."""
        await self._activity(
            "append_audit",
            AuditRecord(
                ref=self._ref(), event_key=event_key, kind=kind, actor=actor, detail=detail
            ),
        )

    async def _advance(self, reason: str | None, actor: Actor | None) -> None:
        await self._move_to(NEXT[self._stage], reason, actor)
        if self._stage == Stage.RESULT_USE:
            await self._enter_result_use()

    async def _move_to(self, stage: Stage, reason: str | None, actor: Actor | None) -> None:
        """Leaves the current stage for `stage`: the history, the stage projection and audit
        row, the campaign and the search attribute."""
        previous, now = self._stage, workflow.now()
        self._history[-1].left_at = now
        self._history[-1].closed_early_reason = reason
        self._stage = stage
        self._history.append(StageVisit(stage=stage, entered_at=now))
        await self._record_transition(previous, stage, reason, actor)
        workflow.upsert_search_attributes([sa.STAGE.value_set(stage.value)])

    async def _cancelled(self) -> None:
        """Cancelled (by the department, or with its campaign): the stage projection, the
        audit table and the campaign learn it before the workflow ends as cancelled."""
        async with self._lock:
            await self._move_to(Stage.CANCELLED, "cancelled", None)
            self._set_escalation(0)
            self._refresh_details()
        await asyncio.gather(*self._background)  # the campaign's signal, notifications

    async def _record_transition(
        self, previous: Stage | None, stage: Stage, reason: str | None, actor: Actor | None
    ) -> None:
        self._seq += 1
        await self._activity(
            "record_transition",
            TransitionRecord(
                ref=self._ref(),
                seq=self._seq,
                from_stage=previous,
                to_stage=stage,
                reason=reason,
                actor=actor,
            ),
        )
        self._tell_campaign()

    def _tell_campaign(self) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        progress = UnitProgress(unit_id=self._unit.unit_id, stage=self._stage, seq=self._seq)

        async def send() -> None:
            try:
                await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                    "unit_progress", progress
                )
            except Exception:  # a closed campaign must not hold up its units
                workflow.logger.info("campaign %s did not take progress", parent.workflow_id)

        # Fire and forget, so an update's answer does not wait for the campaign.
        self._background.append(asyncio.create_task(send()))

    async def _finish_evaluation(self, reason: str | None) -> None:
        if self._sheets_mode:
            counts = await self._activity("count_ballots", self._ref(), result_type=BallotCounts)
            self._tallies, _, self._flags = tally_ballots(
                counts, self._input.rater_groups, self._input.policy.flags
            )
        else:
            self._tallies = await self._activity(
                "compute_tallies", self._ref(), result_type=list[TargetTally]
            )
        self._evaluation_closed = True
        self._evaluation_close_reason = reason

    async def _enter_result_use(self) -> None:
        assert self._final is not None
        self._result_use_signed = workflow.patched(RESULT_USE_SIGNED_PATCH)
        self._notified_at = workflow.now()
        previous: dict[str, str] | None = None
        if workflow.patched(RESULT_USE_PATCH):
            previous = await self._activity(
                "previous_grades",
                PreviousGradesQuery(
                    ref=self._ref(),
                    year=self._input.year - 1,
                    cadre_ids=[c.cadre_id for c in self._unit.cadres],
                ),
                result_type=dict[str, str],
            )
        follow_ups = derive_follow_ups(
            self._unit,
            self._final.team_grade,
            self._final.cadre_grades,
            workflow.now().date(),
            previous,
            self._input.policy.result_use,
            self._flags,
        )
        await self._activity(
            "create_follow_ups",
            FollowUpsRecord(
                ref=self._ref(),
                team_grade=self._final.team_grade,
                cadre_grades=self._final.cadre_grades,
                follow_ups=follow_ups,
            ),
        )
        for f in follow_ups:
            self._follow_ups[f.follow_up_id] = FollowUpView(
                follow_up_id=f.follow_up_id,
                kind=f.kind,
                cadre_id=f.cadre_id,
                owner=f.owner,
                due_date=f.due_date,
            )
        await self._notify(
            "feedback",
            [self._unit.contact or self._unit.unit_id, *(c.cadre_id for c in self._unit.cadres)],
            f"{self._input.campaign_title}: 考核结果反馈",
            f"{self._unit.name} 的考核结果已公布, 请签收。",
        )

    # ---- helpers -------------------------------------------------------------------------

    def _ref(self) -> UnitRef:
        return UnitRef(
            workflow_id=workflow.info().workflow_id,
            campaign_id=self._input.campaign_id,
            unit_id=self._unit.unit_id,
            stage=self._stage,
        )

    async def _activity(self, name: str, arg: Any, result_type: Any = None) -> Any:
        # Called by name so no I/O module is imported into workflow code.
        if workflow.patched(LOCAL_STORAGE_PATCH):
            # Local activities: short, idempotent database writes in this worker, with no
            # round trip through the server, and their inputs (ballots, talk content) are
            # not copied into history.
            return await workflow.execute_local_activity(
                name,
                arg,
                result_type=result_type,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
        # Units started before the patch keep their (server-scheduled) activities.
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
        )

    async def _notify(self, step: str, recipients: list[str], subject: str, body: str) -> None:
        n = Notification(
            ref=self._ref(),
            idempotency_key=f"{workflow.info().workflow_id}:{step}",
            recipients=recipients,
            subject=subject,
            body=body,
        )
        if not workflow.patched(NOTIFY_CHANNELS_PATCH):
            await self._activity("notify", n)  # older units: the log, awaited
            return
        n.deliveries = self._deliveries(recipients)
        scheduled = workflow.patched(NOTIFY_ACTIVITY_PATCH)

        async def send() -> None:
            outcome: NotifyOutcome
            if scheduled:
                outcome = await workflow.execute_activity(
                    "notify",
                    n,
                    result_type=NotifyOutcome,
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    heartbeat_timeout=NOTIFY_HEARTBEAT_TIMEOUT,  # a dead worker's, retried soon
                    retry_policy=ACTIVITY_RETRY,
                )
            else:
                outcome = await self._activity("notify", n, result_type=NotifyOutcome)
            if outcome.dead:
                self._dead_letters += [f"{step}: {d}" for d in outcome.dead]
                self._refresh_details()

        # In the background: a slow or failing receiver holds up neither the action that
        # notifies nor the unit; run() waits for these before it ends.
        self._background.append(asyncio.create_task(send()))

    def _deliveries(self, recipients: list[str]) -> list[Delivery]:
        """Each recipient's channels from the roster's contacts; the log for one not listed."""
        out: list[Delivery] = []
        for r in recipients:
            contact = self._input.contacts.get(r)
            if contact is not None and contact.webhook:
                out.append(Delivery(recipient=r, channel="webhook", address=contact.webhook))
            if contact is not None and contact.email:
                out.append(Delivery(recipient=r, channel="email", address=contact.email))
            if contact is None or not (contact.webhook or contact.email):
                out.append(Delivery(recipient=r, channel="log"))
        return out

    def _suggested_grades(self) -> dict[str, str]:
        weights = {g.group_id: g.weight for g in self._input.rater_groups}
        out: dict[str, str] = {}
        for tally in self._tallies:
            if tally.target_kind == "cadre" and tally.target_id and tally.by_group:
                found = suggested_grade(tally.by_group, weights, self._input.policy.grading)
                if found is not None:
                    out[tally.target_id] = found[0]
        return out

    def _participation(self) -> list[GroupParticipation]:
        if not self._sheets_mode:
            return []
        return group_participation(self._input.rater_groups, self._group_sheets)

    def _talk_plan_met(self) -> bool:
        plan = self._unit.talk_plan
        if plan is None:
            return len(self._talks) >= self._unit.talks_planned
        return all(self._talk_roles.get(role, 0) >= n for role, n in plan.items())

    def _reports_due(self) -> dt.datetime | None:
        due = self._input.policy.reports_due
        if due is None:
            return None
        return dt.datetime.combine(due + dt.timedelta(days=1), dt.time(), tzinfo=SHANGHAI)

    def _late_reports(self) -> list[str]:
        due = self._reports_due()
        if due is None:
            return []
        subjects = ["team", *(c.cadre_id for c in self._unit.cadres)]
        now = workflow.now()
        return [
            s
            for s in subjects
            if (s in self._report_times and self._report_times[s] > due)
            or (s not in self._report_times and now > due)
        ]

    def _missing_reports(self) -> list[str]:
        missing = [] if "team" in self._reports else ["team"]
        return missing + [c.cadre_id for c in self._unit.cadres if c.cadre_id not in self._reports]

    def _ballot_count(self) -> int:
        return sum(self._batches.values())

    def _status(self) -> UnitStatus:
        final, grading = self._final, self._input.policy.grading
        cadre_reports = [c for c in self._unit.cadres if c.cadre_id in self._reports]
        published = self._final is not None
        return UnitStatus(
            workflow_id=workflow.info().workflow_id,
            campaign_id=self._input.campaign_id,
            year=self._input.year,
            unit_id=self._unit.unit_id,
            unit_name=self._unit.name,
            stage=self._stage,
            history=self._history,
            acknowledgements=self._acks,
            reports=ReportProgress(
                team_summary="team" in self._reports,
                cadres_submitted=len(cadre_reports),
                cadres_total=len(self._unit.cadres),
                missing=self._missing_reports(),
                revisions=sum(r - 1 for r in self._reports.values()),
                due=self._reports_due(),
                late=self._late_reports(),
            ),
            evaluation=EvaluationProgress(
                batches=len(self._batches),
                ballots=self._ballot_count(),
                sheets=sum(self._group_sheets.values()),
                closed=self._evaluation_closed,
                close_reason=self._evaluation_close_reason,
                participation=self._participation(),
                tallies=self._tallies,
                flags=self._flags,
            ),
            talks=TalkProgress(
                recorded=len(self._talks),
                planned=self._unit.talks_planned,
                by_role={
                    role: (self._talk_roles.get(role, 0), n)
                    for role, n in (self._unit.talk_plan or {}).items()
                },
            ),
            grading=GradingProgress(
                suggested=self._suggested_grades(),
                proposals=self._proposal_no,
                pending_proposal=self._pending is not None,
                returned=self._returned,
                approved=published,
                published=published,
                publicity_ends=self._publicity_ends,
                final=self._grades_final or (published and self._stage != Stage.GRADING),
                objections=list(self._objections.values()),
                calibration=self._calibration,
                team_grade=final.team_grade if final else None,
                cadre_grades=dict(final.cadre_grades) if final else None,
                team_grade_label=grading.team_label(final.team_grade) if final else None,
                cadre_grade_labels=(
                    {c: grading.cadre_label(g) for c, g in final.cadre_grades.items()}
                    if final
                    else None
                ),
            ),
            follow_ups=FollowUpProgress(
                open=sum(not f.closed for f in self._follow_ups.values()),
                closed=sum(f.closed for f in self._follow_ups.values()),
                items=list(self._follow_ups.values()),
            ),
            rejected_signals=self._rejections,
            deadline=self._deadline,
            stalled=self._escalation > 0,
            escalation_level=self._escalation,
            paused_since=self._paused_since,
            dead_letters=self._dead_letters,
            deadline_steps=self._deadline_steps,
        )

    def _refresh_details(self) -> None:
        workflow.set_current_details(unit_details(self._status()))
