"""Payload encryption: the codec and its keyring, history without plaintext on the real
servers, and the dev server told where the UI decodes (kaohe's API: tests/test_codec_api.py)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from kaohe.access import api_keys
from kaohe.access.bindings import Binding, grant
from kaohe.client import data_converter
from kaohe.codec.payloads import (
    ENCODING,
    KEY_FILE_NAME,
    EncryptionCodec,
    Keyring,
    PayloadKeyError,
    codec_from_settings,
    format_key,
)
from kaohe.devstack.temporal import TemporalDevServer
from kaohe.settings import Settings
from kaohe.sim.simulate import TalkStore, TokenSource, proposal_for, sheet_for, talk_by_reference
from schemas.common import Role
from schemas.messages import ActionResult
from schemas.policy import BallotPolicy
from schemas.talks import Talk
from tests.conftest import ApiStack, Stack
from tests.helpers import cast, sample_unit, start_unit
from tests.record_histories import load, recorded
from worker import WORKFLOWS, sandbox_runner

K1, K2 = os.urandom(32), os.urandom(32)


def plain(data: bytes, encoding: bytes = b"json/plain") -> Payload:
    return Payload(metadata={"encoding": encoding}, data=data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the codec -------------------------------------------------------------------------------


async def test_round_trip() -> None:
    codec = EncryptionCodec(Keyring([("k1", K1)]))
    original = [plain('{"content": "谈话内容 SECRET"}'.encode()), plain(b"", b"binary/null")]
    encoded = await codec.encode(original)
    assert len(encoded) == 2
    for p in encoded:
        assert p.metadata["encoding"] == b"binary/encrypted"
        assert p.metadata["encryption-key-id"] == b"k1"
        assert b"SECRET" not in p.data and "谈话".encode() not in p.data
    assert encoded[0].data[:12] != (await codec.encode(original[:1]))[0].data[:12]  # fresh nonce
    assert await codec.decode(encoded) == original


async def test_data_converter_round_trip(tmp_path: Path) -> None:
    converter = data_converter(Settings(data_dir=tmp_path, payload_keys=format_key("k1", K1)))
    [payload] = await converter.encode([ActionResult(accepted=True, stage="talks", message="m")])
    assert payload.metadata["encoding"] == ENCODING
    [value] = await converter.decode([payload], [ActionResult])
    assert value == ActionResult(accepted=True, stage="talks", message="m")


async def test_key_rotation() -> None:
    old = EncryptionCodec(Keyring([("k1", K1)]))
    written_before = await old.encode([plain(b'"before"')])

    rotated = EncryptionCodec(Keyring.parse(f"{format_key('k2', K2)},{format_key('k1', K1)}"))
    assert rotated.keyring.current_id == "k2"
    assert await rotated.decode(written_before) == [plain(b'"before"')]
    written_after = await rotated.encode([plain(b'"after"')])
    assert written_after[0].metadata["encryption-key-id"] == b"k2"
    assert await rotated.decode(written_after) == [plain(b'"after"')]

    with pytest.raises(PayloadKeyError, match="'k2', which is not in the keyring"):
        await old.decode(written_after)


async def test_unknown_or_wrong_key_is_a_clear_error() -> None:
    encoded = await EncryptionCodec(Keyring([("k9", K1)])).encode([plain(b"1")])
    with pytest.raises(PayloadKeyError) as info:
        await EncryptionCodec(Keyring([("k1", K1), ("k0", K2)])).decode(encoded)
    assert "'k9'" in str(info.value) and "known: k1, k0" in str(info.value)
    assert b64(K1) not in str(info.value)

    with pytest.raises(PayloadKeyError, match="does not decrypt with that key"):
        await EncryptionCodec(Keyring([("k9", K2)])).decode(encoded)


async def test_plain_payloads_pass_through_decode() -> None:
    codec = EncryptionCodec(Keyring([("k1", K1)]))
    payloads = [plain(b'{"a": 1}'), plain(b"", b"binary/null"), Payload(data=b"x")]
    assert await codec.decode(payloads) == payloads


def test_keyring_parsing_and_no_secret_in_repr() -> None:
    ring = Keyring.parse(f" {format_key('b', K2)} ,\n{format_key('a', K1)}\n")
    assert ring.key_ids == ["b", "a"] and ring.current_id == "b"
    assert b64(K1) not in repr(ring) and b64(K1) not in repr(EncryptionCodec(ring))
    for spec, problem in [
        ("", "empty"),
        ("k1", "id:base64key"),
        ("k1:not-base64!", "not valid base64"),
        (f"k1:{b64(b'short')}", "32 bytes"),
        (f"{format_key('k1', K1)},{format_key('k1', K2)}", "twice"),
        (f"k 1:{b64(K1)}", "must be non-empty ASCII"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Keyring.parse(spec)


async def test_only_kaohe_dev_makes_the_key_file_and_it_rotates(tmp_path: Path) -> None:
    from activities.keyring import MissingKeysError
    from kaohe.keys import make_dev_keys, rotate

    settings = Settings(data_dir=tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    # Anything but `kaohe dev` refuses, naming the setting, and makes no key of its own.
    with pytest.raises(MissingKeysError, match="set KAOHE_PAYLOAD_KEYS"):
        codec_from_settings(settings)
    assert not path.exists()

    assert "payload" in make_dev_keys(settings)
    assert make_dev_keys(settings) == []  # once
    first = codec_from_settings(settings)
    assert first is not None and first.encrypt
    assert path.stat().st_mode & 0o777 == 0o600
    (made,) = first.keyring.key_ids
    assert re.fullmatch(r"p-[0-9a-f]{8}", made)  # random: never a second "p1"
    before = await first.encode([plain(b'"x"')])

    new = rotate(settings, "payload")
    rotated = codec_from_settings(settings)
    assert rotated is not None and rotated.keyring.key_ids == [new, made] and new != made
    assert path.stat().st_mode & 0o777 == 0o600
    assert await rotated.decode(before) == [plain(b'"x"')]
    assert (await rotated.encode([plain(b'"y"')]))[0].metadata["encryption-key-id"] == new.encode()


async def test_settings_choose_the_converter(tmp_path: Path) -> None:
    keys = f"{format_key('e2', K2)},{format_key('e1', K1)}"
    from_env = codec_from_settings(Settings(data_dir=tmp_path, payload_keys=keys))
    assert from_env is not None and from_env.keyring.key_ids == ["e2", "e1"]
    assert not (tmp_path / KEY_FILE_NAME).exists()  # no key file when keys are given

    # Off, and no key ever made: the plain pydantic converter, and no key file appears.
    off = Settings(data_dir=tmp_path, payload_encryption=False)
    assert data_converter(off) is pydantic_data_converter
    assert not (tmp_path / KEY_FILE_NAME).exists()

    # Off after it was on: nothing new is encrypted, old payloads still decode.
    from kaohe.keys import make_dev_keys

    make_dev_keys(Settings(data_dir=tmp_path))
    encrypted = await data_converter(Settings(data_dir=tmp_path)).encode(["old"])
    converter = data_converter(off)
    assert converter.payload_codec is not None
    [new] = await converter.encode(["new"])
    assert new.metadata["encoding"] == b"json/plain"
    assert await converter.decode(encrypted, [str]) == ["old"]


@pytest.mark.parametrize("path", recorded(), ids=lambda p: p.stem)
async def test_plaintext_histories_replay_with_the_codec(path: Path, tmp_path: Path) -> None:
    """Histories recorded without a codec replay through the converter every process uses."""
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=data_converter(
            Settings(data_dir=tmp_path, payload_keys=format_key("k", K1))
        ),
        workflow_runner=sandbox_runner(),
    )
    history = load(path)
    assert (await replayer.replay_workflow(history)).replay_failure is None


# ---- on the real servers ---------------------------------------------------------------------


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload anywhere in a proto message, with where it is."""
    if isinstance(message, Payload):
        yield path, message
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        where = f"{path}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    yield from payloads_in(item, f"{where}[{key}]")
        elif field.is_repeated:
            for n, item in enumerate(value):
                yield from payloads_in(item, f"{where}[{n}]")
        else:
            yield from payloads_in(value, where)


# Plain by design: the SDK core's and the server's own, and kaohe's assertion header (a MAC
# over the workflow id, the message's name and its payload's digest: no content).
SDK_OWN = re.compile(
    r"\.search_attributes\.|\.marker_recorded_event_attributes\.details\[(data|patch-data)\]"
    r"|\.header\.fields\[kaohe-assertion\]"
)


def actor(id: str, role: str) -> dict[str, str]:
    return {"id": id, "role": role}


async def update(handle: WorkflowHandle, name: str, **payload: Any) -> ActionResult:
    payload.setdefault("idempotency_key", f"{name}-{uuid.uuid4().hex[:8]}")
    return await handle.execute_update(name, payload, result_type=ActionResult)


async def unit_with_secrets(
    client: Client, task_queue: str, marker: str, tokens: TokenSource, talks: TalkStore
) -> tuple[WorkflowHandle, str]:
    """A unit with the marker in a report's text (report_back), a ballot sheet (evaluation;
    its token is returned), a talk's content (talks: stored as kaohe's API stores it, the
    unit sent only its reference) and a sealed grade proposal's evaluation (grading)."""
    unit = sample_unit()
    handle = await start_unit(client, task_queue, unit)
    dept = actor("department", "department")
    group = actor("group-leader", "assessment_group")
    await update(handle, "acknowledge_notice", actor=actor("unit-office", "unit"))
    await update(
        handle,
        "submit_report",
        actor=actor("unit-office", "unit"),
        kind="team",
        title="年度工作总结",
        text=f"总结 {marker}",
    )
    await update(handle, "close_stage", actor=dept, stage="report_back", reason="测试")
    token = (await tokens(handle.id))["A"][0]
    sheet = sheet_for(token, unit, BallotPolicy(), random.Random(1))
    assert len((await cast(client, tokens, handle.id, [sheet])).receipts) == 1
    result = await update(handle, "close_stage", actor=dept, stage="evaluation", reason="测试")
    assert result.stage == "talks", result
    talk = Talk(
        idempotency_key="talk-t0",
        talk_id="t0",
        interviewer="考核组",
        interviewee_role="中层干部",
        talk_date=dt.date(2026, 12, 15),
        content=f"谈话内容 {marker}",
    )
    reference = talk_by_reference(talk, await talks(handle.id, talk))
    result = await update(handle, "record_talk", **reference.model_dump(mode="json"))
    assert result.accepted, result
    await update(handle, "close_stage", actor=dept, stage="talks", reason="测试")
    proposal = proposal_for(unit).model_dump(mode="json")
    proposal["evaluation"] = f"综合分析研判 {marker}"
    result = await update(handle, "propose_grades", **{**proposal, "actor": group})
    assert result.accepted, result
    return handle, token


@pytest.fixture(scope="module")
async def secret_unit(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> tuple[WorkflowHandle, str, str]:
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    handle, token = await unit_with_secrets(client, worker, marker, tokens, talks)
    return handle, marker, token


async def test_history_holds_no_plaintext(
    stack: Stack, secret_unit: tuple[WorkflowHandle, str, str]
) -> None:
    handle, marker, token = secret_unit
    # A client without the codec sees the history as the server stores it.
    raw_client = await Client.connect(stack.temporal.address)
    history = await raw_client.get_workflow_handle(handle.id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    raw += history.to_json().encode()
    assert marker.encode() not in raw and token.encode() not in raw
    assert "谈话内容".encode() not in raw and "总结".encode() not in raw
    # Nor a grade of the sealed proposal, nor a ballot's option.
    assert "称职".encode() not in raw and "较好".encode() not in raw

    found = [(where, p) for event in history.events for where, p in payloads_in(event)]
    assert found
    plain_ones = [where for where, p in found if p.metadata.get("encoding") != ENCODING]
    # Only what the SDK core and the server keep for themselves is left readable: search
    # attributes, and the core's bookkeeping in markers (patch ids; a local activity's seq,
    # type and times; its result is in `details[result]`, encrypted).
    assert {w for w in plain_ones if not SDK_OWN.search(w)} == set()
    assert any(".details[result]" in where for where, _ in found)

    # Decoded, the marker is there: in the report and in the proposal; never the talk's
    # content nor a ballot's token, which are not in history at all (the UI's codec cannot
    # show them).
    codec = codec_from_settings(stack.settings)
    assert codec is not None
    decoded = b"".join(p.data for p in await codec.decode([p for _, p in found]))
    assert decoded.count(marker.encode()) >= 2
    assert f"总结 {marker}".encode() in decoded and token.encode() not in decoded
    assert f"谈话内容 {marker}".encode() not in decoded


async def test_api_integrator_sends_plain_json(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, api: ApiStack
) -> None:
    """An integrator sends plain JSON to kaohe's API and reads a plain JSON ActionResult,
    no codec in sight; in Temporal the update's payloads are encrypted all the same."""
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, campaign_id="codec")
    async with pool.acquire() as conn:
        await grant(conn, Binding("codec", "oa-codec", Role.INTEGRATOR, unit.unit_id), "test")
        key = await api_keys.create_key(conn, "oa-codec", "test")
    marker = f"NOTE-MARKER-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{api.url}/v1/campaigns/codec/units/{unit.unit_id}/actions/acknowledge_notice",
            json={"idempotency_key": "api-ack", "note": marker},
            headers={"X-Api-Key": key},
        ) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            result = await response.json()
    assert ActionResult.model_validate(result).stage == "report_back"

    raw_client = await Client.connect(stack.temporal.address)
    history = await raw_client.get_workflow_handle(handle.id).fetch_history()
    assert marker.encode() not in b"".join(e.SerializeToString() for e in history.events)
    update = [
        (where, p)
        for e in history.events
        for where, p in payloads_in(e)
        if "update" in where and not SDK_OWN.search(where)
    ]
    assert update and all(p.metadata["encoding"] == ENCODING for _, p in update), update


# ---- the dev stack ---------------------------------------------------------------------------


def test_dev_server_gets_the_codec_endpoint(tmp_path: Path) -> None:
    server = TemporalDevServer(tmp_path, ui_codec_endpoint="http://127.0.0.1:9999")
    command = server.command()
    assert command[command.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:9999"
    assert "--ui-codec-endpoint" not in TemporalDevServer(tmp_path).command()
