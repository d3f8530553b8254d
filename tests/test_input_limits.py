"""Input limits at every door (issue 21 item 1), on the real servers: each attack as the
attacker sends it (straight to Temporal, carrying kaohe's assertion as the test client does,
or to kaohe's API), then a clear rejection naming the field or the limit, no failed workflow
task, and a later valid update taken promptly. And the `retryable` flag: false for what would
be refused again, true only for storage that was unavailable (a real outage: the worker's
database connection runs through a proxy the test stops)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

import kaohe
from activities.db import create_pool, permanent
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from kaohe.access import api_keys
from kaohe.access.bindings import Binding, grant
from kaohe.api.app import MAX_BODY_BYTES
from kaohe.ingest.ballot_csv import parse_ballot_csv, write_ballot_csv
from kaohe.ingest.roster_io import RosterError, load_roster
from kaohe.interceptors import Assertions
from kaohe.sim.simulate import DEPARTMENT, UNIT_CONTACT, sheet_for, wait_for_status
from schemas.common import Role, Stage
from schemas.limits import (
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    first_bad_text,
    json_shape_problem,
)
from schemas.messages import AcknowledgeNotice, ActionResult
from schemas.policy import BallotPolicy
from schemas.status import UnitStatus
from schemas.workflow_io import AuditRecord, UnitRef
from tests.conftest import ApiStack, Stack
from tests.helpers import sample_unit, start_unit
from worker import build_worker
from workflows.unit import UnitAssessment
from workflows.unit.io import STORAGE_ATTEMPTS

ACTOR = UNIT_CONTACT.model_dump(mode="json")
PROMPTLY = 10.0  # seconds a later valid update may take


def raw(data: bytes) -> RawValue:
    """A payload exactly as an attacker's bytes: no converter in between."""
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=data))


async def _started(client: Client, worker: str) -> WorkflowHandle:
    handle = await start_unit(client, worker, sample_unit())
    await wait_for_status(handle, lambda s: bool(s.history))
    return handle


async def _no_failed_task(handle: WorkflowHandle) -> None:
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds


async def _still_takes_updates(handle: WorkflowHandle, key: str = "valid") -> None:
    ok = await asyncio.wait_for(
        handle.execute_update(
            UnitAssessment.acknowledge_notice,
            AcknowledgeNotice(idempotency_key=key, actor=UNIT_CONTACT),
        ),
        PROMPTLY,
    )
    assert ok.accepted and ok.stage == Stage.REPORT_BACK
    await _no_failed_task(handle)


async def _refused(handle: WorkflowHandle, name: str, payload: Any) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await asyncio.wait_for(
            handle.execute_update(name, payload, result_type=ActionResult), PROMPTLY
        )
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def _rejected_signal(handle: WorkflowHandle, count: int = 1) -> UnitStatus:
    status = await wait_for_status(handle, lambda s: len(s.rejected_signals) >= count)
    assert len(status.rejected_signals) >= count, status.rejected_signals
    return status


async def _audit_rows(pool: asyncpg.Pool, workflow_id: str, kind: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT detail FROM audit_log WHERE workflow_id = $1 AND kind = $2 ORDER BY id",
            workflow_id,
            kind,
        )
    return [json.loads(r["detail"]) for r in rows]


# ---- straight to Temporal --------------------------------------------------------------------


async def test_nul_note_by_update_is_refused_naming_the_field(client: Client, worker: str) -> None:
    handle = await _started(client, worker)
    cause = await _refused(
        handle,
        "acknowledge_notice",
        {"idempotency_key": "nul-note", "actor": ACTOR, "note": "a\u0000b"},
    )
    assert cause.message.startswith("note:") and "NUL" in cause.message, cause.message
    assert cause.non_retryable  # retryable: false
    await _still_takes_updates(handle)


async def test_nul_idempotency_key_by_signal_is_a_recorded_rejection(
    client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle = await _started(client, worker)
    await handle.signal("acknowledge_notice", {"idempotency_key": "\u0000", "actor": ACTOR})
    status = await _rejected_signal(handle)
    rejection = status.rejected_signals[0]
    assert rejection.reason.startswith("idempotency_key:") and "NUL" in rejection.reason
    assert rejection.idempotency_key == "\\u0000" and not rejection.retryable
    rows = await _audit_rows(pool, handle.id, "signal_rejected")
    assert rows and rows[0]["idempotency_key"] == "\\u0000", rows
    assert status.storage_failures == []
    await _still_takes_updates(handle)


def _nested(depth: int) -> bytes:
    """A 10 kB action whose note is `depth` lists deep."""
    return (
        b'{"idempotency_key": "deep", "actor": '
        + json.dumps(ACTOR).encode()
        + b', "note": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


async def test_deeply_nested_signal_and_update_are_refused_naming_the_limit(
    client: Client, worker: str
) -> None:
    handle = await _started(client, worker)
    deep = _nested(5_000)
    assert 10_000 <= len(deep) < 11_000
    await handle.signal("acknowledge_notice", raw(deep))
    status = await _rejected_signal(handle)
    reason = status.rejected_signals[0].reason
    assert f"nested deeper than the limit of {MAX_JSON_DEPTH} levels" in reason, reason
    cause = await _refused(handle, "acknowledge_notice", raw(deep))
    assert f"limit of {MAX_JSON_DEPTH} levels" in cause.message and cause.non_retryable
    # Within the limit, the model names the field.
    cause = await _refused(handle, "acknowledge_notice", raw(_nested(MAX_JSON_DEPTH - 1)))
    assert cause.message.startswith("note:"), cause.message
    await _still_takes_updates(handle)


async def test_oversize_field_is_refused_naming_the_field(client: Client, worker: str) -> None:
    handle = await _started(client, worker)
    payload = {
        "idempotency_key": "big",
        "actor": ACTOR,
        "kind": "team",
        "title": "年度总结",
        "text": "长" * (MAX_TEXT_CHARS + 1),
    }
    cause = await _refused(handle, "submit_report", payload)
    assert cause.message.startswith("text:"), cause.message[:200]
    assert f"at most {MAX_TEXT_CHARS} characters" in cause.message and cause.non_retryable
    assert len(cause.message) < 500  # never an echo of the input
    await handle.signal("submit_report", payload)
    status = await _rejected_signal(handle)
    assert status.rejected_signals[0].reason.startswith("text:")
    assert not status.rejected_signals[0].retryable
    await _still_takes_updates(handle)


async def test_wrong_stage_is_not_retryable(client: Client, worker: str) -> None:
    handle = await _started(client, worker)
    department = DEPARTMENT.model_dump(mode="json")
    close = {"idempotency_key": "early", "actor": department, "stage": "talks", "reason": "太早了"}
    cause = await _refused(handle, "close_stage", close)
    assert "current stage" in cause.message and cause.non_retryable, cause.message
    report = {"idempotency_key": "r", "actor": ACTOR, "kind": "team", "title": "总结", "text": "."}
    cause = await _refused(handle, "submit_report", report)
    assert "stage 'notice'" in cause.message and cause.non_retryable, cause.message
    await handle.signal("submit_report", report)
    status = await _rejected_signal(handle)
    assert "stage 'notice'" in status.rejected_signals[0].reason
    assert not status.rejected_signals[0].retryable
    await _still_takes_updates(handle)


_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6) | st.sampled_from(
    ["\x00", "\ud800", "a\udfffb", "\\u0000", "\\ud800", "\u0000x"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON, st.sampled_from(["ascii", "utf-8", "utf-16", "utf-32"]))
def test_the_raw_bytes_shortcut_finds_what_the_walk_finds(value: Any, encoding: str) -> None:
    """first_bad_text(value, raw) skips the walk only when the bytes cannot hold a NUL, a
    surrogate or a long text: it answers as the walk does, however the JSON was encoded."""
    if encoding == "ascii":
        raw = json.dumps(value).encode()
    else:
        text = json.dumps(value, ensure_ascii=False)
        raw = text.encode(encoding, "surrogatepass")
    assert first_bad_text(json.loads(raw), raw) == first_bad_text(json.loads(raw))


def test_shape_check_reads_bytes_without_recursion() -> None:
    assert json_shape_problem(b"[" * 1_000_000) is not None
    assert json_shape_problem(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\""}') is None
    over = json_shape_problem(b" " * (MAX_PAYLOAD_BYTES + 1))
    assert over is not None and f"limit of {MAX_PAYLOAD_BYTES} bytes" in over


async def test_what_the_database_refuses_is_permanent(pool: asyncpg.Pool) -> None:
    """A write PostgreSQL refuses (a NUL in jsonb) fails as non-retryable StorageRefused."""
    storage = StorageActivities(pool)
    ref = UnitRef(
        workflow_id=f"kaohe-limits-{uuid.uuid4().hex[:8]}",
        campaign_id="limits",
        unit_id="u",
        stage=Stage.NOTICE,
    )
    record = AuditRecord(ref=ref, event_key="nul", kind="test", detail={"x": "a\u0000b"})
    with pytest.raises(asyncpg.DataError) as info:
        await storage.append_audit(record)
    refused = permanent(info.value)
    assert refused is not None and refused.non_retryable and refused.type == "StorageRefused"
    assert permanent(ConnectionRefusedError()) is None  # transient: retried


# ---- a real outage: retried up to the cap, surfaced, and then taken again ------------------


class Proxy:
    """A TCP proxy to PostgreSQL that the test can stop (connections cut, new ones refused)
    and start again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_storage_outage_is_retryable_recorded_and_survived(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, api: ApiStack
) -> None:
    url = urlsplit(stack.database_url)
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
    outage_pool = await create_pool(proxied, 1, 4)
    checks = next(i for i in client.config()["interceptors"] if isinstance(i, Assertions))
    on_refused = checks.on_refused  # build_worker sets it; the session's worker keeps its own
    queue = f"limits-{uuid.uuid4().hex[:8]}"
    w = build_worker(client, StorageActivities(outage_pool), NotifyActivities(pool), queue)
    checks.on_refused = on_refused
    try:
        async with w:
            handle = await _started(client, queue)
            for _ in range(100):  # registered: the unit's row is stored
                async with pool.acquire() as conn:
                    if await conn.fetchval(
                        "SELECT count(*) FROM audit_log WHERE workflow_id = $1 AND kind = "
                        "'transition'",
                        handle.id,
                    ):
                        break
                await asyncio.sleep(0.1)
            await proxy.stop()  # PostgreSQL unreachable for this worker
            loop = asyncio.get_running_loop()
            began = loop.time()
            ack = AcknowledgeNotice(idempotency_key="in-outage", actor=UNIT_CONTACT)
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update(UnitAssessment.acknowledge_notice, ack)
            took = loop.time() - began
            cause = info.value.cause
            assert isinstance(cause, ApplicationError)
            assert cause.type == "StorageUnavailable" and not cause.non_retryable  # retryable
            assert f"failed {STORAGE_ATTEMPTS} times" in cause.message, cause.message
            assert 10 < took < 60, took  # retried up to the cap, then surfaced
            status = await handle.query(UnitAssessment.status)
            assert status.stage == Stage.NOTICE and status.storage_failure_count == 1
            failure = status.storage_failures[0]
            assert failure.retryable and failure.during == "acknowledge_notice"
            assert failure.activity == "save_acknowledgement"
            # Through kaohe's API: 503, retryable, Retry-After.
            u = status.unit_id
            async with pool.acquire() as conn:
                await grant(conn, Binding("test", "oa-outage", Role.INTEGRATOR, u), "test")
                key = await api_keys.create_key(conn, "oa-outage", "test")
            url = f"{api.url}/v1/campaigns/test/units/{u}/actions/acknowledge_notice"
            system = {"X-Api-Key": key}
            async with httpx.AsyncClient(timeout=90) as http:
                r = await http.post(url, json={"idempotency_key": "api-ack"}, headers=system)
            assert r.status_code == 503, r.text
            problem = r.json()
            assert problem["retryable"] is True and problem["type"].endswith("storage-unavailable")
            assert "Retry-After" in r.headers

            await proxy.start()  # the database is back
            # The failure's audit row (written in the background, retried meanwhile) and the
            # department's notification.
            for _ in range(300):
                rows = await _audit_rows(pool, handle.id, "storage_failed")
                if rows:
                    break
                await asyncio.sleep(0.1)
            assert rows and rows[0]["during"] == "acknowledge_notice", rows
            async with pool.acquire() as conn:
                notified = await conn.fetchval(
                    "SELECT count(*) FROM notification_deliveries "
                    "WHERE idempotency_key = $1 AND recipient = 'organization-department'",
                    f"{handle.id}:storage-failed-1",
                )
            assert notified == 1
            # The same request, sent again through the API, is taken promptly (Temporal keeps
            # the first attempt's failure under its update id: the API asks again under the
            # next).
            began = loop.time()
            async with httpx.AsyncClient(timeout=90) as http:
                r = await http.post(url, json={"idempotency_key": "api-ack"}, headers=system)
            assert r.status_code == 200 and r.json()["stage"] == "report_back", r.text
            assert loop.time() - began < PROMPTLY
            # And the failed update, sent again straight to Temporal: a duplicate of nothing,
            # refused only as the wrong stage now (the unit moved on).
            cause = await _refused(handle, "acknowledge_notice", ack.model_dump(mode="json"))
            assert "stage 'report_back'" in cause.message and cause.non_retryable
            await _no_failed_task(handle)
            status = await handle.query(UnitAssessment.status)
            assert status.storage_failure_count == 2
            await handle.terminate("test over")  # before its worker goes
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()
        await outage_pool.close()


# ---- kaohe's API ---------------------------------------------------------------------------


async def test_api_refuses_oversize_deep_and_nul_bodies(
    api: ApiStack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    campaign = "limits"
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id=campaign)
    async with pool.acquire() as conn:
        await grant(conn, Binding(campaign, "oa-limits", Role.INTEGRATOR, unit.unit_id), "test")
        key = await api_keys.create_key(conn, "oa-limits", "test")
    base = f"{api.url}/v1/campaigns/{campaign}/units/{unit.unit_id}/actions"
    system = {"X-Api-Key": key}
    async with httpx.AsyncClient(timeout=30) as http:
        big = b'{"idempotency_key": "big", "note": "' + b"x" * MAX_BODY_BYTES + b'"}'
        r = await http.post(f"{base}/acknowledge_notice", content=big, headers=system)
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["limit"] == MAX_BODY_BYTES and str(MAX_BODY_BYTES) in r.json()["detail"]

        deep = b'{"idempotency_key": "deep", "note": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        r = await http.post(f"{base}/acknowledge_notice", content=deep, headers=system)
        assert r.status_code == 422, r.text
        assert f"limit of {MAX_JSON_DEPTH} levels" in r.json()["detail"]

        nul = {"idempotency_key": "nul", "note": "a\u0000b"}
        r = await http.post(f"{base}/acknowledge_notice", json=nul, headers=system)
        assert r.status_code == 422 and r.json()["field"] == "note", r.text
        assert "NUL" in r.json()["detail"]
        nul_key = {"idempotency_key": "k", "x\u0000": 1}
        r = await http.post(f"{base}/acknowledge_notice", json=nul_key, headers=system)
        assert r.status_code == 422 and r.json()["field"] == "x\\u0000", r.text

        r = await http.post(
            f"{api.url}/v1/campaigns/{campaign}/units/a%00b/actions/acknowledge_notice",
            json={"idempotency_key": "k"},
            headers=system,
        )
        assert r.status_code == 422 and r.json()["field"] == "unit", r.text

        # The unit's own rejection (the wrong stage) says it would be refused again.
        report = {"idempotency_key": "early", "kind": "team", "title": "总结", "text": "."}
        r = await http.post(f"{base}/submit_report", json=report, headers=system)
        assert r.status_code == 409 and r.json()["retryable"] is False, r.text

        r = await http.post(
            f"{base}/acknowledge_notice", json={"idempotency_key": "ok"}, headers=system
        )
        assert r.status_code == 200 and r.json()["stage"] == "report_back", r.text
    await _no_failed_task(handle)


# ---- the imports ---------------------------------------------------------------------------


def test_roster_import_refuses_nul_naming_the_field(tmp_path: Path) -> None:
    text = (Path(kaohe.__file__).parent / "samples" / "demo-roster.yaml").read_text()
    path = tmp_path / "roster.yaml"
    path.write_text(text.replace("name: 张明", 'name: "张\\0明"'), encoding="utf-8")
    with pytest.raises(RosterError) as info:
        load_roster(path)
    assert info.value.problems == [
        "units[0].cadres[0].name: contains a NUL character (U+0000), which no text may hold"
    ]


def test_ballot_csv_import_refuses_nul_naming_line_and_column(tmp_path: Path) -> None:
    unit, policy = sample_unit(cadres=1), BallotPolicy()
    path = tmp_path / "b.csv"
    write_ballot_csv(path, [("1", sheet_for("t" * 20, unit, policy, random.Random(0)))])
    assert parse_ballot_csv(path, unit, policy).problems == []
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace("t" * 20, "t" * 19 + "\x00")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = [str(p) for p in parse_ballot_csv(path, unit, policy).problems]
    assert "line 3: token: contains a NUL character (U+0000), which no text may hold" in problems
