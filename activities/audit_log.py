"""The audit table's append and the structured log line every storage write ends with.

Every state change writes its audit row in the transaction that makes the change, once per
(workflow, event_key), so a retried activity never adds a second row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from schemas.common import Actor
from schemas.workflow_io import UnitRef

log = structlog.get_logger("kaohe.storage")


async def write_audit(
    conn: asyncpg.Connection,
    ref: UnitRef,
    event_key: str,
    kind: str,
    actor: Actor | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Appends an audit row once per (workflow, event_key); True if it is new."""
    row = await conn.fetchrow(
        """INSERT INTO audit_log
               (workflow_id, campaign_id, unit_id, event_key, kind, stage,
                actor_id, actor_role, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
           ON CONFLICT (workflow_id, event_key) DO NOTHING RETURNING id""",
        ref.workflow_id,
        ref.campaign_id,
        ref.unit_id,
        event_key,
        kind,
        ref.stage.value,
        actor.id if actor else None,
        actor.role.value if actor else None,
        json.dumps(detail or {}, ensure_ascii=False, default=str),
    )
    return row is not None


def log_event(ref: UnitRef, event: str, **fields: Any) -> None:
    log.info(event, workflow_id=ref.workflow_id, unit=ref.unit_id, stage=ref.stage.value, **fields)


@dataclass(frozen=True)
class Entry:
    """An audit row: once per (workflow, event_key)."""

    event_key: str
    kind: str
    actor: Actor | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def recorded(
    pool: asyncpg.Pool, ref: UnitRef, entry: Entry, event: str, **fields: Any
) -> AsyncIterator[asyncpg.Connection]:
    """One state change: the block's writes and the audit row in one transaction, and the log
    line once it commits. A block that raises writes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn
        await write_audit(conn, ref, entry.event_key, entry.kind, entry.actor, entry.detail)
    log_event(ref, event, **fields)


async def write_unattributed(
    pool: asyncpg.Pool,
    *,
    workflow_id: str,
    campaign_id: str,
    unit_id: str,
    stage: str,
    kind: str,
    detail: dict[str, Any],
) -> None:
    """An audit row no authenticated actor stands behind (a refused attempt), outside any
    workflow: its key is random, so each attempt has its own row."""
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO audit_log (workflow_id, campaign_id, unit_id, event_key, kind, stage,
                                      detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
            workflow_id,
            campaign_id,
            unit_id,
            f"{kind}:{uuid.uuid4().hex}",
            kind,
            stage,
            json.dumps(detail, ensure_ascii=False, default=str),
        )


async def write_refusal(pool: asyncpg.Pool, refusal: dict[str, Any]) -> None:
    """The audit row of a message a workflow refused for want of a valid assertion: who it
    claimed to be (unauthenticated, so in the detail, never as the row's actor) and why."""
    attributes = refusal.get("attributes") or {}
    detail = {
        "message": refusal["message"],
        "reason": refusal["reason"],
        "claimed_actor": refusal.get("claimed_actor"),
    }
    await write_unattributed(
        pool,
        workflow_id=refusal["workflow_id"],
        campaign_id=str(attributes.get("KaoheCampaign", "")),
        unit_id=str(attributes.get("KaoheUnit", "")),
        stage=str(attributes.get("KaoheStage", "")),
        kind="message_refused",
        detail=detail,
    )
