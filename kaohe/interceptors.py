"""`Assertions`, the interceptor that carries and checks assertions (kaohe/assertions.py).

As a client interceptor it signs every update and signal a kaohe client sends: kaohe's API,
and the operators' tools that hold the workers' keys. A worker built on such a client uses it
as a worker interceptor too: in every workflow it refuses an update (in its validator: it
never reaches history) or a signal (dropped before its handler) without a valid assertion,
and signs the workflows' own signals to each other. A refusal is logged, and `on_refused`
(set by the worker) writes its audit row outside the sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Interceptor as ClientInterceptor,
)
from temporalio.client import (
    OutboundInterceptor as ClientOutbound,
)
from temporalio.client import (
    SignalWorkflowInput,
    StartWorkflowUpdateInput,
    WorkflowUpdateHandle,
)
from temporalio.common import RawValue
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    SignalExternalWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.db import permanent
from kaohe.assertions import (
    HEADER,
    AssertionRefused,
    Keyring,
    digest,
    payloads_of,
    sign,
    verify,
)
from schemas.limits import json_shape_problem, shown

# (workflow id, message, reason, the actor the payload claimed, search attributes)
Refusal = dict[str, Any]
OnRefused = Callable[[Refusal], None]


def claimed_actor(payloads: list[Payload]) -> dict[str, Any] | None:
    """The actor a payload names (unauthenticated until the assertion says so): its id and
    role, shown safe and short (they go to the audit table), from a payload within the
    limits. Never raises."""
    try:
        if not payloads or json_shape_problem(payloads[0].data) is not None:
            return None
        body = json.loads(payloads[0].data)
    except (ValueError, RecursionError, TypeError):
        return None
    actor = body.get("actor") if isinstance(body, dict) else None
    if not isinstance(actor, dict):
        return None
    return {k: shown(str(actor.get(k)), 200) for k in ("id", "role") if k in actor}


class Assertions(ClientInterceptor, Interceptor):
    def __init__(self, keyring: Keyring, converter: PayloadConverter) -> None:
        self.keyring = keyring
        self.converter = converter
        self.on_refused: OnRefused | None = None

    def intercept_client(self, next: ClientOutbound) -> ClientOutbound:
        return _SigningOutbound(next, self)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        root = self

        class Inbound(_CheckingInbound):
            check = root

        return Inbound


class _SigningOutbound(ClientOutbound):
    def __init__(self, next: ClientOutbound, root: Assertions) -> None:
        super().__init__(next)
        self._root = root

    def _signed(self, workflow_id: str, message: str, args: Any, headers: Any) -> tuple[Any, Any]:
        payloads = payloads_of(self._root.converter, args)
        header = sign(
            self._root.keyring,
            workflow_id=workflow_id,
            message=message,
            payload_digest=digest(payloads),
            at=time.time(),
        )
        # The payloads as signed, byte for byte.
        return [RawValue(p) for p in payloads], {**headers, HEADER: Payload(data=header)}

    async def start_workflow_update(self, input: StartWorkflowUpdateInput) -> WorkflowUpdateHandle:
        args, headers = self._signed(input.id, input.update, input.args, input.headers)
        return await super().start_workflow_update(
            dataclasses.replace(input, args=args, headers=headers)
        )

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        args, headers = self._signed(input.id, input.signal, input.args, input.headers)
        await super().signal_workflow(dataclasses.replace(input, args=args, headers=headers))


class _CheckingInbound(WorkflowInboundInterceptor):
    check: Assertions

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_SigningWorkflowOutbound(outbound, self.check))

    def _verify(self, message: str, args: Any, headers: Any) -> None:
        c = self.check
        payloads = payloads_of(c.converter, args)
        header = headers.get(HEADER)
        try:
            # The payload's digest covers its actor: an actor changed in transit breaks it.
            verify(
                c.keyring,
                header.data if header is not None else None,
                workflow_id=workflow.info().workflow_id,
                message=message,
                payload_digest=digest(payloads),
                now=workflow.now().timestamp(),
            )
        except AssertionRefused as err:
            self._refused(message, str(err), claimed_actor(payloads))
            raise
        except Exception:  # a header nothing parses sanely (nested, huge): malformed
            reason = f"{message}: refused, the assertion is malformed"
            self._refused(message, reason, claimed_actor(payloads))
            raise AssertionRefused(reason) from None

    def _refused(self, message: str, reason: str, claimed: dict[str, Any] | None) -> None:
        if workflow.unsafe.is_replaying():
            return  # recorded when it happened
        workflow.logger.warning("%s", reason)
        if self.check.on_refused is not None:
            pairs = workflow.info().typed_search_attributes.search_attributes
            attributes = {pair.key.name: pair.value for pair in pairs}
            refusal = {
                "workflow_id": workflow.info().workflow_id,
                "message": message,
                "reason": reason,
                "claimed_actor": claimed,
                "attributes": attributes,
            }
            with workflow.unsafe.sandbox_unrestricted():
                self.check.on_refused(refusal)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        try:
            self._verify(input.update, input.args, input.headers)
        except AssertionRefused as err:
            raise ApplicationError(str(err), type="Unauthorized", non_retryable=True) from None
        super().handle_update_validator(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        try:
            self._verify(input.signal, input.args, input.headers)
        except AssertionRefused:
            return  # dropped: it never reaches the handler
        await super().handle_signal(input)


class _SigningWorkflowOutbound(WorkflowOutboundInterceptor):
    """The workflows' signals to each other (a unit's progress, calibration) are signed like
    the API's, with the time of the workflow task (deterministic)."""

    def __init__(self, next: WorkflowOutboundInterceptor, check: Assertions) -> None:
        super().__init__(next)
        self._check = check

    async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        payloads = payloads_of(self._check.converter, input.args)
        header = sign(
            self._check.keyring,
            workflow_id=input.workflow_id,
            message=input.signal,
            payload_digest=digest(payloads),
            at=workflow.now().timestamp(),
            sender=workflow.info().workflow_id,
        )
        headers = {**input.headers, HEADER: Payload(data=header)}
        await super().signal_external_workflow(
            dataclasses.replace(input, args=[RawValue(p) for p in payloads], headers=headers)
        )


class PermanentFailures(Interceptor):
    """A worker interceptor: an activity (local or scheduled) that fails for a reason the
    same request would meet again (the database refuses the data, a model refuses it) fails
    with a non-retryable StorageRefused, so it is not retried forever under a unit's lock;
    anything else is left to the retry policy."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _PermanentFailuresInbound(next)


class _PermanentFailuresInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as err:
            refused = permanent(err)
            if refused is None:
                raise
            raise refused from err
