"""Identities and role bindings (issue 19's foundation), on the real stack: tokens checked
against a JWKS served over HTTP, API keys and bindings in PostgreSQL, the CLI that manages
them. Each door is tried with the attack, not only the right key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from kaohe.access import api_keys
from kaohe.access.bindings import (
    Binding,
    bindings_on,
    grant,
    grant_many,
    list_bindings,
    revoke,
    roster_bindings,
)
from kaohe.access.identity import TokenVerifier, Unauthenticated
from kaohe.access.issuer import DEV_ISSUER, DevIssuer, jwks_app
from kaohe.listening import free_port, listen
from schemas.common import Role
from schemas.roster import Roster
from tests.conftest import Stack
from tests.helpers import sample_unit
from tests.test_cli import kaohe


@pytest.fixture(scope="module")
def issuer() -> DevIssuer:
    return DevIssuer.generate()


@pytest.fixture(scope="module")
async def jwks_url(issuer: DevIssuer) -> AsyncIterator[str]:
    port = free_port()
    runner = await listen(jwks_app(issuer), "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    await runner.cleanup()


def verifier(url: str) -> TokenVerifier:
    return TokenVerifier.from_jwks_url(url, issuer=DEV_ISSUER, audience="kaohe")


async def check(url: str, token: str):
    return await asyncio.to_thread(verifier(url).verify, token)


# ---- people: bearer tokens ---------------------------------------------------------------


async def test_a_token_of_the_issuer_names_its_person(issuer: DevIssuer, jwks_url: str) -> None:
    identity = await check(jwks_url, issuer.mint("alice", name="张明"))
    assert (identity.principal, identity.kind, identity.name) == ("alice", "person", "张明")


async def test_an_expired_token_is_refused(issuer: DevIssuer, jwks_url: str) -> None:
    token = issuer.mint("alice", ttl=60, now=time.time() - 3600)
    with pytest.raises(Unauthenticated, match="expired"):
        await check(jwks_url, token)


async def test_a_token_signed_by_a_stranger_is_refused(issuer: DevIssuer, jwks_url: str) -> None:
    stranger = DevIssuer.generate()
    with pytest.raises(Unauthenticated, match=r"not valid|keys"):
        await check(jwks_url, stranger.mint("mallory"))
    # Even under the issuer's own key id.
    impostor = DevIssuer(DevIssuer.generate()._key, issuer.kid)
    with pytest.raises(Unauthenticated, match="not valid"):
        await check(jwks_url, impostor.mint("mallory"))


async def test_a_token_for_another_audience_or_issuer_is_refused(
    issuer: DevIssuer, jwks_url: str
) -> None:
    with pytest.raises(Unauthenticated, match="not for 'kaohe'"):
        await check(jwks_url, issuer.mint("alice", audience="another-app"))
    other = DevIssuer(issuer._key, issuer.kid, issuer="https://elsewhere.example")
    with pytest.raises(Unauthenticated, match="not from"):
        await check(jwks_url, other.mint("alice"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(issuer: DevIssuer, claims: dict[str, object]) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the issuer's public key (PEM), which
    PyJWT will not even produce, so it is built by hand."""
    public = issuer._key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_forged_and_tampered_tokens_are_refused(issuer: DevIssuer, jwks_url: str) -> None:
    claims = {"iss": DEV_ISSUER, "aud": "kaohe", "sub": "mallory", "iat": int(time.time())}
    claims["exp"] = claims["iat"] + 600
    # alg none, and HS256 "signed" with the public JWKS as the secret.
    unsigned = jwt.encode(claims, key=None, algorithm="none", headers={"kid": issuer.kid})
    hmac_signed = _hs256_with_public_key(issuer, claims)
    # A real token whose payload was changed to another subject.
    header, _, signature = issuer.mint("alice").split(".")
    payload = _b64(json.dumps(claims).encode())
    tampered = f"{header}.{payload}.{signature}"
    for token in (unsigned, hmac_signed, tampered, "not-a-token"):
        with pytest.raises(Unauthenticated):
            await check(jwks_url, token)


async def test_the_issuer_is_kept_in_the_data_dir_with_its_key_private(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="kaohe dev"):
        DevIssuer.in_dir(tmp_path)
    made = DevIssuer.in_dir(tmp_path, create=True)
    again = DevIssuer.in_dir(tmp_path)
    assert again.kid == made.kid and again.jwks() == made.jwks()
    assert (tmp_path / "issuer.json").stat().st_mode & 0o077 == 0
    assert "d" not in made.jwks()["keys"][0]  # the JWKS holds no private part


# ---- systems: API keys -------------------------------------------------------------------


async def test_api_keys_are_checked_by_hash_and_can_be_revoked(pool: asyncpg.Pool) -> None:
    system = f"ballot-system-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn:
        key = await api_keys.create_key(conn, system, "test")
        identity = await api_keys.verify_key(conn, key)
        assert (identity.principal, identity.kind) == (system, "system")
        stored = await conn.fetchval("SELECT key_hash FROM api_keys WHERE principal = $1", system)
        assert key.encode() not in stored and key.split("_", 2)[2].encode() not in stored
        key_id = key.split("_")[1]
        for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "kh_nope_x", "bearer", ""):
            with pytest.raises(Unauthenticated):
                await api_keys.verify_key(conn, wrong)
        assert await api_keys.revoke_key(conn, key_id, "test")
        with pytest.raises(Unauthenticated, match="revoked"):
            await api_keys.verify_key(conn, key)
        changes = await conn.fetch(
            "SELECT change FROM access_log WHERE principal = $1 ORDER BY id", system
        )
        assert [r["change"] for r in changes] == ["key_created", "key_revoked"]


# ---- bindings ----------------------------------------------------------------------------


async def test_a_binding_reaches_its_own_unit_only(stack: Stack, pool: asyncpg.Pool) -> None:
    campaign = f"acc-{uuid.uuid4().hex[:6]}"
    group_a = Binding(campaign, "group-a", Role.ASSESSMENT_GROUP, "unit-a")
    department = Binding(campaign, "dept", Role.DEPARTMENT)
    async with pool.acquire() as conn:
        assert await grant(conn, group_a, "test")
        assert not await grant(conn, group_a, "test")  # again: nothing new, nothing logged
        assert await grant(conn, department, "test")
        assert await bindings_on(conn, "group-a", campaign, "unit-a") == [group_a]
        assert await bindings_on(conn, "group-a", campaign, "unit-b") == []  # not every unit
        assert await bindings_on(conn, "dept", campaign, "unit-b") == [department]
        assert await bindings_on(conn, "dept", f"{campaign}-other", "unit-a") == []
        assert set(await list_bindings(conn, campaign)) == {group_a, department}
        assert await revoke(conn, group_a, "test")
        assert not await revoke(conn, group_a, "test")
        assert await bindings_on(conn, "group-a", campaign, "unit-a") == []
        log = await conn.fetch(
            "SELECT changed_by, change, principal, role, unit_id FROM access_log "
            "WHERE campaign_id = $1 ORDER BY id",
            campaign,
        )
        assert [tuple(r) for r in log] == [
            ("test", "granted", "group-a", "assessment_group", "unit-a"),
            ("test", "granted", "dept", "department", ""),
            ("test", "revoked", "group-a", "assessment_group", "unit-a"),
        ]
        # Not the app's role to change (schemas/sql/015), and the trigger refuses the owner.
        for sql in ("UPDATE access_log SET changed_by = 'nobody'", "DELETE FROM access_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    owner = await asyncpg.connect(stack.owner_url)
    try:
        for sql in ("UPDATE access_log SET changed_by = 'nobody'", "DELETE FROM access_log"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await owner.execute(sql)
    finally:
        await owner.close()


def test_a_cadre_binding_acts_as_its_cadre() -> None:
    b = Binding("c", "person-7", Role.CADRE, "u1", "u1-c0")
    assert b.actor().model_dump() == {"id": "u1-c0", "role": "cadre"}
    assert Binding("c", "p", Role.APPROVER, "u1").actor().id == "p"


async def test_a_cadre_binding_without_its_cadre_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="cadre_id"):
            await grant(conn, Binding("c", "p", Role.CADRE, "u1"), "test")
        with pytest.raises(ValueError, match="unit_id"):
            await grant(conn, Binding("c", "p", Role.CADRE, "", "x"), "test")


async def test_the_rosters_people_get_their_bindings_once(pool: asyncpg.Pool) -> None:
    campaign = f"ros-{uuid.uuid4().hex[:6]}"
    units = [
        sample_unit(f"r{n}", cadres=2).model_copy(update={"contact": f"office-{n}"})
        for n in range(3)
    ]
    roster = Roster(campaign_id=campaign, year=2026, title="名册", units=units)
    wanted = roster_bindings(roster)
    async with pool.acquire() as conn:
        assert await grant_many(conn, wanted, "roster") == len(wanted) == 1 + 3 * (3 + 2)
        assert await grant_many(conn, wanted, "roster") == 0
        on_r1 = await bindings_on(conn, roster.approver, campaign, "r1")
        assert [b.role for b in on_r1] == [Role.APPROVER]
        cadre = units[1].cadres[0].cadre_id
        [mine] = await bindings_on(conn, cadre, campaign, "r1")
        assert mine.actor().id == cadre and mine.role == Role.CADRE
        assert await bindings_on(conn, cadre, campaign, "r2") == []
        logged = await conn.fetchval(
            "SELECT count(*) FROM access_log WHERE campaign_id = $1", campaign
        )
        assert logged == len(wanted)


# ---- the CLI -----------------------------------------------------------------------------


async def test_the_cli_grants_lists_revokes_and_mints(stack: Stack, tmp_path: Path) -> None:
    env = {"KAOHE_DATA_DIR": str(tmp_path)}
    run = await asyncio.to_thread(kaohe, stack, "token", "mint", "alice", env=env)
    assert run.returncode == 1 and "kaohe dev" in run.stderr  # no issuer yet
    issuer = DevIssuer.in_dir(tmp_path, create=True)
    run = await asyncio.to_thread(kaohe, stack, "token", "mint", "alice", "--ttl", "600", env=env)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    claims = jwt.decode(token, issuer._key.public_key(), algorithms=["ES256"], audience="kaohe")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 600

    campaign = f"cli-{uuid.uuid4().hex[:6]}"
    args = ("alice", "approver", "--campaign", campaign, "--unit", "u1")
    run = await asyncio.to_thread(kaohe, stack, "access", "grant", *args)
    assert run.returncode == 0, run.stderr
    assert "approver of unit u1" in run.stdout
    run = await asyncio.to_thread(kaohe, stack, "access", "list", "--campaign", campaign)
    assert "alice" in run.stdout and "approver" in run.stdout
    run = await asyncio.to_thread(
        kaohe, stack, "access", "grant", "bob", "cadre", "--campaign", campaign
    )
    assert run.returncode == 1 and "cadre_id" in run.stderr
    run = await asyncio.to_thread(kaohe, stack, "access", "revoke", *args)
    assert run.returncode == 0, run.stderr
    run = await asyncio.to_thread(kaohe, stack, "access", "revoke", *args)
    assert run.returncode == 1 and "is not approver" in run.stderr
    run = await asyncio.to_thread(kaohe, stack, "access", "key", "create", "hr-system")
    assert run.returncode == 0 and run.stdout.startswith("kh_"), run.stderr
    key_id = run.stdout.split("_")[1]
    run = await asyncio.to_thread(kaohe, stack, "access", "key", "revoke", key_id)
    assert run.returncode == 0, run.stderr
    conn = await asyncpg.connect(stack.database_url)
    try:
        by = await conn.fetch(
            "SELECT DISTINCT changed_by FROM access_log WHERE campaign_id = $1", campaign
        )
    finally:
        await conn.close()
    assert [r["changed_by"].startswith("cli:") for r in by] == [True]
