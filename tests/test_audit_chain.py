"""The audit log's hash chain and its anchors: `kaohe audit verify` passes an untouched log,
recomputes every hash in Python and names every row edited or deleted behind the append-only
trigger's back; the app's role cannot touch the table at all; and the database owner who
rewrites rows and recomputes the chain with the schema's own digest is caught by the signed
anchors (schemas/sql/015, kaohe/audit.py, kaohe/anchors.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import structlog.testing
from temporalio.client import Client

from activities.audit_log import write_unattributed
from kaohe.anchors import Anchorer, AnchorKeys, anchor_periodically, read_anchors, role_problem
from kaohe.audit import ROW_COLUMNS, row_digest
from kaohe.settings import Settings
from kaohe.sim.simulate import TokenSource, drive_unit
from kaohe.worker_processes import child_env
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_cli import akaohe

ANCHOR_KEYS = "an-test:" + base64.b64encode(b"s" * 32).decode()
ANCHOR_ENV = {"KAOHE_AUDIT_ANCHOR_KEYS": ANCHOR_KEYS}


@asynccontextmanager
async def as_owner(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the database owner (the superuser who ran the migrations)."""
    conn = await asyncpg.connect(stack.owner_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _units_at_talks(
    client: Client, worker: str, tokens: TokenSource, campaign: str, n: int
) -> list[str]:
    units = [sample_unit() for _ in range(n)]
    handles = [await start_unit(client, worker, u, campaign_id=campaign) for u in units]
    # Units at once: their rows interleave, each unit's chain stays in order.
    await asyncio.gather(
        *(
            drive_unit(client, h.id, u, stop_at=Stage.TALKS, tokens=tokens)
            for h, u in zip(handles, units, strict=True)
        )
    )
    return [h.id for h in handles]


async def test_verify_finds_edited_and_deleted_rows(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    campaign = f"audit-{uuid.uuid4().hex[:6]}"
    ids = await _units_at_talks(client, worker, tokens, campaign, 2)
    ok = await akaohe(stack, "audit", "verify", "--campaign", campaign)
    assert ok.returncode == 0 and "audit log intact" in ok.stdout, ok.stderr
    # A row the app writes with text jsonb renders its own way: escapes, CJK, numbers.
    detail = {"reason": '无效的签名 "引号" \\ \n\t\x01 \u2028', "n": 1.50, "big": 10**20, "k": [{}]}
    await write_unattributed(
        pool,
        workflow_id=ids[0],
        campaign_id=campaign,
        unit_id=ids[0].rsplit("-", 1)[1],
        stage="talks",
        kind="message_refused",
        detail=detail,
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {ROW_COLUMNS}, audit_row_digest(prev_hash, chain_seq, a) AS db_digest "
            "FROM audit_log a WHERE workflow_id = $1 ORDER BY chain_seq",
            ids[0],
        )
    # Each action's row names who did it, and in which role.
    actors = {(r["kind"], r["actor_id"], r["actor_role"]) for r in rows}
    assert ("report_submitted", "unit-office", "unit") in actors
    integrator = ("ballot-system", "integrator")
    assert any(k.startswith("ballots_") and (i, r) == integrator for k, i, r in actors)
    # Python's digest is the trigger's, byte for byte (Chinese text in details included).
    assert any(not r["detail"].isascii() for r in rows)
    for r in rows:
        assert row_digest(bytes(r["prev_hash"]), r["chain_seq"], r) == bytes(r["row_hash"])
        assert bytes(r["db_digest"]) == bytes(r["row_hash"])

    target = ids[0]
    async with as_owner(stack) as conn, conn.transaction():
        # What a superuser can do: skip the append-only trigger for this transaction.
        await conn.execute("SET LOCAL session_replication_role = replica")
        edited = await conn.fetchrow(
            "UPDATE audit_log SET detail = '{\"forged\": true}' WHERE workflow_id = $1 "
            "AND chain_seq = 2 RETURNING event_key",
            target,
        )
        await conn.execute("DELETE FROM audit_log WHERE workflow_id = $1 AND chain_seq = 4", target)
        forged = await conn.fetchval(
            "INSERT INTO audit_log (workflow_id, campaign_id, unit_id, event_key, kind, stage) "
            "SELECT workflow_id, campaign_id, unit_id, 'forged', 'grades_approved', stage "
            "FROM audit_log WHERE workflow_id = $1 LIMIT 1 RETURNING id",
            target,
        )
    bad = await akaohe(stack, "audit", "verify", "--campaign", campaign)
    assert bad.returncode == 1
    out = " ".join(bad.stderr.split())
    assert f"{target} #2 ({edited['event_key']}" in out and "hash mismatch" in out
    assert f"{target}: row(s) #4 deleted before {target} #5" in out
    assert f"{target} (forged, id {forged}): written outside the hash chain" in out
    assert ids[1] not in out  # the other unit's chain is intact


async def test_the_app_role_can_only_append_to_the_audit_table(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        me = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper, pg_has_role(current_user, 'kaohe_app', "
            "'member') AS member FROM pg_roles WHERE rolname = current_user"
        )
        assert me["name"] == "kaohe_app_user" and me["member"] and not me["rolsuper"]
        refused = [
            "UPDATE audit_log SET actor_id = 'x'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_chain",
            "ALTER TABLE audit_log DISABLE TRIGGER ALL",
            "DROP TRIGGER audit_log_chain ON audit_log",
            "SET session_replication_role = replica",
            "CREATE OR REPLACE FUNCTION audit_row_digest(prev bytea, seq bigint, r audit_log) "
            "RETURNS bytea LANGUAGE sql AS $$ SELECT r.row_hash $$",
            "CREATE FUNCTION public.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT $1 $$",
            # The chain's columns and the time are the trigger's and the database's.
            "INSERT INTO audit_log (workflow_id, campaign_id, unit_id, event_key, kind, stage, "
            "at) VALUES ('w', 'c', 'u', 'e', 'k', 's', now() - interval '1 year')",
            "INSERT INTO audit_log (workflow_id, campaign_id, unit_id, event_key, kind, stage, "
            "chain_seq) VALUES ('w', 'c', 'u', 'e', 'k', 's', 1)",
            "UPDATE access_log SET changed_by = 'nobody'",
            "DELETE FROM access_log",
            "TRUNCATE access_log",
            "DELETE FROM schema_migrations",
        ]
        for sql in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        assert await role_problem(conn) is None  # what the worker checks at start
    # The owner is still held by the triggers (by mistake, not by intent: see the anchors).
    async with as_owner(stack) as conn:
        assert "postgres is a superuser" in (await role_problem(conn) or "")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor_id = 'x'")


async def _rewrite_actors_and_recompute(stack: Stack, workflow_id: str) -> list[int]:
    """The attack of issue 21: as the owner, switch the append-only trigger off, give three
    rows another actor, recompute the unit's chain with the schema's own audit_row_digest,
    switch the trigger on again. Returns the rewritten rows' chain_seq."""
    async with as_owner(stack) as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        seqs = [
            r["chain_seq"]
            for r in await conn.fetch(
                "UPDATE audit_log SET actor_id = 'someone-else' WHERE id IN ("
                " SELECT id FROM audit_log WHERE workflow_id = $1 AND actor_id IS NOT NULL"
                " ORDER BY chain_seq LIMIT 3) RETURNING chain_seq",
                workflow_id,
            )
        ]
        prev = b""
        for row in await conn.fetch(
            "SELECT id FROM audit_log WHERE workflow_id = $1 AND chain_seq IS NOT NULL "
            "ORDER BY chain_seq",
            workflow_id,
        ):
            prev = await conn.fetchval(
                "UPDATE audit_log a SET prev_hash = $2, "
                "row_hash = audit_row_digest($2, a.chain_seq, a) WHERE id = $1 RETURNING row_hash",
                row["id"],
                prev,
            )
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    return sorted(seqs)


async def test_anchors_catch_the_owner_who_recomputes_the_chain(
    stack: Stack, client: Client, worker: str, tokens: TokenSource, tmp_path: Path
) -> None:
    campaign = f"anchor-{uuid.uuid4().hex[:6]}"
    target, other = await _units_at_talks(client, worker, tokens, campaign, 2)
    anchors = tmp_path / "anchors.jsonl"
    made = await akaohe(
        stack, "audit", "anchor", "--campaign", campaign, "--out", str(anchors), env=ANCHOR_ENV
    )
    assert made.returncode == 0 and "2 chain heads anchored" in made.stdout, made.stderr
    again = await akaohe(
        stack, "audit", "anchor", "--campaign", campaign, "--out", str(anchors), env=ANCHOR_ENV
    )
    assert again.returncode == 0 and "0 chain heads anchored" in again.stdout, again.stderr
    verify = ("audit", "verify", "--campaign", campaign, "--anchors", str(anchors))
    ok = await akaohe(stack, *verify, env=ANCHOR_ENV)
    assert ok.returncode == 0 and "2 signed anchors hold" in ok.stdout, ok.stderr
    # An auditor holds the public key only, and verifies with it.
    public = AnchorKeys.parse(ANCHOR_KEYS).public_text()
    printed = await akaohe(stack, "audit", "anchor-key", env=ANCHOR_ENV)
    assert printed.stdout.strip() == public
    ok = await akaohe(stack, *verify, env={"KAOHE_AUDIT_ANCHOR_PUBLIC_KEYS": public})
    assert ok.returncode == 0, ok.stderr

    rewritten = await _rewrite_actors_and_recompute(stack, target)
    assert len(rewritten) == 3
    # The chain alone is fooled: every hash recomputes.
    fooled = await akaohe(stack, "audit", "verify", "--campaign", campaign)
    assert fooled.returncode == 0 and "audit log intact" in fooled.stdout, fooled.stderr
    # Its signed head is not.
    caught = await akaohe(stack, *verify, env=ANCHOR_ENV)
    assert caught.returncode == 1, caught.stdout
    out = " ".join(caught.stderr.split())
    assert f"{target} #" in out and "not the row anchored" in out, out
    assert other not in out
    # Nor does the anchorer sign the rewritten chain.
    refused = await akaohe(
        stack, "audit", "anchor", "--campaign", campaign, "--out", str(anchors), env=ANCHOR_ENV
    )
    assert refused.returncode == 1 and target in refused.stderr, refused.stderr

    # An anchor line edited to match the rewritten chain no longer verifies.
    async with as_owner(stack) as conn:
        head = await conn.fetchrow(
            "SELECT chain_seq, row_hash FROM audit_log WHERE workflow_id = $1 "
            "ORDER BY chain_seq DESC LIMIT 1",
            target,
        )
    lines = anchors.read_text().splitlines()
    forged = []
    for line in lines:
        record = json.loads(line)
        if record["workflow_id"] == target:
            record["row_hash"] = bytes(head["row_hash"]).hex()
        forged.append(json.dumps(record))
    forged_file = tmp_path / "forged.jsonl"
    forged_file.write_text("\n".join(forged) + "\n")
    bad = await akaohe(
        stack, "audit", "verify", "--campaign", campaign, "--anchors", str(forged_file),
        env=ANCHOR_ENV,
    )  # fmt: skip
    assert bad.returncode == 1 and "signature does not verify" in bad.stderr, bad.stderr


async def test_rows_cut_from_the_end_are_caught_by_the_anchors(
    stack: Stack, client: Client, worker: str, tokens: TokenSource, tmp_path: Path
) -> None:
    campaign = f"cut-{uuid.uuid4().hex[:6]}"
    (target,) = await _units_at_talks(client, worker, tokens, campaign, 1)
    anchors = tmp_path / "anchors.jsonl"
    made = await akaohe(
        stack, "audit", "anchor", "--campaign", campaign, "--out", str(anchors), env=ANCHOR_ENV
    )
    assert made.returncode == 0, made.stderr
    async with as_owner(stack) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        last = await conn.fetchval(
            "DELETE FROM audit_log WHERE id = (SELECT id FROM audit_log WHERE workflow_id = $1 "
            "ORDER BY chain_seq DESC LIMIT 1) RETURNING chain_seq",
            target,
        )
    plain = await akaohe(stack, "audit", "verify", "--campaign", campaign)
    assert plain.returncode == 0, plain.stderr  # the chain alone cannot tell
    caught = await akaohe(
        stack, "audit", "verify", "--campaign", campaign, "--anchors", str(anchors), env=ANCHOR_ENV
    )
    assert caught.returncode == 1
    assert f"{target} #{last}" in " ".join(caught.stderr.split()), caught.stderr


async def test_the_worker_anchors_heads_as_they_grow(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, tmp_path: Path
) -> None:
    keys = AnchorKeys.parse(ANCHOR_KEYS)
    anchorer = Anchorer(keys, tmp_path / "anchors.jsonl")
    with structlog.testing.capture_logs() as logged:
        task = asyncio.create_task(anchor_periodically(pool, anchorer, 0.05))
        try:
            unit = sample_unit()
            campaign = f"grow-{uuid.uuid4().hex[:6]}"
            handle = await start_unit(client, worker, unit, campaign_id=campaign)
            await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
            async with pool.acquire() as conn:
                head = await conn.fetchval(
                    "SELECT max(chain_seq) FROM audit_log WHERE workflow_id = $1", handle.id
                )
            for _ in range(100):
                held, problems = read_anchors(anchorer.path, keys)
                mine = [a.chain_seq for a in held if a.workflow_id == handle.id]
                if mine and max(mine) == head:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
    assert problems == [] and mine and max(mine) == head
    # Heads were signed as the chain grew (each extending the one before), not once.
    assert len(mine) > 1 and mine == sorted(mine)
    # Each anchor is in the worker's log too, which verify reads as a file of anchors.
    log = tmp_path / "worker.log"
    lines = [{"event": "worker started"}, *logged, {"event": "stage transition", "seq": 3}]
    log.write_text("".join(json.dumps(e) + "\n" for e in lines))
    from_log, problems = read_anchors(log, keys)
    assert problems == []
    assert [a.chain_seq for a in from_log if a.workflow_id == handle.id] == mine


def test_the_migrations_and_the_app_connect_as_different_roles() -> None:
    dev = Settings(_env_file=None, database_url=None, postgres_port=5555)  # type: ignore[call-arg]
    assert dev.effective_database_url == "postgresql://kaohe_app_user@127.0.0.1:5555/kaohe"
    assert dev.effective_migration_database_url == "postgresql://postgres@127.0.0.1:5555/kaohe"
    one = Settings(_env_file=None, database_url="postgresql://a@h/k")  # type: ignore[call-arg]
    assert one.effective_migration_database_url == "postgresql://a@h/k"
    two = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://app:pw@h/k",
        migration_database_url="postgresql://owner:pw@h/k",
    )
    assert two.effective_database_url == "postgresql://app:pw@h/k"
    assert two.effective_migration_database_url == "postgresql://owner:pw@h/k"


async def test_migrate_makes_the_apps_login_a_member_of_kaohe_app(stack: Stack) -> None:
    user = f"app_{uuid.uuid4().hex[:8]}"
    app_url = stack.owner_url.replace("postgres@", f"{user}:Pw-{user}@", 1)
    env = {"KAOHE_MIGRATION_DATABASE_URL": stack.owner_url, "KAOHE_DATABASE_URL": app_url}
    for _ in range(2):  # and again: idempotent
        run = await akaohe(stack, "migrate", env=env)
        assert run.returncode == 0 and "warning" not in run.stderr, run.stderr
    async with as_owner(stack) as conn:
        role = await conn.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolpassword IS NOT NULL AS has_password, "
            "pg_has_role(rolname, 'kaohe_app', 'member') AS member "
            "FROM pg_authid WHERE rolname = $1",
            user,
        )
        await conn.execute(f'DROP ROLE "{user}"')
    assert dict(role) == {
        "rolcanlogin": True,
        "rolsuper": False,
        "has_password": True,
        "member": True,
    }
    # One URL for both: it works, and says the audit trail does not hold against the app.
    single = await akaohe(stack, "migrate", env={"KAOHE_DATABASE_URL": stack.owner_url})
    assert single.returncode == 0 and "KAOHE_MIGRATION_DATABASE_URL" in single.stderr


def test_one_worker_process_anchors() -> None:
    """`kaohe worker --processes N`: the first process anchors, the others would sign the
    same heads again."""
    assert "KAOHE_AUDIT_ANCHOR_INTERVAL" not in child_env(0, 0)
    assert child_env(1, 0)["KAOHE_AUDIT_ANCHOR_INTERVAL"] == "0"
