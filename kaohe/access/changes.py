"""The access log: every change of bindings and keys, append-only (schemas/sql/013)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def log_change(
    conn: asyncpg.Connection,
    changed_by: str,
    change: str,
    principal: str,
    *,
    role: str | None = None,
    campaign_id: str | None = None,
    unit_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO access_log (changed_by, change, principal, role, campaign_id, unit_id,
                                   detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
        changed_by,
        change,
        principal,
        role,
        campaign_id,
        unit_id,
        json.dumps(detail or {}, ensure_ascii=False),
    )
