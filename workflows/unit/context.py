"""The running unit as its effects see it: input, the one state model, the lock, and the
moves every stage shares (transitions, audit rows, notifications, the campaign's progress,
search attributes and details)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from temporalio import workflow
from temporalio.exceptions import CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from domain.calendar import WorkCalendar
    from domain.progress import unit_status
    from domain.stages import NEXT
    from domain.state import UnitState
    from schemas import search_attributes as sa
    from schemas.common import Actor, Stage
    from schemas.status import StageVisit, StorageFailure, UnitStatus
    from schemas.workflow_io import (
        AuditRecord,
        Delivery,
        Notification,
        TransitionRecord,
        UnitInput,
        UnitProgress,
        UnitRef,
    )
    from workflows.details import unit_details
    from workflows.unit import io

EnterHook = Callable[["Unit"], Awaitable[None]]
MAX_STORAGE_FAILURES_KEPT = 20


class Unit:
    def __init__(self, input: UnitInput, state: UnitState) -> None:
        self.input = input
        self.state = state
        self.lock = asyncio.Lock()
        # Updates can be delivered in the same activation as the start, before run() has
        # registered the unit: handlers wait for this.
        self.registered = False
        self.background: list[asyncio.Task[None]] = []
        self.on_enter: dict[Stage, EnterHook] = {}  # stage effects on arrival
        self.validated: tuple[str, bytes, Any] | None = None  # see handlers.validate
        # The years the unit started with (schemas.policy.YearSchedule), never the installed
        # package: its dates do not move when chinese-calendar is upgraded.
        self.calendar = WorkCalendar.of_policy(input.policy.calendar)

    def ref(self) -> UnitRef:
        return UnitRef(
            workflow_id=workflow.info().workflow_id,
            campaign_id=self.input.campaign_id,
            unit_id=self.input.unit.unit_id,
            stage=self.state.stage,
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """In the background; run() waits for these before the unit ends."""
        self.background.append(asyncio.create_task(coro))

    # ---- transitions -----------------------------------------------------------------------

    async def advance(self, reason: str | None, actor: Actor | None) -> None:
        await self.move_to(NEXT[self.state.stage], reason, actor)
        hook = self.on_enter.get(self.state.stage)
        if hook is not None:
            await hook(self)

    async def move_to(self, stage: Stage, reason: str | None, actor: Actor | None) -> None:
        """Leaves the current stage for `stage`: the history, the stage projection and audit
        row, the campaign and the search attribute."""
        s, now = self.state, workflow.now()
        previous = s.stage
        s.history[-1].left_at = now
        s.history[-1].closed_early_reason = reason
        s.stage = stage
        s.history.append(StageVisit(stage=stage, entered_at=now))
        await self.record_transition(previous, stage, reason, actor)
        workflow.upsert_search_attributes([sa.STAGE.value_set(stage.value)])

    async def record_transition(
        self, previous: Stage | None, stage: Stage, reason: str | None, actor: Actor | None
    ) -> None:
        """The transition's row and the stage projection. The unit has moved already: if
        storage fails, the failure is recorded and the unit goes on (status shows it)."""
        self.state.seq += 1
        try:
            await io.store(
                io.storage.record_transition,
                TransitionRecord(
                    ref=self.ref(),
                    seq=self.state.seq,
                    from_stage=previous,
                    to_stage=stage,
                    reason=reason,
                    actor=actor,
                ),
            )
        except io.StorageFailed as err:
            self.storage_failed(err, f"transition to {stage.value}")
        self._tell_campaign()

    def _tell_campaign(self) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        progress = UnitProgress(
            unit_id=self.input.unit.unit_id, stage=self.state.stage, seq=self.state.seq
        )

        async def send() -> None:
            try:
                await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                    "unit_progress", progress
                )
            except Exception:  # a closed campaign must not hold up its units
                workflow.logger.info("campaign %s did not take progress", parent.workflow_id)

        # Fire and forget, so an update's answer does not wait for the campaign.
        self.spawn(send())

    # ---- records ---------------------------------------------------------------------------

    async def audit(
        self, event_key: str, kind: str, actor: Actor | None, detail: dict[str, Any]
    ) -> None:
        """An audit row of its own (once per event_key), beside those the storage
        activities write with their changes. If storage fails, the failure is recorded."""
        try:
            await io.store(
                io.storage.append_audit,
                AuditRecord(
                    ref=self.ref(), event_key=event_key, kind=kind, actor=actor, detail=detail
                ),
            )
        except io.StorageFailed as err:
            self.storage_failed(err, f"audit row {kind}")

    def storage_failed(self, err: io.StorageFailed, during: str) -> None:
        """A storage write given up on: kept in status (the latest few), an audit row and a
        notification to the department, both in the background (outside the lock, which the
        caller holds: the unit goes on taking other actions)."""
        s = self.state
        s.storage_failure_count += 1
        n = s.storage_failure_count
        failure = StorageFailure(
            during=during,
            activity=err.activity,
            retryable=err.retryable,
            reason=str(err),
            at=workflow.now(),
        )
        s.storage_failures.append(failure)
        del s.storage_failures[:-MAX_STORAGE_FAILURES_KEPT]
        workflow.logger.error("storage failed during %s: %s", during, err)
        unit = self.input.unit
        kind = "暂时不可用, 已停止重试" if err.retryable else "拒绝写入"
        self.notify(
            f"storage-failed-{n}",
            [self.input.department],
            f"{self.input.campaign_title}: {unit.name} 数据库{kind}",
            f"{unit.name}: {during} — {err}",
        )

        async def record() -> None:
            try:
                await io.store(
                    io.storage.append_audit,
                    AuditRecord(
                        ref=self.ref(),
                        event_key=f"storage_failed:{n}",
                        kind="storage_failed",
                        detail=failure.model_dump(mode="json"),
                    ),
                )
            except io.StorageFailed:
                workflow.logger.error("storage failure %d has no audit row", n)
            finally:
                self.refresh_details()

        self.spawn(record())
        self.refresh_details()

    def notify(self, step: str, recipients: list[str], subject: str, body: str) -> None:
        """In the background: a slow or failing receiver holds up neither the action that
        notifies nor the unit."""
        n = Notification(
            ref=self.ref(),
            idempotency_key=f"{workflow.info().workflow_id}:{step}",
            recipients=recipients,
            subject=subject,
            body=body,
            deliveries=self._deliveries(recipients),
        )

        async def send() -> None:
            try:
                outcome = await io.send_notification(n)
            except CancelledError:
                raise
            except FailureError as err:  # a notification refused for good: a dead letter
                self.state.dead_letters.append(f"{step}: {err}")
                self.refresh_details()
                return
            if outcome.dead:
                self.state.dead_letters += [f"{step}: {d}" for d in outcome.dead]
                self.refresh_details()

        self.spawn(send())

    def _deliveries(self, recipients: list[str]) -> list[Delivery]:
        """Each recipient's channels from the roster's contacts; the log for one not listed."""
        out: list[Delivery] = []
        for r in recipients:
            contact = self.input.contacts.get(r)
            if contact is not None and contact.webhook:
                out.append(Delivery(recipient=r, channel="webhook", address=contact.webhook))
            if contact is not None and contact.email:
                out.append(Delivery(recipient=r, channel="email", address=contact.email))
            if contact is None or not (contact.webhook or contact.email):
                out.append(Delivery(recipient=r, channel="log"))
        return out

    # ---- what shows ------------------------------------------------------------------------

    def set_escalation(self, level: int) -> None:
        clock = self.state.clock
        if level != clock.escalation:
            clock.escalation = level
            workflow.upsert_search_attributes(
                [sa.STALLED.value_set(level > 0), sa.ESCALATION.value_set(level)]
            )

    def status(self) -> UnitStatus:
        return unit_status(workflow.info().workflow_id, self.input, self.state, workflow.now())

    def refresh_details(self) -> None:
        workflow.set_current_details(unit_details(self.status()))
