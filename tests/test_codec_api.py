"""The codec in kaohe's API (issue 20 item 7): POST /v1/codec/decode and /encode, each as the
caller with a binding of its own (codec_decode, codec_encode), audited, on the real stack;
the dev stack's one-time login link and its HttpOnly cookie; CORS for the UI's origins."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from kaohe.access import api_keys
from kaohe.access.bindings import EVERY_CAMPAIGN, Binding, codec_binding, grant
from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.api.codec import (
    AUDIT_WORKFLOW,
    SESSION_COOKIE,
    CodecAccess,
    login_link,
)
from kaohe.devstack.stack import run_dev
from kaohe.listening import free_port
from kaohe.settings import Settings
from schemas.common import Role
from tests.conftest import ApiStack, Stack, serving
from tests.helpers import TEST_KEY, sample_unit, start_unit

UI_ORIGIN = "http://127.0.0.1:18233"


@pytest.fixture(scope="module")
async def codec_api(client: Client, pool: asyncpg.Pool) -> AsyncIterator[ApiStack]:
    """kaohe's API as `kaohe dev` serves it: its own issuer, the codec routes, the login."""
    issuer = DevIssuer.generate()
    api = Api(client, pool, issuer.verifier(), TEST_KEY)
    codec = CodecAccess(cors_origins=[UI_ORIGIN], issuer=issuer, ui_url=UI_ORIGIN)
    async with serving(create_app(api, jwks=issuer.jwks(), codec=codec)) as url:
        yield ApiStack(url, issuer)


def person() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


async def bound(pool: asyncpg.Pool, *roles: Role) -> str:
    who = person()
    async with pool.acquire() as conn:
        for role in roles:
            assert await grant(conn, codec_binding(who, role), "test")
    return who


@pytest.fixture(scope="module")
async def history_payloads(client: Client, worker: str) -> tuple[list[dict[str, Any]], str]:
    """The encrypted payloads of a real unit's history, and a text only they hold."""
    marker = f"单位-{uuid.uuid4().hex[:6]}"
    unit = sample_unit(name=marker)
    handle = await start_unit(client, worker, unit, campaign_id="codec-api")
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.input.payloads[0].metadata["encoding"] == b"binary/encrypted"
    assert marker.encode() not in started.input.payloads[0].data
    found = json.loads(json_format.MessageToJson(Payloads(payloads=started.input.payloads)))
    return found["payloads"], marker


def texts(payloads: list[dict[str, Any]]) -> str:
    return b"".join(base64.b64decode(p.get("data", "")) for p in payloads).decode()


async def audit_rows(pool: asyncpg.Pool, principal: str | None, kind: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT detail FROM audit_log WHERE workflow_id = $1 AND kind = $2",
        AUDIT_WORKFLOW,
        kind,
    )
    details = [json.loads(r["detail"]) for r in rows]
    return [d for d in details if d.get("principal") == principal]


async def test_decode_needs_credentials_and_the_decode_role(
    codec_api: ApiStack, pool: asyncpg.Pool, history_payloads: tuple[list[dict[str, Any]], str]
) -> None:
    payloads, marker = history_payloads
    body = {"payloads": payloads}
    decoder = await bound(pool, Role.CODEC_DECODE)
    encoder = await bound(pool, Role.CODEC_ENCODE)
    nobody = person()
    async with aiohttp.ClientSession() as session:
        url = f"{codec_api.url}/v1/codec/decode?preserveStorageRefs=true"

        # No credentials: 401, problem+json, an api_refused row.
        async with session.post(url, json=body) as r:
            assert r.status == 401
            assert r.content_type == "application/problem+json"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            problem = await r.json()
            assert problem["status"] == 401 and "credentials" in problem["detail"]
        assert await audit_rows(pool, None, "api_refused")
        # A wrong token, an API token's scheme missing: 401 too.
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "x"}):
            async with session.post(url, json=body, headers=headers) as r:
                assert r.status == 401, headers

        # A person with no codec role (a department of some campaign, say): 403.
        async with pool.acquire() as conn:
            await grant(conn, Binding("codec-api", nobody, Role.DEPARTMENT), "test")
        async with session.post(url, json=body, headers=codec_api.token(nobody)) as r:
            assert r.status == 403
            assert r.content_type == "application/problem+json"
            detail = (await r.json())["detail"]
            assert "codec_decode" in detail and marker not in await r.text()
        [row] = await audit_rows(pool, nobody, "api_refused")
        assert row["attempted"] == "codec_decode" and row["status"] == 403

        # Encode-only: 403 to decode; it may encode.
        async with session.post(url, json=body, headers=codec_api.token(encoder)) as r:
            assert r.status == 403
            assert "has codec_encode" in (await r.json())["detail"]
        original = {
            "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(b'"hi"').decode(),
        }
        async with session.post(
            f"{codec_api.url}/v1/codec/encode",
            json={"payloads": [original]},
            headers=codec_api.token(encoder),
        ) as r:
            assert r.status == 200
            [encoded] = (await r.json())["payloads"]
        assert base64.b64decode(encoded["metadata"]["encoding"]) == b"binary/encrypted"
        # ... and the decoder may not encode.
        async with session.post(
            f"{codec_api.url}/v1/codec/encode",
            json={"payloads": [original]},
            headers=codec_api.token(decoder),
        ) as r:
            assert r.status == 403

        # The decode role: the payloads decoded, the round trip too.
        headers = {**codec_api.token(decoder), "X-Namespace": "default"}
        async with session.post(url, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            decoded = (await r.json())["payloads"]
        assert len(decoded) == len(payloads) and marker in texts(decoded)
        async with session.post(url, json={"payloads": [encoded]}, headers=headers) as r:
            assert (await r.json())["payloads"] == [original]

        # A body that is not Payloads: 422 naming it.
        async with session.post(url, data=b"not json", headers=headers) as r:
            assert r.status == 422 and (await r.json())["field"] == "payloads"

    # Audited: who, how, how many; never the content.
    rows = await audit_rows(pool, decoder, "codec_decode")
    assert [r["payloads"] for r in rows] == [len(payloads), 1]
    assert rows[0] == {
        "principal": decoder,
        "kind": "person",
        "via": "bearer",
        "payloads": len(payloads),
        "namespace": "default",
    }
    assert [r["payloads"] for r in await audit_rows(pool, encoder, "codec_encode")] == [1]
    everything = await pool.fetchval(
        "SELECT string_agg(detail::text, ' ') FROM audit_log WHERE workflow_id = $1",
        AUDIT_WORKFLOW,
    )
    assert marker not in everything


async def test_a_system_decodes_with_its_api_key(
    codec_api: ApiStack, pool: asyncpg.Pool, history_payloads: tuple[list[dict[str, Any]], str]
) -> None:
    payloads, marker = history_payloads
    system = await bound(pool, Role.CODEC_DECODE)
    async with pool.acquire() as conn:
        key = await api_keys.create_key(conn, system, "test")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{codec_api.url}/v1/codec/decode",
            json={"payloads": payloads},
            headers={"X-API-Key": key},
        ) as r:
            assert r.status == 200
            assert marker in texts((await r.json())["payloads"])
    [row] = await audit_rows(pool, system, "codec_decode")
    assert row["kind"] == "system" and row["via"] == "api-key"


async def test_codec_bindings_are_for_every_payload_and_no_unit() -> None:
    b = codec_binding("alice", Role.CODEC_DECODE)
    assert b.campaign_id == EVERY_CAMPAIGN and b.unit_id == ""
    assert "every payload" in b.where()
    from kaohe.access.bindings import _check

    for wrong in (
        Binding("city-2026", "alice", Role.CODEC_DECODE),
        Binding(EVERY_CAMPAIGN, "alice", Role.CODEC_DECODE, "fgw"),
        Binding(EVERY_CAMPAIGN, "alice", Role.DEPARTMENT),
    ):
        with pytest.raises(ValueError):
            _check(wrong)


async def test_codec_roles_reach_no_unit(
    codec_api: ApiStack, pool: asyncpg.Pool, client: Client, worker: str
) -> None:
    """A codec binding is no role on any unit: status and actions stay refused."""
    who = await bound(pool, Role.CODEC_DECODE, Role.CODEC_ENCODE)
    unit = sample_unit()
    await start_unit(client, worker, unit, campaign_id="codec-api")
    async with aiohttp.ClientSession() as session:
        base = f"{codec_api.url}/v1/campaigns/codec-api/units/{unit.unit_id}"
        async with session.get(f"{base}/status", headers=codec_api.token(who)) as r:
            assert r.status == 403
        async with session.post(
            f"{base}/actions/acknowledge_notice",
            json={"idempotency_key": "k1"},
            headers=codec_api.token(who),
        ) as r:
            assert r.status == 403


async def test_login_link_sets_a_session_cookie_for_the_codec_only(
    codec_api: ApiStack, pool: asyncpg.Pool, history_payloads: tuple[list[dict[str, Any]], str]
) -> None:
    payloads, marker = history_payloads
    dev = await bound(pool, Role.CODEC_DECODE)
    link = login_link(codec_api.url, codec_api.issuer, dev, "kaohe")
    body = {"payloads": payloads}
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        # Without the login the cookie is not there: 401.
        async with session.post(f"{codec_api.url}/v1/codec/decode", json=body) as r:
            assert r.status == 401
        async with session.get(link, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == UI_ORIGIN
            cookie = r.cookies[SESSION_COOKIE]
            assert cookie["httponly"] and cookie["samesite"].lower() == "strict"
            assert cookie["path"] == "/v1/codec"
            assert r.headers["Cache-Control"] == "no-store"
        # The browser's request from the UI: the cookie, the UI's origin, no header.
        headers = {"Origin": UI_ORIGIN, "X-Namespace": "default"}
        async with session.post(
            f"{codec_api.url}/v1/codec/decode", json=body, headers=headers
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert marker in texts((await r.json())["payloads"])
        # The ticket is good once.
        async with session.get(link, allow_redirects=False) as r:
            assert r.status == 401 and "used already" in (await r.json())["detail"]
        # The cookie is no bearer token of the API, nor a ticket.
        session_token = cookie.value
        async with session.get(
            f"{codec_api.url}/v1/units/kaohe-x-y",
            headers={"Authorization": f"Bearer {session_token}"},
        ) as r:
            assert r.status == 401
        async with session.get(
            f"{codec_api.url}/v1/codec/login?ticket={session_token}", allow_redirects=False
        ) as r:
            assert r.status == 401
        # Logging out forgets it.
        async with session.post(f"{codec_api.url}/v1/codec/logout") as r:
            assert r.status == 204
        async with session.post(f"{codec_api.url}/v1/codec/decode", json=body) as r:
            assert r.status == 401
    [row] = await audit_rows(pool, dev, "codec_decode")
    assert row["via"] == "session"
    assert len(await audit_rows(pool, dev, "codec_login")) == 1

    # An API bearer token is no login ticket either.
    async with aiohttp.ClientSession() as session:
        ticket = codec_api.issuer.mint(dev)
        async with session.get(
            f"{codec_api.url}/v1/codec/login?ticket={ticket}", allow_redirects=False
        ) as r:
            assert r.status == 401 and SESSION_COOKIE not in r.cookies


async def test_cors_for_the_ui_origins_only(codec_api: ApiStack) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with aiohttp.ClientSession() as session:
        url = f"{codec_api.url}/v1/codec/decode"
        async with session.options(url, headers={**preflight, "Origin": UI_ORIGIN}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            allowed = r.headers["Access-Control-Allow-Headers"].lower()
            assert "content-type" in allowed and "x-namespace" in allowed
        for origin in ("http://evil.example", "http://127.0.0.1:18234"):
            async with session.options(url, headers={**preflight, "Origin": origin}) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            async with session.post(url, json={"payloads": []}, headers={"Origin": origin}) as r:
                assert r.status == 401 and "Access-Control-Allow-Origin" not in r.headers
        # The rest of the API sends no CORS headers at all.
        async with session.get(f"{codec_api.url}/healthz", headers={"Origin": UI_ORIGIN}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


# ---- the dev stack ---------------------------------------------------------------------------


class Checked(Exception):
    pass


async def test_run_dev_ui_settings_hold_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kaohe dev`: the UI's settings name kaohe's API as the codec and nothing that decodes;
    the login link it prints (for the dev user, bound codec_decode) is what decodes."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=None,
        payload_keys=None,
        postgres_port=free_port(),
        temporal_address=f"127.0.0.1:{free_port()}",
        temporal_ui_port=free_port(),
        temporal_http_port=free_port(),
        api_port=free_port(),
        metrics_port=0,
    )
    api_url = f"http://127.0.0.1:{settings.api_port}"
    ui_url = f"http://127.0.0.1:{settings.temporal_ui_port}"
    checked: dict[str, Any] = {}

    async def worker(database_url: str) -> None:
        from kaohe.api.server import serve_api

        serving = asyncio.create_task(serve_api(settings, database_url))
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                for _ in range(200):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(f"{api_url}/healthz") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.05)
                async with s.get(f"{ui_url}/api/v1/settings") as r:
                    checked["text"] = await r.text()
                    checked["ui"] = json.loads(checked["text"])
                endpoint = checked["ui"]["Codec"]["Endpoint"]
                original = {
                    "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                    "data": base64.b64encode(b'"x"').decode(),
                }
                headers = {"Origin": ui_url, "X-Namespace": "default"}
                body = {"payloads": [original]}
                # All the settings give a page: refused.
                async with s.post(f"{endpoint}/decode", json=body, headers=headers) as r:
                    checked["without login"] = r.status
                    checked["cors"] = r.headers.get("Access-Control-Allow-Origin")
                # The link kaohe dev printed, as the developer's browser opens it.
                out = capsys.readouterr().out
                [link] = re.findall(r"http://\S+/v1/codec/login\?ticket=\S+", out)
                checked["printed"] = out
                async with s.get(link, allow_redirects=False) as r:
                    checked["login"] = (r.status, r.headers.get("Location"))
                async with s.post(f"{endpoint}/decode", json=body, headers=headers) as r:
                    checked["with login"] = r.status
                    checked["decoded"] = (await r.json())["payloads"]
                # The proxy passes the UI's pages through.
                async with s.get(f"{ui_url}/namespaces/default/workflows") as r:
                    checked["page"] = (r.status, "<html" in await r.text())
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        raise Checked  # run_dev re-raises the worker's error after stopping everything

    with pytest.raises(Checked):
        await asyncio.wait_for(run_dev(settings, with_worker=worker), 120)
    ui = checked["ui"]
    assert ui["Codec"]["Endpoint"] == f"{api_url}/v1/codec"
    assert ui["Codec"]["IncludeCredentials"] is True
    assert ui["Codec"]["PassAccessToken"] is False
    assert ui["Auth"]["Enabled"] is False
    # No token, no key: nothing of the data dir's secrets, no /t/<token>, no ticket.
    text = checked["text"]
    secrets = [
        line.split(":", 1)[1]
        for name in ("payload.key", "talk.key", "assertion.keys")
        for line in (tmp_path / name).read_text().split()
    ]
    assert secrets and not [s for s in secrets if s in text]
    assert "/t/" not in text and "ticket" not in text and "eyJ" not in text
    assert not (tmp_path / "codec.token").exists()
    assert checked["without login"] == 401 and checked["cors"] == ui_url
    assert checked["login"] == (303, ui_url)
    assert checked["with login"] == 200 and checked["decoded"][0]["data"]
    assert checked["page"] == (200, True)
    assert "codec server" not in checked["printed"]


async def test_the_cli_grants_codec_roles_for_every_payload(stack: Stack, tmp_path: Path) -> None:
    from tests.test_cli import kaohe

    who = person()
    run = await asyncio.to_thread(kaohe, stack, "access", "grant", who, "codec_decode")
    assert run.returncode == 0, run.stderr
    assert "codec_decode of every payload" in run.stdout
    # A campaign (or unit) would promise a scope the codec cannot check: refused.
    for extra in (("--campaign", "city-2026"), ("--unit", "fgw")):
        run = await asyncio.to_thread(kaohe, stack, "access", "grant", who, "codec_encode", *extra)
        assert run.returncode == 1 and "names neither its campaign" in run.stderr, extra
    # Every other role still needs its campaign.
    run = await asyncio.to_thread(kaohe, stack, "access", "grant", who, "department")
    assert run.returncode == 1 and "--campaign is required" in run.stderr
    run = await asyncio.to_thread(kaohe, stack, "access", "list", "--principal", who)
    assert "(every payload)" in run.stdout and "codec_decode" in run.stdout
    run = await asyncio.to_thread(kaohe, stack, "access", "revoke", who, "codec_decode")
    assert run.returncode == 0, run.stderr

    # kaohe token codec-login: a login link of the dev issuer, for the codec alone.
    env = {"KAOHE_DATA_DIR": str(tmp_path)}
    issuer = DevIssuer.in_dir(tmp_path, create=True)
    run = await asyncio.to_thread(kaohe, stack, "token", "codec-login", who, env=env)
    assert run.returncode == 0, run.stderr
    link = run.stdout.strip()
    assert link.startswith("http://") and "/v1/codec/login?ticket=" in link
    ticket = link.split("ticket=", 1)[1]
    claims = jwt.decode(
        ticket, issuer._key.public_key(), algorithms=["ES256"], audience="kaohe:codec-login"
    )
    assert claims["sub"] == who
