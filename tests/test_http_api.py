"""Integrators reach every action over kaohe's API (Temporal's HTTP API refuses them: see
tests/test_api_access.py): plain JSON in, a plain JSON ActionResult out, a rejection or a
malformed body a problem naming the field."""

from __future__ import annotations

import asyncpg
import httpx
from temporalio.client import Client

from kaohe.access import api_keys
from kaohe.access.bindings import Binding, grant
from kaohe.sim.simulate import wait_for_status
from schemas.common import Role, Stage
from tests.conftest import ApiStack
from tests.helpers import sample_unit, start_unit

CAMPAIGN = "http"


async def test_actions_over_kaohe_api(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id=CAMPAIGN)
    u = unit.unit_id
    async with pool.acquire() as conn:
        await grant(conn, Binding(CAMPAIGN, "oa-http", Role.INTEGRATOR, u), "test")
        await grant(conn, Binding(CAMPAIGN, "dept-http", Role.DEPARTMENT), "test")
        key = await api_keys.create_key(conn, "oa-http", "test")
    base = f"{api.url}/v1/campaigns/{CAMPAIGN}/units/{u}/actions"
    system = {"X-Api-Key": key}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{base}/acknowledge_notice", json={"idempotency_key": "http-ack"}, headers=system
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "accepted": True,
            "duplicate": False,
            "stage": "report_back",
            "message": "notice acknowledged",
        }

        # A rejection by the unit: 409, a problem naming the field.
        bad = {
            "idempotency_key": "http-bad",
            "kind": "cadre",
            "cadre_id": "nobody",
            "title": "述职报告",
            "text": "...",
        }
        r = await http.post(f"{base}/submit_report", json=bad, headers=system)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "cadre_id" and "cadre_id" in r.json()["detail"]

        # A malformed body: 422 naming the field, before the unit is asked.
        r = await http.post(f"{base}/submit_report", content=b"[1, 2]", headers=system)
        assert r.status_code == 422 and "expected a JSON object" in r.json()["detail"], r.text
        r = await http.post(f"{base}/submit_report", json={"kind": "team"}, headers=system)
        assert r.status_code == 422 and r.json()["field"] == "idempotency_key", r.text

        # The department closes the stage (what integrators used to signal).
        close = {"idempotency_key": "http-close", "stage": "report_back", "reason": "HTTP 关闭"}
        r = await http.post(f"{base}/close_stage", json=close, headers=api.token("dept-http"))
        assert r.status_code == 200 and r.json()["stage"] == "evaluation", r.text
    closed = await wait_for_status(handle, lambda s: s.stage == Stage.EVALUATION)
    assert closed.stage == Stage.EVALUATION
