"""Ballots nobody can link to a rater (issue 20), tried as the database owner and a Temporal
operator would: on a unit of 300 sheets cast one by one in an order of their own, no join by
xmin, physical order, timestamp or sequence ties a token to its sheet; a batch holds one
rater group and at least the policy's minimum; no token is in the unit's history, raw or
decoded, nor in the logs. And the door itself: kaohe's API takes a ballot system's sheets
(all or none, a retry answered again), refuses the wrong caller, a spent or foreign token
and a closed evaluation; the unit takes no sheet at all."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import asyncpg
import httpx
import pytest
from google.protobuf.message import Message
from temporalio.client import Client, WorkflowUpdateFailedError

from activities.ballot_pool import counted_receipts
from domain.ballots import marks_checksum, sheet_marks
from kaohe.access.bindings import Binding, grant
from kaohe.ballot_intake import BallotIntake, SheetsRefused, submission_key
from kaohe.ingest.ballot_io import TokenSource
from kaohe.sim.simulate import drive_unit, sheet_for, simulated_unit, wait_for_status
from schemas.common import Role, Stage
from schemas.policy import Policy
from tests.conftest import ApiStack
from tests.helpers import TEST_POLICY, sample_unit, start_unit
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(300)

K = Policy().ballots.anonymity_min_sheets
FLUSH_AT = Policy().ballots.flush_sheets


def _signature(marks: list[Any]) -> tuple[tuple[str, ...], ...]:
    return tuple(sorted(tuple(m) for m in marks))


async def test_three_hundred_sheets_cannot_be_linked_to_their_tokens(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, capfd: Any
) -> None:
    unit = simulated_unit(f"pool{random.randrange(10**8)}", 2, (60, 120, 120))
    handle = await start_unit(client, worker, unit, policy=TEST_POLICY)
    await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.EVALUATION)
    issued = await tokens(handle.id)
    rng = random.Random(7)
    cast = [(t, sheet_for(t, unit, TEST_POLICY.ballots, rng)) for ts in issued.values() for t in ts]
    rng.shuffle(cast)  # raters vote in an order of their own, not the slips'
    intake = BallotIntake(client, pool)
    token_of = {_signature(sheet_marks(sheet)): token for token, sheet in cast}
    assert len(token_of) == len(cast) == 300  # every sheet tells itself apart
    for token, sheet in cast:
        await intake.submit(handle.id, [sheet], submission_key("vote", token))
    status = await wait_for_status(handle, lambda s: s.stage == Stage.TALKS)
    assert status.evaluation.sheets == 300

    wf = handle.id
    async with pool.acquire() as conn:
        # xmin: no token row shares a transaction with a mark or a receipt.
        for table in ("ballot_marks", "ballot_receipts", "ballot_batches"):
            shared = await conn.fetchval(
                f"SELECT count(*) FROM ballot_tokens t JOIN {table} m "
                "ON t.xmin::text = m.xmin::text "
                "WHERE t.workflow_id = $1 AND m.workflow_id = $1",
                wf,
            )
            assert shared == 0, table
        # Nor do the tokens say in which order they were spent: one xmin per rater group.
        spent = await conn.fetch(
            "SELECT rater_group, count(DISTINCT xmin::text) AS n FROM ballot_tokens "
            "WHERE workflow_id = $1 GROUP BY rater_group",
            wf,
        )
        assert {r["rater_group"]: r["n"] for r in spent} == {"A": 1, "B": 1, "C": 1}
        # Physical order: the i-th token on disk against the i-th sheet on disk.
        by_ctid = await conn.fetch(
            "SELECT token_hash FROM ballot_tokens WHERE workflow_id = $1 ORDER BY ctid", wf
        )
        sheets = await conn.fetch(
            """SELECT batch_id, sheet_no, min(ctid::text) AS first,
                      json_agg(json_build_array(kind, target_id, item, option)) AS marks
               FROM ballot_marks WHERE workflow_id = $1 GROUP BY batch_id, sheet_no""",
            wf,
        )
        hash_of = {t: hashlib.sha256(t.encode()).digest() for t, _ in cast}
        true_token = {
            (r["batch_id"], r["sheet_no"]): token_of[_signature(json.loads(r["marks"]))]
            for r in sheets
        }
        on_disk = sorted(sheets, key=lambda r: tuple(map(int, r["first"].strip("()").split(","))))
        matched = sum(
            bytes(t["token_hash"]) == hash_of[true_token[(s["batch_id"], s["sheet_no"])]]
            for t, s in zip(by_ctid, on_disk, strict=True)
        )
        assert matched <= 6, f"{matched} of 300 sheets sit at their token's place on disk"
        # Timestamps: to the day at most.
        for table, column in (
            ("ballot_tokens", "issued_at"),
            ("ballot_tokens", "used_at"),
            ("ballot_batches", "received_at"),
            ("ballot_batches", "registered_at"),
        ):
            finer = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE workflow_id = $1 "
                f"AND {column} <> date_trunc('day', {column})",
                wf,
            )
            assert finer == 0, (table, column)
        # No sequence in any ballot table to order its rows by.
        serial = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('ballot_marks', 'ballot_receipts', 'ballot_pool', "
            "'ballot_tokens', 'ballot_batches') AND column_default LIKE 'nextval%'"
        )
        assert serial == []
        # Batches: one rater group each, as many as the pool gathers (never fewer than the
        # minimum) but for a group's last.
        batches = await conn.fetch(
            "SELECT sheets_by_group::text AS g, sheets FROM ballot_batches WHERE workflow_id = $1",
            wf,
        )
        per_group: dict[str, list[int]] = {}
        for b in batches:
            (group,) = json.loads(b["g"])
            per_group.setdefault(group, []).append(b["sheets"])
        for group, sizes in per_group.items():
            assert sum(sizes) == {"A": 60, "B": 120, "C": 120}[group]
            assert sum(n < FLUSH_AT for n in sizes) <= 1, (group, sizes)
            assert FLUSH_AT >= K
        # Each batch's checksum (PostgreSQL's, ballot_pool_let_go) is marks_checksum's over
        # its marks, sheet by sheet, each sheet's marks in the order they were written.
        for b in await conn.fetch(
            "SELECT batch_id, checksum FROM ballot_batches WHERE workflow_id = $1", wf
        ):
            rows = await conn.fetch(
                "SELECT sheet_no, kind, target_id, item, option FROM ballot_marks "
                "WHERE workflow_id = $1 AND batch_id = $2 ORDER BY sheet_no, ctid",
                wf,
                b["batch_id"],
            )
            by_sheet: dict[int, list[tuple[str, str, str, str]]] = {}
            for r in rows:
                by_sheet.setdefault(r["sheet_no"], []).append(tuple(r.values())[1:])
            assert sorted(by_sheet) == list(range(len(by_sheet)))
            assert marks_checksum(by_sheet.values()) == b["checksum"], b["batch_id"]
        assert await conn.fetchval("SELECT count(*) FROM ballot_pool WHERE workflow_id=$1", wf) == 0
        receipts = await counted_receipts(conn, wf)
    assert receipts is not None and len(set(receipts)) == 300

    # No token in the history, as stored or decoded, nor in anything logged.
    history = await handle.fetch_history()
    raw = history.to_json()
    codec = client.data_converter.payload_codec
    assert codec is not None
    decoded = "".join(
        p.data.decode(errors="replace") for p in await codec.decode(_payloads(history))
    )
    assert unit.unit_id in decoded  # decoding worked: the unit's input reads in clear
    logged = "".join(capfd.readouterr())
    some = [t for t, _ in cast[:50]]
    for where, text in (("history", raw), ("decoded history", decoded), ("logs", logged)):
        assert not [t for t in some if t in text], where


def _payloads(history: Any) -> list[Any]:
    """Every Payload in the history's events (inputs, results, signals, updates, headers)."""
    found = []

    def walk(message: Any) -> None:
        for field, value in message.ListFields():
            kind = field.message_type
            if kind is None:
                continue
            if kind.GetOptions().map_entry:
                values = list(value.values())
                kind = kind.fields_by_name["value"].message_type
                if kind is None:
                    continue
            else:
                values = [value] if isinstance(value, Message) else list(value)
            for v in values:
                if kind.name == "Payload":
                    found.append(v)
                else:
                    walk(v)

    for event in history.events:
        walk(event)
    return found


async def _grant(pool: asyncpg.Pool, campaign: str, unit: str) -> None:
    async with pool.acquire() as conn:
        for principal, role in (("ballots-sys", Role.INTEGRATOR), ("office", Role.UNIT)):
            await grant(conn, Binding(campaign, principal, role, unit), "test")


async def test_the_api_takes_a_ballot_systems_sheets_and_refuses_the_rest(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id="test", policy=TEST_POLICY)
    await _grant(pool, "test", unit.unit_id)
    await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.EVALUATION)
    issued = await tokens(handle.id)
    rng = random.Random(1)
    sheet = {
        g: [sheet_for(t, unit, TEST_POLICY.ballots, rng).model_dump(mode="json") for t in ts]
        for g, ts in issued.items()
    }
    url = f"{api.url}/v1/campaigns/test/units/{unit.unit_id}/ballots"
    system = api.token("ballots-sys")
    async with httpx.AsyncClient(timeout=30) as http:
        first = {"idempotency_key": "b1", "sheets": sheet["A"]}
        r = await http.post(url, json=first, headers=system)
        assert r.status_code == 200, r.text
        receipts = r.json()["receipts"]
        assert len(set(receipts)) == 2 and all(len(c) == 14 for c in receipts)
        # A retry is answered again; the same tokens under another key are spent.
        again = await http.post(url, json=first, headers=system)
        assert again.json()["receipts"] == receipts and again.json()["duplicate"]
        spent = await http.post(url, json={**first, "idempotency_key": "b2"}, headers=system)
        assert spent.status_code == 409 and "sheets[0].token: already used" in spent.text
        # Not a token of this unit; a sheet for a cadre the unit has not.
        foreign = {**sheet["B"][0], "token": "x" * 22}
        r = await http.post(
            url, json={"idempotency_key": "b3", "sheets": [foreign]}, headers=system
        )
        assert r.status_code == 409 and "not issued for this unit" in r.text
        # The wrong role, and the old way through the unit.
        r = await http.post(
            url, json={"idempotency_key": "b4", "sheets": sheet["B"]}, headers=api.token("office")
        )
        assert r.status_code == 403, r.text
        old = await http.post(
            f"{api.url}/v1/campaigns/test/units/{unit.unit_id}/actions/record_ballots",
            json={"idempotency_key": "b5", "sheets": sheet["B"]},
            headers=system,
        )
        assert old.status_code == 404 and "/ballots" in old.text
        # Group A's tokens are all spent: its two sheets counted as one batch, already.
        s = await handle.query(UnitAssessment.status)
        assert s.evaluation.sheets == 2 and s.evaluation.tallies == []  # none while open
        # The unit itself takes no sheet, even from a client holding kaohe's keys.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                "record_ballots",
                {"idempotency_key": "x", "batch_id": "x", "sheets": sheet["B"]},
            )
    await handle.execute_update(
        UnitAssessment.close_evaluation,
        {"idempotency_key": "close", "actor": {"id": "group", "role": "assessment_group"}},
    )
    async with httpx.AsyncClient(timeout=30) as http:
        late = await http.post(
            url, json={"idempotency_key": "b6", "sheets": sheet["B"]}, headers=system
        )
    assert late.status_code == 409 and "evaluation" in late.text
    async with pool.acquire() as conn:
        assert sorted(await counted_receipts(conn, handle.id) or []) == sorted(receipts)
    closed = await handle.query(UnitAssessment.status)
    # Fewer than the minimum in every group: no count by group is shown.
    assert closed.evaluation.tallies and all(not t.by_group for t in closed.evaluation.tallies)


async def test_a_sheet_for_the_wrong_ballot_spends_nothing(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, policy=TEST_POLICY)
    await drive_unit(client, handle.id, unit, tokens=tokens, stop_at=Stage.EVALUATION)
    token = (await tokens(handle.id))["A"][0]
    bad = sheet_for(token, unit, TEST_POLICY.ballots, random.Random(2))
    bad.cadres[0].cadre_id = "nobody"
    intake = BallotIntake(client, pool)
    with pytest.raises(SheetsRefused, match=r"sheets\[0\]\.cadres\[0\]"):
        await intake.submit(handle.id, [bad], submission_key("t", token))
    good = sheet_for(token, unit, TEST_POLICY.ballots, random.Random(2))
    taken = await intake.submit(handle.id, [good], submission_key("t2", token))
    assert len(taken.receipts) == 1  # the token was still unspent
