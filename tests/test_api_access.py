"""kaohe's API tried as an attacker would (issue 19): every action without credentials, with an
expired or a stranger's token, as a person of the wrong role or of another unit, the proposer
approving. Each attempt is refused with a reason and an audit row, and the unit is unchanged;
the right person gets through. tests/test_temporal_doors.py goes past the API, straight to
Temporal."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client, WorkflowHandle

from domain.actions import ACTIONS
from kaohe.access.bindings import Binding, grant
from kaohe.access.issuer import DevIssuer
from schemas.common import Role, Stage
from tests.conftest import ApiStack
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(240)

CAMPAIGN = "test"  # start_unit's campaign
COMPLETED = "UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED"


async def _unit(client: Client, worker: str, pool: asyncpg.Pool) -> tuple[WorkflowHandle, str]:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id=CAMPAIGN)
    u = unit.unit_id
    async with pool.acquire() as conn:
        for principal, role in (
            ("dept-1", Role.DEPARTMENT),
            (f"office-{u}", Role.UNIT),
            (f"group-{u}", Role.ASSESSMENT_GROUP),
            (f"approver-{u}", Role.APPROVER),
            (f"ballots-{u}", Role.INTEGRATOR),
        ):
            scope = "" if role == Role.DEPARTMENT else u
            await grant(conn, Binding(CAMPAIGN, principal, role, scope), "test")
    return handle, u


def _url(api: ApiStack, unit: str, action: str) -> str:
    return f"{api.url}/v1/campaigns/{CAMPAIGN}/units/{unit}/actions/{action}"


async def _audit(pool: asyncpg.Pool, workflow_id: str, kind: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT detail FROM audit_log WHERE workflow_id = $1 AND kind = $2 ORDER BY id",
            workflow_id,
            kind,
        )
    return [json.loads(r["detail"]) for r in rows]


async def test_the_right_person_acknowledges_through_the_api(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle, u = await _unit(client, worker, pool)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            _url(api, u, "acknowledge_notice"),
            json={"idempotency_key": "ack-1", "note": "收到"},
            headers=api.token(f"office-{u}"),
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] and r.json()["stage"] == "report_back"
        status = await http.get(
            f"{api.url}/v1/campaigns/{CAMPAIGN}/units/{u}/status", headers=api.token("dept-1")
        )
        assert status.status_code == 200 and status.json()["acknowledgements"] == 1
    # The actor recorded is the authenticated principal, with its bound role.
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT actor_id, actor_role FROM audit_log WHERE workflow_id = $1 "
            "AND kind = 'notice_acknowledged'",
            handle.id,
        )
    assert tuple(row) == (f"office-{u}", "unit")


def _attacks(api: ApiStack, u: str) -> list[tuple[str, dict[str, str], int, str]]:
    expired = api.issuer.mint(f"office-{u}", ttl=60, now=time.time() - 3600)
    stranger = DevIssuer.generate().mint(f"office-{u}")
    return [
        ("without credentials", {}, 401, "no credentials"),
        ("with an expired token", {"Authorization": f"Bearer {expired}"}, 401, "expired"),
        ("with a stranger's token", {"Authorization": f"Bearer {stranger}"}, 401, "not valid"),
        ("as nobody bound", api.token("mallory"), 403, "no role"),
        ("with the right role on another unit", api.token("office-elsewhere"), 403, "no role"),
    ]


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_every_action_refuses_the_wrong_caller(
    action: str, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle, u = await _unit(client, worker, pool)
    async with pool.acquire() as conn:
        await grant(conn, Binding(CAMPAIGN, "office-elsewhere", Role.UNIT, "other-unit"), "t")
    before = await handle.query(UnitAssessment.status)
    wrong_role = next(
        (
            p
            for p, r in ((f"approver-{u}", Role.APPROVER), (f"office-{u}", Role.UNIT))
            if r not in ACTIONS[action].roles
        ),
        None,
    )
    attacks = _attacks(api, u)
    if wrong_role is not None:
        attacks.append(("as a person of the wrong role", api.token(wrong_role), 403, "needs"))
    body = {"idempotency_key": f"attack-{action}", "reason": "越权尝试"}
    async with httpx.AsyncClient() as http:
        for how, headers, status, says in attacks:
            r = await http.post(_url(api, u, action), json=body, headers=headers)
            assert r.status_code == status, (how, r.text)
            assert r.headers["content-type"].startswith("application/problem+json"), how
            assert says in r.json()["detail"], (how, r.json())
    refused = await _audit(pool, handle.id, "api_refused")
    assert len(refused) == len(attacks)
    assert {r["attempted"] for r in refused} == {action}
    assert [r["principal"] for r in refused][-1] == (wrong_role or "office-elsewhere")
    after = await handle.query(UnitAssessment.status)
    assert after.history == before.history and after.acknowledgements == 0


async def test_an_actor_in_the_body_is_refused(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    _, u = await _unit(client, worker, pool)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            _url(api, u, "acknowledge_notice"),
            json={"idempotency_key": "k", "actor": {"id": "dept-1", "role": "department"}},
            headers=api.token(f"office-{u}"),
        )
    assert r.status_code == 422 and r.json()["field"] == "actor"


async def test_the_proposer_cannot_approve_by_holding_both_roles(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool, tokens: Any, talks: Any
) -> None:
    from kaohe.sim.simulate import drive_unit, proposal_for

    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id=CAMPAIGN)
    u = unit.unit_id
    async with pool.acquire() as conn:
        for role in (Role.ASSESSMENT_GROUP, Role.APPROVER):
            await grant(conn, Binding(CAMPAIGN, "both-hats", role, u), "test")
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    proposal = proposal_for(unit).model_dump(mode="json", exclude={"actor"})
    async with httpx.AsyncClient() as http:
        r = await http.post(
            _url(api, u, "propose_grades"), json=proposal, headers=api.token("both-hats")
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            _url(api, u, "approve_grades") + "?as=approver",
            json={"idempotency_key": "approve-1", "decision": "approve"},
            headers=api.token("both-hats"),
        )
    assert r.status_code == 409, r.text
    assert "proposed these grades and cannot approve them" in r.json()["detail"]
    status = await handle.query(UnitAssessment.status)
    assert status.grading.pending_proposal and not status.grading.approved


async def test_fire_and_forget_gets_202_and_a_durable_answer(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    import asyncio

    handle, u = await _unit(client, worker, pool)
    headers = {**api.token(f"office-{u}"), "Prefer": "respond-async"}
    async with httpx.AsyncClient() as http:
        r = await http.post(
            _url(api, u, "acknowledge_notice"), json={"idempotency_key": "async-1"}, headers=headers
        )
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        # A second one the unit will refuse (notice is over by then): rejected, with why.
        r2 = await http.post(
            _url(api, u, "acknowledge_notice"), json={"idempotency_key": "async-2"}, headers=headers
        )
        assert r2.status_code == 202
        answers = {}
        for _ in range(100):
            for where in (location, r2.headers["Location"]):
                got = await http.get(f"{api.url}{where}", headers=api.token(f"office-{u}"))
                answers[where] = got.json()
            if all(a["state"] != "queued" for a in answers.values()):
                break
            await asyncio.sleep(0.1)
        assert answers[location]["state"] == "accepted"
        assert answers[location]["answer"]["stage"] == "report_back"
        assert answers[r2.headers["Location"]]["state"] == "rejected"
        assert "not accepted now" in answers[r2.headers["Location"]]["answer"]["detail"]
        # Nobody else reads them.
        other = await http.get(f"{api.url}{location}", headers=api.token("dept-1"))
        assert other.status_code == 404
    assert (await handle.query(UnitAssessment.status)).acknowledgements == 1


async def test_a_key_reused_for_another_action_is_refused_by_the_unit(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    _, u = await _unit(client, worker, pool)
    async with httpx.AsyncClient() as http:
        first = await http.post(
            _url(api, u, "acknowledge_notice"),
            json={"idempotency_key": "same-key"},
            headers=api.token(f"office-{u}"),
        )
        assert first.status_code == 200, first.text
        again = await http.post(
            _url(api, u, "acknowledge_notice"),
            json={"idempotency_key": "same-key"},
            headers=api.token(f"office-{u}"),
        )
        assert again.json() == first.json()  # a retry: the first answer, nothing twice
        other = await http.post(
            _url(api, u, "close_stage"),
            json={"idempotency_key": "same-key", "stage": "report_back", "reason": "提前结束"},
            headers=api.token("dept-1"),
        )
    assert other.status_code == 409, other.text
    assert "was already used for acknowledge_notice" in other.json()["detail"]
