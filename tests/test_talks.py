"""Talk content never in history (issue 20): a talk goes to kaohe's API, which stores its
content encrypted in PostgreSQL and sends the unit only a reference, the digest and the
metadata. On the real stack: a marker in a talk's content is in no payload of the unit's
history (raw or decoded with the workers' codec) and in no log line; a record_talk carrying
content is refused naming `content`; a reference with a wrong digest, of another unit or of
no talk is refused; the unit's assessment group reads the talk (and leaves an audit row),
anyone else is refused."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from kaohe.access.bindings import Binding, grant
from kaohe.codec.payloads import codec_from_settings
from kaohe.sim.simulate import GROUP, TalkStore, TokenSource, drive_unit, talk_by_reference
from schemas.common import Role, Stage
from schemas.messages import ActionResult
from schemas.talks import Talk, talk_digest
from tests.conftest import ApiStack, Stack
from tests.helpers import sample_unit, start_unit
from tests.test_cli import akaohe
from tests.test_codec import payloads_in
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(240)

CAMPAIGN = "talks"
PROBLEM = "application/problem+json"


def _talk(key: str, talk_id: str, content: str, role: str = "中层干部") -> Talk:
    return Talk(
        idempotency_key=key,
        talk_id=talk_id,
        interviewer="考核组 王组长",
        interviewee_role=role,
        talk_date=dt.date(2026, 12, 15),
        content=content,
    )


def _base(api: ApiStack, unit: str) -> str:
    return f"{api.url}/v1/campaigns/{CAMPAIGN}/units/{unit}"


async def _unit_at_talks(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> tuple[WorkflowHandle, str]:
    """A unit in its talks (two planned), its group, office and department bound."""
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id=CAMPAIGN)
    u = unit.unit_id
    async with pool.acquire() as conn:
        for principal, role in (
            (f"group-{u}", Role.ASSESSMENT_GROUP),
            (f"office-{u}", Role.UNIT),
            (f"approver-{u}", Role.APPROVER),
        ):
            await grant(conn, Binding(CAMPAIGN, principal, role, u), "test")
        await grant(conn, Binding(CAMPAIGN, "dept-talks", Role.DEPARTMENT), "test")
    status = await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
    assert status.stage == Stage.TALKS
    return handle, u


async def _history_bytes(stack: Stack, handle: WorkflowHandle) -> tuple[bytes, bytes]:
    """Every payload of the unit's history as the server keeps it, and decoded with the
    workers' payload codec (what the UI would show with its codec)."""
    history = await handle.fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    raw += history.to_json().encode()
    found = [p for event in history.events for _, p in payloads_in(event)]
    codec = codec_from_settings(stack.settings)
    assert codec is not None and found
    decoded = b"".join(p.data for p in await codec.decode(found))
    return raw, decoded


async def _recorded(handle: WorkflowHandle) -> int:
    return (await handle.query(UnitAssessment.status)).talks.recorded


async def test_a_talk_through_the_api_leaves_no_content_in_history_or_logs(
    stack: Stack,
    api: ApiStack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    capfd: pytest.CaptureFixture[str],
) -> None:
    handle, u = await _unit_at_talks(client, worker, pool, tokens)
    marker = f"TALK-MARKER-{uuid.uuid4().hex}"
    content = f"谈话内容(保密) {marker}"
    body = _talk("talk-1", "t1", content).model_dump(mode="json")
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{_base(api, u)}/talks", json=body, headers=api.token(f"group-{u}"))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["accepted"] and not answer["duplicate"] and answer["stage"] == "talks"
        assert answer["digest"] == talk_digest(content)
        ref = answer["talk_ref"]
        # Sent again with the same key: the same talk, stored once, and the first answer.
        again = await http.post(
            f"{_base(api, u)}/talks", json=body, headers=api.token(f"group-{u}")
        )
        assert again.status_code == 200, again.text
        assert again.json() == answer
        # The same key for another talk is refused, naming it.
        other = {**body, "content": "另一次谈话"}
        clash = await http.post(
            f"{_base(api, u)}/talks", json=other, headers=api.token(f"group-{u}")
        )
        assert clash.status_code == 409 and clash.json()["field"] == "idempotency_key"
    assert await _recorded(handle) == 1

    raw, decoded = await _history_bytes(stack, handle)
    assert marker.encode() not in raw and marker.encode() not in decoded
    assert content.encode() not in decoded and "谈话内容".encode() not in decoded
    # What the unit received: the reference and the digest.
    assert ref.encode() in decoded and talk_digest(content).encode() in decoded

    # Stored encrypted, bound to its unit and reference.
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM talk_store WHERE workflow_id = $1", handle.id)
            == 1
        )
        row = await conn.fetchrow("SELECT * FROM talk_store WHERE talk_ref = $1", ref)
        counted = await conn.fetchrow("SELECT * FROM talks WHERE talk_ref = $1", ref)
    assert row["workflow_id"] == handle.id and marker.encode() not in row["ciphertext"]
    assert row["stored_by"] == f"group-{u}"
    assert counted["talk_id"] == "t1" and counted["ciphertext"] is None

    logs = capfd.readouterr()
    assert ref in logs.out + logs.err  # the worker's "talk recorded" line was captured
    assert marker not in logs.out + logs.err


async def test_record_talk_with_content_is_refused_naming_it(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    handle, u = await _unit_at_talks(client, worker, pool, tokens)
    payload: dict[str, Any] = {
        "idempotency_key": "straight",
        "actor": GROUP.model_dump(mode="json"),
        "talk_id": "t1",
        "interviewer": "考核组",
        "interviewee_role": "中层干部",
        "talk_date": "2026-12-15",
        "content": "谈话内容 straight to Temporal",
    }
    # Straight to Temporal with a signed client (the operators' tools): the validator
    # refuses it, naming the field, before it is written to history.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("record_talk", payload, result_type=ActionResult)
    assert "content" in str(refused.value.cause)
    # With a reference as well, still refused: there is no content field at all.
    with_ref = {**payload, "talk_ref": f"talk-{'0' * 32}", "digest": "0" * 64}
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("record_talk", with_ref, result_type=ActionResult)
    assert "content" in str(refused.value.cause)
    # Through kaohe's action route: 422 naming content, nothing sent to the unit.
    body = {k: v for k, v in with_ref.items() if k != "actor"}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{_base(api, u)}/actions/record_talk", json=body, headers=api.token(f"group-{u}")
        )
    assert r.status_code == 422 and r.json()["field"] == "content", r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert await _recorded(handle) == 0
    history = await handle.fetch_history()
    assert b"straight to Temporal" not in b"".join(e.SerializeToString() for e in history.events)


async def test_a_reference_that_does_not_match_is_refused(
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    handle, _ = await _unit_at_talks(client, worker, pool, tokens)
    elsewhere = await start_unit(client, worker, sample_unit(), campaign_id=CAMPAIGN)
    await handle.query(UnitAssessment.status)
    await elsewhere.query(UnitAssessment.status)  # registered: its talks can be stored

    talk = _talk("t1", "t1", "谈话内容 one")
    stored = await talks(handle.id, talk)
    reference = talk_by_reference(talk, stored)

    async def refusal(update: Any) -> str:
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(UnitAssessment.record_talk, update)
        assert isinstance(refused.value.cause, ApplicationError)
        return refused.value.cause.message

    wrong_digest = reference.model_copy(
        update={"digest": talk_digest("谈话内容 other"), "idempotency_key": "k2"}
    )
    assert (await refusal(wrong_digest)).startswith("digest: ")
    theirs = await talks(elsewhere.id, talk)
    foreign = reference.model_copy(update={"talk_ref": theirs.talk_ref, "idempotency_key": "k3"})
    message = await refusal(foreign)
    assert message.startswith("talk_ref: ") and "another unit" in message, message
    unknown = reference.model_copy(
        update={"talk_ref": f"talk-{uuid.uuid4().hex}", "idempotency_key": "k4"}
    )
    assert (await refusal(unknown)).startswith("talk_ref: no talk")
    other_role = reference.model_copy(
        update={"interviewee_role": "班子成员", "idempotency_key": "k5"}
    )
    assert (await refusal(other_role)).startswith("interviewee_role: ")
    assert await _recorded(handle) == 0
    # The right reference is taken, and counted once.
    result = await handle.execute_update(UnitAssessment.record_talk, reference)
    assert result.accepted and await _recorded(handle) == 1
    async with pool.acquire() as conn:
        n = await conn.fetchval("SELECT count(*) FROM talks WHERE workflow_id = $1", handle.id)
    assert n == 1


async def test_the_assessment_group_reads_a_talk_and_nobody_else(
    api: ApiStack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    handle, u = await _unit_at_talks(client, worker, pool, tokens)
    other, v = await _unit_at_talks(client, worker, pool, tokens)
    talk = _talk("t1", "t1", "谈话内容(保密) 读")
    stored = await talks(handle.id, talk)
    await handle.execute_update(UnitAssessment.record_talk, talk_by_reference(talk, stored))

    url = f"{_base(api, u)}/talks/{stored.talk_ref}"
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(url, headers=api.token(f"group-{u}"))
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["content"] == talk.content and view["talk_id"] == "t1"
        assert view["digest"] == stored.digest and view["recorded"] is True

        refused = {
            "the unit's office": await http.get(url, headers=api.token(f"office-{u}")),
            "the approver": await http.get(url, headers=api.token(f"approver-{u}")),
            "the department": await http.get(url, headers=api.token("dept-talks")),
            "another unit's group": await http.get(url, headers=api.token(f"group-{v}")),
        }
        for who, answer in refused.items():
            assert answer.status_code == 403, (who, answer.text)
            assert answer.headers["content-type"].startswith(PROBLEM), who
            assert "assessment_group" in answer.json()["detail"], who
            assert talk.content not in answer.text, who
        # Another unit's group asking on its own unit for this talk: there is none there.
        mine = await http.get(
            f"{_base(api, v)}/talks/{stored.talk_ref}", headers=api.token(f"group-{v}")
        )
        assert mine.status_code == 404 and talk.content not in mine.text
        anonymous = await http.get(url)
        assert anonymous.status_code == 401
        malformed = await http.get(
            f"{_base(api, u)}/talks/not-a-ref", headers=api.token(f"group-{u}")
        )
        assert malformed.status_code == 422 and malformed.json()["field"] == "talk_ref"

    async with pool.acquire() as conn:
        reads = await conn.fetch(
            "SELECT actor_id, actor_role, detail FROM audit_log "
            "WHERE workflow_id = $1 AND kind = 'talk_read'",
            handle.id,
        )
        denied = await conn.fetch(
            "SELECT detail FROM audit_log WHERE workflow_id = $1 AND kind = 'api_refused'",
            handle.id,
        )
    assert [(r["actor_id"], r["actor_role"]) for r in reads] == [(f"group-{u}", "assessment_group")]
    assert json.loads(reads[0]["detail"])["talk_ref"] == stored.talk_ref
    attempts = [json.loads(d["detail"]) for d in denied]
    assert {a["principal"] for a in attempts if a["attempted"] == "read_talk"} >= {
        f"office-{u}",
        f"approver-{u}",
        f"group-{v}",
    }
    assert other.id != handle.id


async def test_kaohe_talks_show_reads_through_the_api_as_the_group(
    stack: Stack,
    api: ApiStack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
) -> None:
    handle, u = await _unit_at_talks(client, worker, pool, tokens)
    talk = _talk("t1", "t1", f"谈话内容(保密) cli-{uuid.uuid4().hex}")
    stored = await talks(handle.id, talk)
    await handle.execute_update(UnitAssessment.record_talk, talk_by_reference(talk, stored))

    def as_(principal: str) -> dict[str, str]:
        return {"KAOHE_API_URL": api.url, "KAOHE_API_TOKEN": api.issuer.mint(principal)}

    shown = await akaohe(stack, "talks", "show", handle.id, stored.talk_ref, env=as_(f"group-{u}"))
    assert shown.returncode == 0, shown.stderr
    assert talk.content in shown.stdout and stored.talk_ref in shown.stdout
    as_json = await akaohe(
        stack, "talks", "show", f"{CAMPAIGN}/{u}", stored.talk_ref, "--json", env=as_(f"group-{u}")
    )
    assert json.loads(as_json.stdout)["content"] == talk.content
    office = await akaohe(
        stack, "talks", "show", handle.id, stored.talk_ref, env=as_(f"office-{u}")
    )
    assert office.returncode == 1 and "403" in office.stderr and "assessment_group" in office.stderr
    assert talk.content not in office.stdout + office.stderr
    no_token = await akaohe(stack, "talks", "show", handle.id, stored.talk_ref)
    assert no_token.returncode == 2 and "KAOHE_API_TOKEN" in no_token.stderr
    async with pool.acquire() as conn:
        readers = await conn.fetch(
            "SELECT actor_id FROM audit_log WHERE workflow_id = $1 AND kind = 'talk_read'",
            handle.id,
        )
    assert [r["actor_id"] for r in readers] == [f"group-{u}", f"group-{u}"]
