"""Every action and every internal signal sent straight to Temporal, past kaohe's API, as an
attacker with network access to Temporal would (issue 19): by Temporal's HTTP API (curl) and
by gRPC from a client without kaohe's keys, each as an update and as a signal, and with an
assertion captured from another message or over another payload. Each attempt is refused with
its reason, leaves a `message_refused` audit row with the actor it claimed, fails no workflow
task, and leaves the unit as it was; the right message still gets through afterwards.

tests/test_api_access.py tries the API's own door (credentials, roles, units, four-eyes)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    SignalWorkflowInput,
    StartWorkflowUpdateInput,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
)
from temporalio.converter import default

from domain.actions import ACTIONS
from kaohe.assertions import HEADER, Keyring, digest, sign
from kaohe.client import assertion_keyring
from kaohe.sim.simulate import wait_for_status
from schemas.common import Stage
from schemas.status import UnitStatus
from tests.conftest import Stack
from tests.helpers import TEST_POLICY, sample_unit, start_unit
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(240)

FORGED = {"id": "dept-1", "role": "department"}
COMPLETED = "UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED"
# How each attempt is refused, as the audit row and the caller's error say.
NO_ASSERTION = "no assertion"
ELSEWHERE = "for another message"
OTHER_PAYLOAD = "not the one asserted"

Header = Callable[[str, str, list[Payload]], bytes]


class _Injecting(Interceptor, OutboundInterceptor):
    """A client without kaohe's keys that puts a header of the attacker's making on each
    update and signal (a copied or re-targeted assertion)."""

    def __init__(self, header: Header) -> None:
        self._header = header

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        OutboundInterceptor.__init__(self, next)
        return self

    def _headers(self, wf: str, name: str, args: Any, headers: Any) -> Any:
        payloads = default().payload_converter.to_payloads(list(args))
        return {**headers, HEADER: Payload(data=self._header(wf, name, payloads))}

    async def start_workflow_update(self, input: StartWorkflowUpdateInput) -> WorkflowUpdateHandle:
        headers = self._headers(input.id, input.update, input.args, input.headers)
        return await super().start_workflow_update(dataclasses.replace(input, headers=headers))

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        headers = self._headers(input.id, input.signal, input.args, input.headers)
        await super().signal_workflow(dataclasses.replace(input, headers=headers))


async def _injecting_client(stack: Stack, header: Header) -> Client:
    return await Client.connect(stack.temporal.address, interceptors=[_Injecting(header)])


def _keyring(stack: Stack) -> Keyring:
    keyring = assertion_keyring(stack.settings)
    assert keyring is not None
    return keyring


async def _refusals(pool: asyncpg.Pool, workflow_id: str, n: int) -> list[dict[str, Any]]:
    import asyncio

    rows: list[Any] = []
    for _ in range(200):
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT actor_id, actor_role, detail FROM audit_log "
                "WHERE workflow_id = $1 AND kind = 'message_refused' ORDER BY id",
                workflow_id,
            )
        if len(rows) >= n:
            break
        await asyncio.sleep(0.1)
    return [json.loads(r["detail"]) for r in rows]


def _body(action: str, how: str) -> dict[str, Any]:
    # Plausible enough that, had the door been open, acknowledge_notice would be accepted.
    return {"idempotency_key": f"forged-{action}-{how}", "actor": FORGED, "reason": "越权尝试"}


async def _no_failed_tasks(handle: WorkflowHandle) -> None:
    history = await handle.fetch_history()
    events = history.events
    failed = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert not failed, failed


async def _settled(handle: WorkflowHandle) -> UnitStatus:
    """The unit once its notice stage has started (its deadline set): the state to keep."""
    return await wait_for_status(handle, lambda s: s.deadline is not None)


async def _http_update(http: httpx.AsyncClient, base: str, name: str, body: Any) -> str:
    r = await http.post(
        f"{base}/update/{name}",
        json={
            "request": {
                "meta": {"updateId": f"curl-{uuid.uuid4().hex[:8]}"},
                "input": {"args": {"payloads": [body]}},
            },
            "waitPolicy": {"lifecycleStage": COMPLETED},
        },
    )
    return r.text


async def _http_signal(http: httpx.AsyncClient, base: str, name: str, body: Any) -> None:
    r = await http.post(f"{base}/signal/{name}", json={"input": {"payloads": [body]}})
    assert r.status_code == 200, r.text  # Temporal takes it; the workflow drops it


async def _grpc_update_refusal(client: Client, workflow_id: str, name: str, body: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await client.get_workflow_handle(workflow_id).execute_update(name, body)
    return str(info.value.cause)


async def _every_door(
    stack: Stack,
    workflow_id: str,
    other_id: str,
    name: str,
    body: Callable[[str], Any],
    kinds: tuple[str, ...] = ("update", "signal"),
) -> list[str]:
    """`name` sent to `workflow_id` three ways as each of `kinds` (the message's handlers),
    none with a valid assertion; the reasons the updates were refused with (a signal is
    refused without an answer)."""
    keyring = _keyring(stack)
    bare = await Client.connect(stack.temporal.address)
    # A genuine assertion, made for the same message to another workflow.
    elsewhere = await _injecting_client(
        stack,
        lambda wf, msg, p: sign(
            keyring, workflow_id=other_id, message=msg, payload_digest=digest(p), at=time.time()
        ),
    )
    # A genuine assertion for this workflow and message, over the payload with the actor the
    # API would have put there: the attacker swaps in their own.
    honest = default().payload_converter.to_payloads([{**body("x"), "actor": {"id": "x"}}])
    other_payload = await _injecting_client(
        stack,
        lambda wf, msg, p: sign(
            keyring, workflow_id=wf, message=msg, payload_digest=digest(honest), at=time.time()
        ),
    )
    base = f"{stack.temporal.http_url}/api/v1/namespaces/default/workflows/{workflow_id}"
    reasons = []
    async with httpx.AsyncClient(timeout=30) as http:
        if "update" in kinds:
            reasons = [
                await _http_update(http, base, name, body("curl-update")),
                await _grpc_update_refusal(bare, workflow_id, name, body("grpc-update")),
                await _grpc_update_refusal(elsewhere, workflow_id, name, body("elsewhere")),
            ]
        if "signal" in kinds:
            await _http_signal(http, base, name, body("curl-signal"))
            await bare.get_workflow_handle(workflow_id).signal(name, body("grpc-signal"))
            await other_payload.get_workflow_handle(workflow_id).signal(name, body("swapped"))
    return reasons


def _check_refusals(refused: list[dict[str, Any]], name: str, kinds: int = 2) -> None:
    """Three refusals for each kind of handler: two without an assertion, one with the
    update's assertion made for elsewhere or the signal's over another payload."""
    assert len(refused) == 3 * kinds, refused
    assert {r["message"] for r in refused} == {name}
    reasons = [r["reason"] for r in refused]
    assert sum(NO_ASSERTION in r for r in reasons) == 2 * kinds, reasons
    assert sum(ELSEWHERE in r or OTHER_PAYLOAD in r for r in reasons) == kinds, reasons


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_every_action_straight_to_temporal_is_refused(
    action: str, stack: Stack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle = await start_unit(client, worker, sample_unit())
    before = (await _settled(handle)).model_dump()

    reasons = await _every_door(
        stack, handle.id, f"{handle.id}-other", action, lambda how: _body(action, how)
    )
    assert NO_ASSERTION in reasons[0] and NO_ASSERTION in reasons[1], reasons
    assert ELSEWHERE in reasons[2], reasons

    refused = await _refusals(pool, handle.id, 6)
    _check_refusals(refused, action)
    # Who tried: the actor the payload claimed, kept beside the refusal.
    assert all(r["claimed_actor"] == FORGED for r in refused)
    after = (await handle.query(UnitAssessment.status)).model_dump()
    assert after == before
    await _no_failed_tasks(handle)
    # The door still opens for a message kaohe signed.
    result = await handle.execute_update(
        UnitAssessment.acknowledge_notice,
        {"idempotency_key": "real", "actor": {"id": "office", "role": "unit"}},
    )
    assert result.accepted and result.stage == Stage.REPORT_BACK


async def test_the_units_internal_signal_is_refused(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    """calibration_result (the campaign's answer to a unit) from anyone but the campaign."""
    handle = await start_unit(client, worker, sample_unit())
    before = (await _settled(handle)).model_dump()
    released = {"proposal_no": 1, "outcome": "cleared", "reason": "伪造"}
    await _every_door(
        stack, handle.id, "elsewhere", "calibration_result", lambda how: released, ("signal",)
    )
    _check_refusals(await _refusals(pool, handle.id, 3), "calibration_result", kinds=1)
    assert (await handle.query(UnitAssessment.status)).model_dump() == before
    await _no_failed_tasks(handle)


async def test_the_campaigns_messages_are_refused(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    """unit_progress, calibrate (a unit's signals to its campaign) and decide_calibration (the
    department's update) sent straight to the campaign: refused, and its progress and
    calibration stay as they were."""
    from kaohe.starter import start_campaign
    from schemas.roster import Roster
    from workflows.campaign import AssessmentCampaign

    campaign = f"doors-{uuid.uuid4().hex[:6]}"
    roster = Roster(campaign_id=campaign, year=2026, title="伪造", units=[sample_unit("d1")])
    wf_id, _ = await start_campaign(client, roster, worker, TEST_POLICY)
    handle = client.get_workflow_handle(wf_id)
    # The campaign has started its unit before we look.
    import asyncio

    for _ in range(100):
        if (await handle.query(AssessmentCampaign.progress)).by_stage:
            break
        await asyncio.sleep(0.1)
    progress = (await handle.query(AssessmentCampaign.progress)).model_dump()
    calibration = [c.model_dump() for c in await handle.query(AssessmentCampaign.calibration)]

    bodies: dict[str, Callable[[str], Any]] = {
        "unit_progress": lambda how: {"unit_id": "d1", "stage": "completed", "seq": 999999},
        "calibrate": lambda how: {
            "unit_id": "d1",
            "category": "市直单位",
            "proposal_no": 1,
            "excellent": 99,
            "graded": 99,
        },
        "decide_calibration": lambda how: {
            "idempotency_key": f"forged-{how}",
            "actor": FORGED,
            "unit_id": "d1",
            "decision": "allow",
            "reason": "越权放行",
        },
    }
    seen = 0
    for name, body in bodies.items():
        kind = "update" if name == "decide_calibration" else "signal"
        await _every_door(stack, wf_id, f"{wf_id}-other", name, body, (kind,))
        seen += 3
        refused = await _refusals(pool, wf_id, seen)
        _check_refusals([r for r in refused if r["message"] == name], name, kinds=1)
    assert (await handle.query(AssessmentCampaign.progress)).model_dump() == progress
    assert [c.model_dump() for c in await handle.query(AssessmentCampaign.calibration)] == (
        calibration
    )
    await _no_failed_tasks(handle)
