"""`kaohe audit verify`: checks the audit log's hash chains (schemas/sql/010), recomputed here.

Every unit's audit rows are chained: a row edited after the fact no longer matches its
hash, a deleted row leaves a gap in the chain. Each hash is recomputed in Python from the
row's columns (`row_digest`, the same bytes the insert trigger hashes), never by a function
of the database: whoever owns the database could replace that function with one that agrees.

What the chain alone cannot show is the owner rewriting rows and recomputing every hash after
them, or rows cut from the end of a chain: with `anchors` (kaohe/anchors.py, heads signed with
a key the database never sees) each anchored head must still be in the chain with the hash it
was signed with. Rows without a chain position are those written before the chain existed
(migration 010); one written after its unit's chain began was inserted with the trigger
switched off, and is named.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from kaohe.anchors import Anchor

# Joins a row's fields in the digest (concat_ws(E'\x1f', ...) in audit_row_digest).
SEPARATOR = "\x1f"

# The columns a row's digest covers, as the trigger saw them: detail as jsonb's text.
ROW_COLUMNS = (
    "workflow_id, id, chain_seq, prev_hash, row_hash, campaign_id, unit_id, event_key, kind, "
    "stage, actor_id, actor_role, detail::text AS detail, at"
)


def row_fields(seq: int, row: Mapping[str, Any]) -> list[str]:
    """The row's fields in the digest's order, as audit_row_digest renders them: missing
    actors as '', detail as jsonb's text, `at` in UTC to the microsecond."""
    at: dt.datetime = row["at"]
    return [
        row["workflow_id"],
        str(seq),
        row["campaign_id"],
        row["unit_id"],
        row["event_key"],
        row["kind"],
        row["stage"],
        row["actor_id"] or "",
        row["actor_role"] or "",
        row["detail"],
        at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"),
    ]


def row_digest(prev: bytes, seq: int, row: Mapping[str, Any]) -> bytes:
    """sha256(prev || UTF-8 of the fields joined by U+001F): audit_row_digest of
    schemas/sql/010, byte for byte."""
    return hashlib.sha256(prev + SEPARATOR.join(row_fields(seq, row)).encode()).digest()


_CHAIN = f"""
SELECT {ROW_COLUMNS} FROM audit_log
WHERE chain_seq IS NOT NULL AND ($1::text IS NULL OR campaign_id = $1)
ORDER BY workflow_id, chain_seq
"""

# Unchained rows after their unit's chain began: inserted behind the trigger's back.
_OUTSIDE = """
SELECT a.workflow_id, a.id, a.event_key FROM audit_log a
WHERE a.chain_seq IS NULL AND ($1::text IS NULL OR a.campaign_id = $1)
  AND EXISTS (SELECT 1 FROM audit_log b
              WHERE b.workflow_id = a.workflow_id AND b.chain_seq IS NOT NULL AND b.id < a.id)
ORDER BY a.workflow_id, a.id
"""


async def verify_audit(
    conn: asyncpg.Connection,
    campaign_id: str | None = None,
    anchors: Iterable[Anchor] | None = None,
) -> tuple[int, list[str]]:
    """(rows checked, problems): one line per broken link, naming the unit and the row, and
    one per anchored head the chain no longer holds."""
    problems: list[str] = []
    wanted: dict[tuple[str, int], list[Anchor]] = {}
    for a in anchors or ():
        if campaign_id is None or a.campaign_id == campaign_id:
            wanted.setdefault((a.workflow_id, a.chain_seq), []).append(a)
    checked = 0
    workflow, previous, previous_hash = None, 0, b""
    # One snapshot for the whole walk, streamed: a campaign's log need not fit in memory.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for r in conn.cursor(_CHAIN, campaign_id, prefetch=1000):
            checked += 1
            if r["workflow_id"] != workflow:
                workflow, previous, previous_hash = r["workflow_id"], 0, b""
            seq, prev_hash, row_hash = r["chain_seq"], bytes(r["prev_hash"]), bytes(r["row_hash"])
            where = f"{workflow} #{seq} ({r['event_key']}, id {r['id']})"
            expected = previous + 1
            if seq != expected:
                gone = f"#{expected}" if seq == expected + 1 else f"#{expected}–#{seq - 1}"
                problems.append(f"{workflow}: row(s) {gone} deleted before {where}")
            elif prev_hash != previous_hash:
                problems.append(f"{where}: does not link to the row before it")
            fields = row_fields(seq, r)
            if any(SEPARATOR in f for f in fields):
                problems.append(
                    f"{where}: a field holds U+001F, which the digest joins fields with"
                )
            if row_digest(prev_hash, seq, r) != row_hash:
                problems.append(f"{where}: edited after it was written (hash mismatch)")
            for a in wanted.pop((workflow, seq), []):
                if a.row_hash != row_hash:
                    problems.append(
                        f"{where}: not the row anchored at {a.at} (anchors line {a.line}): "
                        "it or a row before it was rewritten, and the chain recomputed"
                    )
            previous, previous_hash = seq, row_hash
        outside = await conn.fetch(_OUTSIDE, campaign_id)
    for (wf, seq), gone in sorted(wanted.items()):
        problems.append(
            f"{wf} #{seq}: anchored at {gone[0].at} (anchors line {gone[0].line}), "
            "no longer in the chain (rows cut or deleted)"
        )
    for r in outside:
        problems.append(
            f"{r['workflow_id']} ({r['event_key']}, id {r['id']}): written outside the hash "
            "chain after it began (inserted with the trigger off)"
        )
    return checked, problems
