"""`kaohe audit verify`: checks the audit log's hash chains (schemas/sql/010).

Every unit's audit rows are chained: a row edited after the fact no longer matches its
hash, a deleted row leaves a gap in the chain. What no chain can show is rows cut from the
end of a unit's chain; compare the count with the unit's history for that.
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
    return len(rows), problems
