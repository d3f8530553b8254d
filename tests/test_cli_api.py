"""The `kaohe` CLI through kaohe's API (issue 19, item 3): with KAOHE_API_TOKEN (a minted
bearer token or a system's API key) its actions and reads go to the API, which takes the actor
from the token's principal and its role binding; the wrong role is refused with the problem's
reason, an --actor is refused before anything is sent, and without a token (or with --direct)
the operators' path straight to Temporal works as before. The real CLI in a subprocess, the
API in this process on the session's Temporal and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid

import asyncpg
import pytest
from temporalio.client import Client

from kaohe.access import api_keys
from kaohe.access.bindings import Binding, grant
from kaohe.sim.simulate import wait_started
from kaohe.starter import start_campaign
from schemas.common import Role
from schemas.roster import Roster
from tests.conftest import ApiStack, Stack
from tests.helpers import TEST_POLICY, sample_unit
from tests.test_cli import akaohe
from workflows.campaign import unit_workflow_id
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(240)


async def _campaign(client: Client, worker: str, pool: asyncpg.Pool) -> tuple[str, str, str]:
    """A campaign of one unit, its id with a hyphen (so the unit's workflow id does not split
    by itself), and the unit's people bound: (campaign, unit, the unit's workflow id)."""
    campaign = f"cli-api-{uuid.uuid4().hex[:6]}"
    unit = sample_unit()
    roster = Roster(campaign_id=campaign, year=2026, title="CLI 经由 API", units=[unit])
    await start_campaign(client, roster, worker, TEST_POLICY)
    u = unit.unit_id
    async with pool.acquire() as conn:
        for principal, role in (
            (f"dept-{campaign}", Role.DEPARTMENT),
            (f"office-{u}", Role.UNIT),
            (f"approver-{u}", Role.APPROVER),
        ):
            scope = "" if role == Role.DEPARTMENT else u
            await grant(conn, Binding(campaign, principal, role, scope), "test")
    workflow_id = unit_workflow_id(campaign, u)
    await wait_started(client, workflow_id)
    return campaign, u, workflow_id


def _as(api: ApiStack, principal: str) -> dict[str, str]:
    """The CLI's environment for `principal`: a minted token and where the API is."""
    return {"KAOHE_API_URL": api.url, "KAOHE_API_TOKEN": api.issuer.mint(principal)}


async def _actors(pool: asyncpg.Pool, workflow_id: str, kind: str) -> list[tuple[str, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT actor_id, actor_role FROM audit_log WHERE workflow_id = $1 AND kind = $2",
            workflow_id,
            kind,
        )
    return [tuple(r) for r in rows]


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, (run.stdout, run.stderr)
    return run.stdout


async def test_an_action_through_the_api_acts_as_the_tokens_principal(
    stack: Stack, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    campaign, u, wf = await _campaign(client, worker, pool)
    office, dept = _as(api, f"office-{u}"), _as(api, f"dept-{campaign}")
    ack = await akaohe(stack, "acknowledge", wf, env=office)
    assert json.loads(_ok(ack))["stage"] == "report_back"
    assert await _actors(pool, wf, "notice_acknowledged") == [(f"office-{u}", "unit")]
    # The reads: a unit's status by workflow id or CAMPAIGN/UNIT, a campaign's progress.
    for target in (wf, f"{campaign}/{u}"):
        status = await akaohe(stack, "status", target, "--json", env=office)
        assert json.loads(_ok(status))["acknowledgements"] == 1
    watched = await akaohe(stack, "status", wf, "--watch", "--count", "1", env=office)
    assert "report_back" in _ok(watched)
    progress = await akaohe(stack, "status", "--campaign", campaign, "--json", env=dept)
    assert json.loads(_ok(progress))["units_total"] == 1
    shown = await akaohe(stack, "calibration", "show", campaign, env=dept)
    assert f"calibration of {campaign}" in _ok(shown)
    # A shortcut the department takes: its actor is the department's principal.
    paused = await akaohe(stack, "pause", wf, "--reason", "机构改革", env=dept)
    assert "paused" in _ok(paused)
    assert await _actors(pool, wf, "paused") == [(f"dept-{campaign}", "department")]


async def test_a_system_acts_with_its_api_key(
    stack: Stack, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    campaign, u, wf = await _campaign(client, worker, pool)
    system = f"oa-{u}"
    async with pool.acquire() as conn:
        await grant(conn, Binding(campaign, system, Role.INTEGRATOR, u), "test")
        key = await api_keys.create_key(conn, system, "test")
    env = {"KAOHE_API_URL": api.url, "KAOHE_API_TOKEN": key}
    _ok(await akaohe(stack, "update", wf, "acknowledge_notice", '{"note": "收到"}', env=env))
    assert await _actors(pool, wf, "notice_acknowledged") == [(system, "integrator")]


async def test_the_wrong_role_and_an_actor_are_refused(
    stack: Stack, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    campaign, u, wf = await _campaign(client, worker, pool)
    approver, office = _as(api, f"approver-{u}"), _as(api, f"office-{u}")
    wrong = await akaohe(stack, "acknowledge", wf, env=approver)
    assert wrong.returncode == 1
    assert "Not allowed (403)" in wrong.stderr
    assert f"approver-{u} has approver on unit {u} of {campaign}; this needs" in wrong.stderr
    stranger = await akaohe(stack, "status", wf, env=_as(api, "mallory"))
    assert stranger.returncode == 1 and "Not found (404)" in stranger.stderr
    # A watch ends at the API's no (it would answer the same again), not after retries.
    watched = await akaohe(stack, "status", wf, "--watch", env=_as(api, "mallory"))
    assert watched.returncode == 1 and "Not found (404)" in watched.stderr
    # --actor with a token: refused before anything is sent.
    claimed = await akaohe(stack, "acknowledge", wf, "--actor", "dept-1:department", env=office)
    assert claimed.returncode == 2
    assert "--actor: through kaohe's API the actor is your token's principal" in claimed.stderr
    # An actor in the JSON: the API's problem, with the field it names.
    body = json.dumps({"actor": {"id": "dept-1", "role": "department"}})
    in_body = await akaohe(stack, "update", wf, "acknowledge_notice", body, env=office)
    assert in_body.returncode == 1
    assert "Invalid request (422)" in in_body.stderr and "field: actor" in in_body.stderr
    # Rejected by the unit: its reason.
    report = json.dumps({"kind": "team", "title": "年度总结", "text": "……"})
    early = await akaohe(stack, "update", wf, "submit_report", report, env=office)
    assert early.returncode == 1
    assert "Rejected by the unit (409)" in early.stderr and "notice" in early.stderr
    status = await client.get_workflow_handle(wf).query(UnitAssessment.status)
    assert status.stage == "notice" and status.acknowledgements == 0
    refused = await _actors(pool, wf, "api_refused")
    assert len(refused) == 1  # the approver's attempt (the stranger's read found no unit)


async def test_fire_and_forget_through_the_api_is_queued(
    stack: Stack, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    _, u, wf = await _campaign(client, worker, pool)
    office = _as(api, f"office-{u}")
    sent = await akaohe(stack, "signal", wf, "acknowledge_notice", env=office)
    found = re.search(r"queued: request (\w+); read it with `kaohe request \1`", _ok(sent))
    assert found, sent.stdout
    for _ in range(100):
        state = await akaohe(stack, "request", found.group(1), env=office)
        if json.loads(state.stdout)["state"] != "queued":
            break
        await asyncio.sleep(0.1)
    answer = json.loads(_ok(state))
    assert answer["state"] == "accepted" and answer["answer"]["stage"] == "report_back"
    assert await _actors(pool, wf, "notice_acknowledged") == [(f"office-{u}", "unit")]


async def test_the_direct_path_still_works_for_operators(
    stack: Stack, api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    """Without a token, straight to Temporal as --actor; with one, --direct does the same."""
    campaign, u, wf = await _campaign(client, worker, pool)
    _ok(await akaohe(stack, "acknowledge", wf, "--actor", "op-office:unit"))
    assert await _actors(pool, wf, "notice_acknowledged") == [("op-office", "unit")]
    status = await akaohe(stack, "status", f"{campaign}/{u}", "--json")
    assert json.loads(_ok(status))["stage"] == "report_back"
    office = _as(api, f"office-{u}")
    paused = await akaohe(
        stack, "pause", wf, "--reason", "运维", "--direct", "--actor", "op:department", env=office
    )
    assert "paused" in _ok(paused)
    assert await _actors(pool, wf, "paused") == [("op", "department")]
