"""API keys of integrating systems (a ballot system, an HR system, a messaging platform).

A key is `kh_<key_id>_<secret>`: the id finds the row, the secret is checked against its
sha256 in constant time. Only the hash is stored; the key is shown once, when created."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg

from kaohe.access.changes import log_change
from kaohe.access.identity import Identity, Unauthenticated

PREFIX = "kh_"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(conn: asyncpg.Connection, principal: str, created_by: str) -> str:
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO api_keys (key_id, principal, key_hash, created_by)
               VALUES ($1, $2, $3, $4)""",
            key_id,
            principal,
            _digest(secret),
            created_by,
        )
        await log_change(conn, created_by, "key_created", principal, detail={"key_id": key_id})
    return f"{PREFIX}{key_id}_{secret}"


async def revoke_key(conn: asyncpg.Connection, key_id: str, revoked_by: str) -> bool:
    async with conn.transaction():
        principal = await conn.fetchval(
            """UPDATE api_keys SET revoked_at = now()
               WHERE key_id = $1 AND revoked_at IS NULL RETURNING principal""",
            key_id,
        )
        if principal is None:
            return False
        await log_change(conn, revoked_by, "key_revoked", principal, detail={"key_id": key_id})
    return True


async def verify_key(conn: asyncpg.Connection, presented: str) -> Identity:
    if not presented.startswith(PREFIX) or presented.count("_") < 2:
        raise Unauthenticated("the API key is malformed")
    key_id, _, secret = presented[len(PREFIX) :].partition("_")
    row = await conn.fetchrow(
        "SELECT principal, key_hash, revoked_at FROM api_keys WHERE key_id = $1", key_id
    )
    # Compare even for an unknown id, so timing does not tell which ids exist.
    stored = row["key_hash"] if row is not None else b"\0" * 32
    if not hmac.compare_digest(stored, _digest(secret)) or row is None:
        raise Unauthenticated("the API key is not valid")
    if row["revoked_at"] is not None:
        raise Unauthenticated("the API key was revoked")
    return Identity(row["principal"], "system")
