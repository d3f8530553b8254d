"""The audit log's hash chain: `kaohe audit verify` passes an untouched log and names every
row edited or deleted behind the append-only trigger's back (as a superuser could)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from temporalio.client import Client

from kaohe.sim.simulate import TokenSource, drive_unit
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_cli import akaohe


async def test_verify_finds_edited_and_deleted_rows(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    campaign = f"audit-{uuid.uuid4().hex[:6]}"
    units = [sample_unit(), sample_unit()]
    handles = [await start_unit(client, worker, u, campaign_id=campaign) for u in units]
    # Two units at once: their rows interleave, each unit's chain stays in order.
    await asyncio.gather(
        *(
            drive_unit(client, h.id, u, stop_at=Stage.TALKS, tokens=tokens)
            for h, u in zip(handles, units, strict=True)
        )
    )
    ok = await akaohe(stack, "audit", "verify", "--campaign", campaign)
    assert ok.returncode == 0 and "audit log intact" in ok.stdout, ok.stderr
    # Each action's row names who did it, and in which role.
    async with pool.acquire() as conn:
        actors = {
            (r["kind"], r["actor_id"], r["actor_role"])
            for r in await conn.fetch(
                "SELECT kind, actor_id, actor_role FROM audit_log WHERE workflow_id = $1",
                handles[0].id,
            )
        }
    assert ("report_submitted", "unit-office", "unit") in actors
    assert ("ballots_recorded", "ballot-system", "integrator") in actors

    target = handles[0].id
    async with pool.acquire() as conn, conn.transaction():
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
    assert handles[1].id not in out  # the other unit's chain is intact
