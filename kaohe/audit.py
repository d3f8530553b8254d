"""`kaohe audit verify`: checks the audit log's hash chains (schemas/sql/010).

Every unit's audit rows are chained: a row edited after the fact no longer matches its
hash, a deleted row leaves a gap in the chain. What no chain can show is rows cut from the
end of a unit's chain; compare the count with the unit's history for that. Rows without a
chain position are those written before the chain existed (migration 010); one written after
its unit's chain began was inserted with the trigger switched off, and is named.
"""

from __future__ import annotations

import asyncpg

_CHAIN = """
SELECT workflow_id, id, chain_seq, event_key,
       row_hash = audit_row_digest(prev_hash, chain_seq, a) AS intact,
       prev_hash = coalesce(lag(row_hash) OVER w, ''::bytea) AS linked,
       lag(chain_seq) OVER w AS previous
FROM audit_log a
WHERE chain_seq IS NOT NULL AND ($1::text IS NULL OR campaign_id = $1)
WINDOW w AS (PARTITION BY workflow_id ORDER BY chain_seq)
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
    conn: asyncpg.Connection, campaign_id: str | None = None
) -> tuple[int, list[str]]:
    """(rows checked, problems): one line per broken link, naming the unit and the row."""
    problems: list[str] = []
    rows = await conn.fetch(_CHAIN, campaign_id)
    for r in rows:
        where = f"{r['workflow_id']} #{r['chain_seq']} ({r['event_key']}, id {r['id']})"
        expected = (r["previous"] or 0) + 1
        if r["chain_seq"] != expected:
            gone = (
                f"#{expected}"
                if r["chain_seq"] == expected + 1
                else f"#{expected}–#{r['chain_seq'] - 1}"
            )
            problems.append(f"{r['workflow_id']}: row(s) {gone} deleted before {where}")
        elif not r["linked"]:
            problems.append(f"{where}: does not link to the row before it")
        if not r["intact"]:
            problems.append(f"{where}: edited after it was written (hash mismatch)")
    for r in await conn.fetch(_OUTSIDE, campaign_id):
        problems.append(
            f"{r['workflow_id']} ({r['event_key']}, id {r['id']}): written outside the hash "
            "chain after it began (inserted with the trigger off)"
        )
    return len(rows), problems
