"""The voting page's routes (kaohe/api/vote.py) by HTTP, as the page's script calls them:
public, but nothing without a valid token (unknown, of another unit, spent), a body within
the limits, a sheet refused naming its field (and its token left unspent), one vote per
token (a retry answers the same receipt), every refusal audited without the token; and the
receipts, by the API and `kaohe ballots receipts`, only once the evaluation is closed."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.ballot_intake import BallotIntake, submission_key
from kaohe.ingest.ballot_io import TokenSource
from kaohe.sim.simulate import drive_unit, sheet_for
from schemas.common import Stage
from schemas.roster import UnitSpec
from tests.conftest import ApiStack, Stack
from tests.helpers import TEST_POLICY, sample_unit, start_unit
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(300)

KAOHE = str(Path(sys.executable).parent / "kaohe")
BALLOTS = TEST_POLICY.ballots
RECEIPT = r"^[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}$"


def reviewed_unit() -> UnitSpec:
    """Two cadres (the first the principal, the second newly promoted), 民主评议 in scope."""
    unit = sample_unit(selection_review=True)
    unit.cadres[1].newly_promoted = True
    return unit


async def in_evaluation(
    client: Client, worker: str, tokens: TokenSource, unit: UnitSpec
) -> tuple[Any, dict[str, list[str]]]:
    handle = await start_unit(client, worker, unit, campaign_id="test", policy=TEST_POLICY)
    await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.EVALUATION)
    return handle, await tokens(handle.id)


def sheet_json(token: str, unit: UnitSpec, seed: int = 0) -> dict[str, Any]:
    sheet = sheet_for(token, unit, BALLOTS, random.Random(seed)).model_dump(mode="json")
    del sheet["token"]  # the page sends the token beside the sheet
    return sheet


async def refusals(pool: asyncpg.Pool, what: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT detail::text FROM audit_log WHERE kind = 'api_refused' "
            "AND detail->>'attempted' = $1",
            what,
        )
    return [json.loads(r["detail"]) for r in rows]


async def test_the_vote_routes_refuse_everything_without_a_valid_token(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, capfd: Any
) -> None:
    unit, other = reviewed_unit(), sample_unit()
    handle, issued = await in_evaluation(client, worker, tokens, unit)
    _, other_issued = await in_evaluation(client, worker, tokens, other)
    token, foreign = issued["A"][0], other_issued["A"][0]
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        # The page and its files are public, and allow only themselves.
        page = await http.get("/vote")
        assert page.status_code == 200 and "民主测评" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        for asset in ("vote.js", "receipts.js", "vote.css"):
            assert (await http.get(f"/vote/static/{asset}")).status_code == 200, asset
        assert (await http.get("/vote/static/app.py")).status_code == 404
        # No token, a malformed one, an unknown one: nothing to see, a Chinese answer.
        r = await http.post("/v1/vote/ballot", json={})
        assert r.status_code == 422 and r.json()["code"] == "token_missing"
        assert r.json()["field"] == "token" and "票码" in r.json()["message"]
        r = await http.post("/v1/vote/ballot", json={"token": "short"})
        assert r.status_code == 403 and r.json()["code"] == "token_unknown"
        unknown = "Zz" * 11
        for url in ("/v1/vote/ballot", "/v1/vote"):
            r = await http.post(url, json={"token": unknown, "sheet": sheet_json(unknown, unit)})
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "token_unknown" and "票码无效" in r.json()["message"]
        # The token is the credential: a bearer token is no substitute.
        r = await http.post("/v1/vote/ballot", json={}, headers=api.token("someone"))
        assert r.status_code == 422

        # The ballot a valid token opens: the unit, its cadres, the 民主评议, the options.
        r = await http.post("/v1/vote/ballot", json={"token": f" {token[:4]} {token[4:]} "})
        assert r.status_code == 200, r.text
        opened = r.json()
        assert r.headers["cache-control"] == "no-store"
        assert opened["state"] == "open" and opened["title"] == "测试考核"
        assert opened["unit"] == {"campaign": "test", "unit": unit.unit_id, "name": unit.name}
        ballot = opened["ballot"]
        assert ballot["team"]["options"] == BALLOTS.team_options
        assert ballot["team"]["dimensions"] == BALLOTS.team_dimensions
        assert ballot["team"]["focus_items"] == [
            f for f in BALLOTS.focus_items if f not in BALLOTS.team_dimensions
        ]
        principal, deputy = ballot["cadres"]
        assert (principal["name"], principal["position"]) == ("干部0", "副主任")
        assert principal["items"] == BALLOTS.cadre_dimensions + BALLOTS.principal_items
        assert deputy["items"] == BALLOTS.cadre_dimensions
        assert ballot["selection_work"]["questions"] == BALLOTS.selection_questions
        assert [c["cadre_id"] for c in ballot["new_cadres"]] == [unit.cadres[1].cadre_id]
        assert opened["receipts_page"] == f"/vote/receipts?campaign=test&unit={unit.unit_id}"

        # Another unit's token, for this unit's ballot; this unit's sheet on it.
        mine = {"campaign": "test", "unit": unit.unit_id}
        r = await http.post(
            "/v1/vote", json={"token": foreign, "unit": mine, "sheet": sheet_json(foreign, unit)}
        )
        assert r.status_code == 403 and r.json()["code"] == "token_foreign", r.text
        r = await http.post("/v1/vote", json={"token": foreign, "sheet": sheet_json(foreign, unit)})
        assert r.status_code == 422 and r.json()["code"] == "sheet_invalid"
        assert r.json()["field"].startswith("sheet.cadres[0]"), r.text

        # Too large a body: refused before it is read, or as it arrives.
        huge = json.dumps({"token": token, "sheet": {"x": "y" * 2_100_000}})
        r = await http.post("/v1/vote", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"

        # Malformed sheets, each naming its field; the token stays unspent.
        bad_type = sheet_json(token, unit)
        bad_type["team"]["overall"] = 7
        bad_option = sheet_json(token, unit)
        bad_option["cadres"][1]["overall"] = "很好"
        missing = sheet_json(token, unit)
        del missing["selection_work"]
        for sheet, field in (
            (bad_type, "sheet.team.overall"),
            (bad_option, "sheet.cadres[1].overall"),
            (missing, "sheet.selection_work"),
            ("not a sheet", "sheet"),
        ):
            r = await http.post("/v1/vote", json={"token": token, "unit": mine, "sheet": sheet})
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "sheet_invalid" and r.json()["field"] == field, r.text
            assert r.json()["message"].startswith("票面有误")
        r = await http.post("/v1/vote", content=b"{not json", headers={"Content-Type": "x"})
        assert r.status_code == 422 and r.json()["code"] == "bad_request"

        # The vote, once: a retry answers the same receipt, so does the ballot route.
        good = {"token": token, "unit": mine, "sheet": sheet_json(token, unit)}
        r = await http.post("/v1/vote", json=good)
        assert r.status_code == 200, r.text
        taken = r.json()
        assert taken["state"] == "accepted" and not taken["duplicate"]
        assert re.fullmatch(RECEIPT, taken["receipt"])
        again = (await http.post("/v1/vote", json=good)).json()
        assert again["state"] == "submitted" and again["duplicate"]
        assert again["receipt"] == taken["receipt"]
        shown = (await http.post("/v1/vote/ballot", json={"token": token})).json()
        assert shown["state"] == "submitted" and shown["receipt"] == taken["receipt"]

        # A token a ballot system spent: refused, by both routes.
        spent = issued["B"][0]
        await BallotIntake(client, pool).submit(
            handle.id,
            [sheet_for(spent, unit, BALLOTS, random.Random(3))],
            submission_key("batch", "ballots-sys", "k1"),
        )
        for url in ("/v1/vote/ballot", "/v1/vote"):
            r = await http.post(url, json={"token": spent, "sheet": sheet_json(spent, unit)})
            assert r.status_code == 409 and r.json()["code"] == "token_spent", r.text
            assert "已被使用" in r.json()["message"]

        # Receipts: not before the evaluation closes; an unknown unit is not found.
        receipts_url = f"/v1/campaigns/test/units/{unit.unit_id}/receipts"
        r = await http.get(receipts_url)
        assert r.status_code == 409 and r.json()["code"] == "not_closed"
        assert "测评尚未结束" in r.json()["message"]
        assert (await http.get("/v1/campaigns/test/units/nobody/receipts")).status_code == 404

    await handle.execute_update(
        UnitAssessment.close_evaluation,
        {
            "idempotency_key": "close",
            "actor": {"id": "group", "role": "assessment_group"},
            "reason": "测试",
        },
    )
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        late = issued["C"][0]
        for url, named in (("/v1/vote/ballot", None), ("/v1/vote", None), ("/v1/vote", mine)):
            body = {"token": late, "sheet": sheet_json(late, unit), "unit": named}
            r = await http.post(url, json=body)
            assert r.status_code == 409 and r.json()["code"] == "closed", r.text
            assert "测评已结束" in r.json()["message"]
        # The voter who voted still reads their receipt.
        shown = (await http.post("/v1/vote/ballot", json={"token": token})).json()
        assert shown["state"] == "submitted" and shown["receipt"] == taken["receipt"]
        r = await http.get(receipts_url)
        assert r.status_code == 200, r.text
        listed = r.json()
        assert listed["closed"] and listed["count"] == 2 == len(listed["receipts"])
        assert taken["receipt"] in listed["receipts"]
        assert listed["receipts"] == sorted(listed["receipts"])
    status = await handle.query(UnitAssessment.status)
    assert status.evaluation.sheets == 2

    # Each refusal is an audit row with no principal, and none holds a token.
    ballot_refusals = await refusals(pool, "vote_ballot")
    vote_refusals = await refusals(pool, "vote")
    assert {r["reason"] for r in ballot_refusals} >= {
        "token: required, the string on the slip",
        "token: no such token",
        "token: already used",
    }
    assert any(r["status"] == 413 for r in vote_refusals)
    assert any(r["reason"] == "token: not issued for this unit" for r in vote_refusals)
    assert all(r["principal"] is None for r in ballot_refusals + vote_refusals)
    async with pool.acquire() as conn:
        for t in (token, foreign, spent, late, unknown):
            held = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE strpos(detail::text, $1) > 0", t
            )
            assert held == 0
    logged = "".join(capfd.readouterr())
    assert not [t for t in (token, foreign, spent, late) if t in logged]


async def test_no_vote_is_taken_before_the_evaluation_opens(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    """Tokens handed out during the report-back: the page says the evaluation has not begun
    (whether the unit is named or not) and spends nothing; once it opens, the same token
    votes."""
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id="test", policy=TEST_POLICY)
    await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.REPORT_BACK)
    token = (await tokens(handle.id))["A"][0]
    early = {"token": token, "sheet": sheet_json(token, unit)}
    named = {**early, "unit": {"campaign": "test", "unit": unit.unit_id}}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        for url, body in (("/v1/vote/ballot", early), ("/v1/vote", early), ("/v1/vote", named)):
            r = await http.post(url, json=body)
            assert r.status_code == 409 and r.json()["code"] == "not_open", (url, r.text)
        async with pool.acquire() as conn:
            assert not await conn.fetchval(
                "SELECT count(*) FROM ballot_tokens WHERE workflow_id = $1 AND used_at IS NOT NULL",
                handle.id,
            )
            assert not await conn.fetchval(
                "SELECT count(*) FROM ballot_pool WHERE workflow_id = $1", handle.id
            )
        await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.EVALUATION)
        r = await http.post("/v1/vote", json=named)
        assert r.status_code == 200 and r.json()["state"] == "accepted", r.text


async def test_an_address_refused_too_often_is_answered_429_without_a_look_up(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    """A flood of made-up tokens from one address: past the limit each answer is 429 with
    Retry-After, looked up and audited no more; an accepted vote never counted, so the
    rater with a real slip behind the same address voted before the flood, and another
    address votes during it."""
    unit = sample_unit()
    _, issued = await in_evaluation(client, worker, tokens, unit)
    issuer = DevIssuer.generate()
    verifier = issuer.verifier()
    app = create_app(Api(client, pool, verifier, vote_refusals_per_minute=5))
    mine = {"campaign": "test", "unit": unit.unit_id}

    def phone(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://kaohe", timeout=30)

    (first, second), third = issued["A"][:2], issued["B"][0]
    async with phone("198.51.100.7") as http, phone("203.0.113.9") as other:
        for token in (first, second):  # two raters in one room vote: nothing counts
            body = {"token": token, "unit": mine, "sheet": sheet_json(token, unit)}
            r = await http.post("/v1/vote", json=body)
            assert r.status_code == 200, r.text
        before = len(await refusals(pool, "vote"))
        answers = []
        for n in range(12):
            made_up = f"Zz{n:02d}" * 6
            r = await http.post("/v1/vote", json={"token": made_up, "unit": mine, "sheet": {}})
            answers.append(r)
        assert [r.status_code for r in answers[:5]] == [403] * 5
        assert {r.status_code for r in answers[5:]} == {429}
        throttled = answers[-1]
        assert throttled.json()["code"] == "too_many" and "稍后" in throttled.json()["message"]
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        # The other route too, and nothing more is audited for this address.
        assert (await http.post("/v1/vote/ballot", json={"token": first})).status_code == 429
        assert len(await refusals(pool, "vote")) == before + 5
        # Another address votes meanwhile.
        body = {"token": third, "unit": mine, "sheet": sheet_json(third, unit)}
        r = await other.post("/v1/vote", json=body)
        assert r.status_code == 200 and r.json()["state"] == "accepted", r.text


def kaohe(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KAOHE, *args], env=stack.env(), capture_output=True, text=True, timeout=60
    )


async def test_kaohe_ballots_receipts_lists_them_once_the_evaluation_closes(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit()
    handle, issued = await in_evaluation(client, worker, tokens, unit)
    intake = BallotIntake(client, pool)
    taken = await intake.submit(
        handle.id,
        [sheet_for(t, unit, BALLOTS, random.Random(i)) for i, t in enumerate(issued["A"])],
        submission_key("test", "cli"),
    )
    before = kaohe(stack, "ballots", "receipts", "test", unit.unit_id)
    assert before.returncode == 3 and "测评尚未结束" in before.stderr, before.stderr
    assert before.stdout == ""
    await handle.execute_update(
        UnitAssessment.close_evaluation,
        {
            "idempotency_key": "close",
            "actor": {"id": "group", "role": "assessment_group"},
            "reason": "测试",
        },
    )
    after = kaohe(stack, "ballots", "receipts", "test", unit.unit_id)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == sorted(taken.receipts)
    unknown = kaohe(stack, "ballots", "receipts", "test", "nobody")
    assert unknown.returncode == 1 and "no unit nobody" in unknown.stderr
