"""How a message becomes an action: one update (with its validator) and one signal per row of
domain/actions.py, made by `action_handlers`, so that the workflow declares each action in
one line that names its row and its effect.

Payloads are taken raw (RawValue: the JSON bytes as sent) and parsed here with the action's
model, once, straight from JSON: a malformed one is rejected naming its fields, where the
SDK's decoder would only say "Failed decoding arguments", and a 500-sheet batch is not
decoded twice. Handlers run one at a time under the unit's lock, as in samples-python
`safe_message_handlers`, and check again under it, since the state may have moved since
validation. A signal is validated in its handler; a bad one is recorded as rejected.

Nothing a caller sends raises outside this error handling: a payload over the size or depth
limits is refused before any parser recurses into it (workflows/payloads.py), whatever
parsing a signal's payload raises becomes its recorded rejection, and a storage write that
fails (io.StorageFailed) refuses the action, as retryable when it was transient. Every
rejection's `retryable` comes from the one rule in payloads.rejection_error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from domain.actions import ActionRejected, ActionRule, Moment
    from domain.state import Processed
    from schemas.common import Action
    from schemas.limits import shown
    from schemas.messages import ActionResult
    from schemas.status import Rejection
    from schemas.workflow_io import AuditRecord
    from workflows.payloads import idempotency_key_of, parse_action, rejection_error
    from workflows.unit import continuing, io
    from workflows.unit.context import Unit

Effect = Callable[[Unit, Any], Awaitable[str]]
MAX_REJECTIONS_KEPT = 50
MAX_REASON_CHARS = 2000


def _moment() -> Moment:
    return Moment(now=workflow.now(), history_bytes=workflow.info().get_current_history_size())


def _parse(u: Unit, rule: ActionRule, payload: RawValue) -> Action:
    context = {"grade_names": u.input.policy.grading.grade_names()}
    return parse_action(rule.model, payload, context)


def _duplicate(u: Unit, rule: ActionRule, action: Action) -> ActionResult | None:
    seen = u.state.processed.get(action.idempotency_key)
    if seen is None:
        return None
    if seen.name != rule.name:
        raise ActionRejected(
            f"idempotency_key {action.idempotency_key!r} was already used for {seen.name}"
        )
    return seen.result.model_copy(update={"duplicate": True})


def validate(u: Unit, rule: ActionRule, payload: RawValue) -> None:
    try:
        continuing.check_history()
        action = _parse(u, rule, payload)
        if _duplicate(u, rule, action) is None:
            rule.admit(u.input, u.state, action, _moment())
    except ActionRejected as err:
        raise rejection_error(err) from None
    except Exception as err:  # whatever else the payload makes parsing raise
        raise rejection_error(ActionRejected(_refusal(err))) from None
    # The handler takes this parse instead of its own. Only a cache: on replay validators
    # do not run and the handler parses the same bytes.
    u.validated = (rule.name, payload.payload.data, action)


def _validated(u: Unit, rule: ActionRule, payload: RawValue) -> Action:
    validated, u.validated = u.validated, None
    if validated is not None and validated[:2] == (rule.name, payload.payload.data):
        return validated[2]
    return _parse(u, rule, payload)


async def perform(
    u: Unit, rule: ActionRule, effect: Effect, action: Action, *, payload_checked: bool
) -> ActionResult:
    await workflow.wait_condition(lambda: u.registered)
    async with u.lock:
        duplicate = _duplicate(u, rule, action)
        if duplicate is not None:
            return duplicate
        rule.admit(u.input, u.state, action, _moment(), payload_checked=payload_checked)
        try:
            message = await effect(u, action)
        except io.StorageFailed as err:
            u.storage_failed(err, rule.name)
            raise
        result = ActionResult(accepted=True, stage=u.state.stage, message=message)
        u.state.remember(action.idempotency_key, Processed(name=rule.name, result=result))
        u.refresh_details()
        return result


async def reject(
    u: Unit, name: str, key: str | None, reason: str, *, retryable: bool = False
) -> None:
    """A signal refused: kept in status (the latest few) and in the audit table. `key` comes
    from payloads.idempotency_key_of (safe to store); the reason is shown safe too."""
    reason = shown(reason, MAX_REASON_CHARS)
    await workflow.wait_condition(lambda: u.registered)
    async with u.lock:
        s = u.state
        s.rejection_count += 1
        s.rejections.append(
            Rejection(
                name=name,
                idempotency_key=key,
                reason=reason,
                retryable=retryable,
                at=workflow.now(),
            )
        )
        del s.rejections[:-MAX_REJECTIONS_KEPT]
        detail = {"signal": name, "idempotency_key": key, "reason": reason}
        try:
            await io.store(
                io.storage.append_audit,
                AuditRecord(
                    ref=u.ref(),
                    event_key=f"rejected:{s.rejection_count}",
                    kind="signal_rejected",
                    detail={**detail, "retryable": retryable},
                ),
            )
        except io.StorageFailed as err:
            u.storage_failed(err, f"{name} (its rejection's audit row)")
        u.refresh_details()
        workflow.logger.warning("signal %s rejected: %s", name, reason)


def _refusal(err: Exception) -> str:
    """What a signal's rejection says of an exception its payload's parse raised."""
    if isinstance(err, ActionRejected):
        return str(err)
    return f"(payload): refused, reading it raised {type(err).__name__}"


def action_handlers(rule: ActionRule, effect: Effect) -> tuple[Any, Any]:
    """The update (with its validator) and the signal of one action, for a workflow class
    whose instances hold their Unit as `unit`. `self` stays unannotated: the SDK takes an
    annotated first parameter for a payload."""

    async def update(self, payload: RawValue) -> ActionResult:
        try:
            action = _validated(self.unit, rule, payload)
            return await perform(self.unit, rule, effect, action, payload_checked=True)
        except ActionRejected as err:
            # The state moved between validation and handling, or storage failed: fail the
            # update, not the task.
            raise rejection_error(err) from err

    def validator(self, payload: RawValue) -> None:
        validate(self.unit, rule, payload)

    async def signal(self, payload: RawValue) -> None:
        key = idempotency_key_of(payload)  # never raises
        try:
            continuing.check_history()
        except ActionRejected as err:  # not even its rejection's row: only its count
            self.unit.state.rejection_count += 1
            workflow.logger.warning("signal %s refused: %s", rule.name, err)
            return
        try:
            action = _parse(self.unit, rule, payload)
        except Exception as err:  # the payload's doing, whatever it is: its rejection
            await reject(self.unit, rule.name, key, _refusal(err))
            return
        try:
            await perform(self.unit, rule, effect, action, payload_checked=False)
        except ActionRejected as err:
            await reject(self.unit, rule.name, key, str(err), retryable=err.retryable)

    update.__name__, signal.__name__ = rule.name, f"{rule.name}_signal"
    update.__doc__ = f"Takes a {rule.model.__name__}."
    handler = workflow.update(name=rule.name)(update)
    handler.validator(validator)
    return handler, workflow.signal(name=rule.name)(signal)
