"""The ballot pool: how a sheet reaches ballot_marks without anything there pointing back at
the token that brought it (issue 20).

Spending a token and storing its sheet in one transaction would give the token's row and the
sheet's marks the same xmin, and the marks' physical order and batch would follow the order
tokens were spent in. So it takes two transactions that share nothing:

1. `pool_sheets` (one statement, ballot_pool_take of schemas/sql/019, in a transaction of
   its own): the tokens are checked and spent as ballot_store.claim_tokens does, and each
   sheet waits in ballot_pool with its rater group, its marks and a random receipt code;
   nothing else.
2. `flush_pool` (a transaction of its own): a rater group's pooled sheets move into
   ballot_marks in one batch (one statement, ballot_pool_let_go of schemas/sql/021), in an
   order drawn by pg_strong_random, once there are `min_sheets` of them, or the group's
   tokens are all spent, or the evaluation closes. Their receipts go to ballot_receipts in
   another such order, and the pool rows are deleted.
3. `rewrite_spent_tokens` (a third): every spent token of the group is rewritten, so that
   its xmin and place on disk no longer say in which order, or with which batch, it was
   spent.

A crash between the two loses nothing (the pool is durable) and doubles nothing (a flush
moves and deletes in one transaction; the unit counts a batch once, by batch id). What stays:
tuple versions left by the rewrite until VACUUM, and a live observer of the database's
statements: docs/threat-model.md.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from activities.ballot_store import (
    BallotRejected,
    claim_tokens,
    lock_rater_groups,
    token_hash,
)
from domain.ballots import sheet_marks
from schemas.common import Stage
from schemas.messages import BallotSheet
from schemas.workflow_io import BallotBatchReceipt

_RECEIPT_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read off a phone
_RANDOM = secrets.SystemRandom()
POOL_BATCH_PREFIX = "pool-"  # the pool's batch ids; an import may not take one
_BEFORE_EVALUATION = {Stage.NOTICE.value, Stage.REPORT_BACK.value}


def new_receipt() -> str:
    """A random receipt code (XXXX-XXXX-XXXX, 60 bits), unrelated to token and sheet."""
    chars = "".join(secrets.choice(_RECEIPT_ALPHABET) for _ in range(12))
    return f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"


class EvaluationClosed(BallotRejected):
    def __init__(self) -> None:
        super().__init__(["sheets: the evaluation is closed; no more sheets are taken"])


class NotInEvaluation(BallotRejected):
    """The unit is in another stage (`over`: a later one, its evaluation is over)."""

    def __init__(self, stage: str | None) -> None:
        self.over = stage is not None and stage not in _BEFORE_EVALUATION
        super().__init__([f"sheets: the unit is in stage {stage}; sheets are taken in evaluation"])


@dataclass(frozen=True)
class Pooled:
    receipts: list[str]  # one per sheet, in the order the sheets came
    sheets_by_group: dict[str, int]
    duplicate: bool = False  # a retry: the first answer, nothing spent again
    may_flush: bool = False  # a group of these sheets may let go now (flush_pool's rule)


REFUSED = "KH001"  # ballot_pool_take's refusal (schemas/sql/019_ballot_pool_take.sql)


async def pool_sheets(
    conn: asyncpg.Connection,
    workflow_id: str,
    sheets: Sequence[BallotSheet],
    submission_key: bytes,
    flush_at: int = 1,
) -> Pooled:
    """On a connection outside any transaction: spends the sheets' tokens and pools the
    sheets in one statement (ballot_pool_take, its own transaction), or raises BallotRejected
    naming each sheet whose token is unknown, spent, doubled or beyond its group's plan
    (nothing is spent then). The same `submission_key` again answers with the first
    submission's receipts. `may_flush`: a group of these holds `flush_at` pooled sheets, or
    has spent all its tokens."""
    assert not conn.is_in_transaction(), "pool_sheets takes its own transaction"
    receipts = [new_receipt() for _ in sheets]
    try:
        row = await conn.fetchrow(
            "SELECT earlier::text, sheet_groups, may_flush "
            "FROM ballot_pool_take($1, $2, $3, $4, $5, $6, $7)",
            workflow_id,
            [token_hash(s.token) for s in sheets],
            [json.dumps(sheet_marks(s)) for s in sheets],
            [s.ballot_count() for s in sheets],
            receipts,
            submission_key,
            flush_at,
        )
    except asyncpg.PostgresError as err:
        if err.sqlstate != REFUSED:
            raise
        await _refusal(conn, workflow_id, sheets)
        raise BallotRejected(["sheets: refused while others were taken; send them again"]) from None
    assert row is not None
    if row["earlier"] is not None:
        return Pooled(json.loads(row["earlier"]), {}, duplicate=True)
    groups = row["sheet_groups"]
    return Pooled(receipts, dict(sorted(Counter(groups).items())), may_flush=row["may_flush"])


class _Undo(Exception):
    """Rolls back the checks' transaction when they find nothing wrong."""


async def _refusal(
    conn: asyncpg.Connection, workflow_id: str, sheets: Sequence[BallotSheet]
) -> None:
    """Why ballot_pool_take refused: its checks one by one, each problem named by its sheet
    (claim_tokens), in a transaction rolled back whatever they find. Raises BallotRejected;
    returns only if nothing is wrong any more."""
    stage = await conn.fetchval("SELECT stage FROM units WHERE workflow_id = $1", workflow_id)
    if stage != Stage.EVALUATION.value:
        raise NotInEvaluation(stage)
    try:
        async with conn.transaction():
            await claim_tokens(conn, workflow_id, [s.token for s in sheets])
            if await conn.fetchval(
                "SELECT true FROM ballot_pool_closed WHERE workflow_id = $1", workflow_id
            ):
                raise EvaluationClosed()
            raise _Undo
    except _Undo:
        return


async def flush_pool(
    conn: asyncpg.Connection, workflow_id: str, *, min_sheets: int, closing: bool = False
) -> list[BallotBatchReceipt]:
    """Inside the caller's transaction (not the one that pooled): one batch per rater group
    whose pooled sheets may go (see the module), stored unregistered (source 'pool'); their
    receipts. `closing` flushes every group and takes no sheet after it."""
    await lock_rater_groups(conn, workflow_id)  # one flush (or pooling) at a time
    spent_all = {
        r["group_id"]
        for r in await conn.fetch(
            "SELECT group_id FROM unit_rater_groups WHERE workflow_id = $1 AND returned >= planned",
            workflow_id,
        )
    }
    if closing:
        await conn.execute(
            "INSERT INTO ballot_pool_closed (workflow_id) VALUES ($1) ON CONFLICT DO NOTHING",
            workflow_id,
        )
    waiting = await conn.fetch(
        "SELECT rater_group, count(*) AS n FROM ballot_pool WHERE workflow_id = $1 "
        "GROUP BY rater_group ORDER BY rater_group",
        workflow_id,
    )
    receipts = []
    for row in waiting:
        group, n = row["rater_group"], row["n"]
        if closing or n >= min_sheets or group in spent_all:
            receipts.append(await _flush_group(conn, workflow_id, group))
    return receipts


async def _flush_group(
    conn: asyncpg.Connection, workflow_id: str, group: str
) -> BallotBatchReceipt:
    """The group's pooled sheets as one batch, shuffled, in one statement where they are
    (ballot_pool_let_go of schemas/sql/021)."""
    batch_id = f"{POOL_BATCH_PREFIX}{secrets.token_hex(8)}"
    row = await conn.fetchrow(
        "SELECT ballots, sheets, checksum FROM ballot_pool_let_go($1, $2, $3)",
        workflow_id,
        group,
        batch_id,
    )
    assert row is not None
    return BallotBatchReceipt(
        batch_id=batch_id,
        count=row["ballots"],
        checksum=row["checksum"],
        duplicate=False,
        sheets_by_group={group: row["sheets"]},
    )


async def rewrite_spent_tokens(
    conn: asyncpg.Connection, workflow_id: str, groups: Sequence[str] | None = None
) -> None:
    """In a transaction of its own, after a flush (never the one that wrote marks): every
    spent token of the groups (default: all) gets this transaction's xmin and a new place on
    disk, one by one in an order drawn here, so that neither says any longer in which order,
    or with which batch, it was spent. Under the unit's rater group locks, as pooling and
    flushing are: two rewrites in their own drawn orders would deadlock."""
    await lock_rater_groups(conn, workflow_id)
    spent = [
        r["token_hash"]
        for r in await conn.fetch(
            "SELECT token_hash FROM ballot_tokens WHERE workflow_id = $1 "
            "AND ($2::text[] IS NULL OR rater_group = ANY($2)) AND used_at IS NOT NULL",
            workflow_id,
            None if groups is None else list(groups),
        )
    ]
    _RANDOM.shuffle(spent)
    await conn.executemany(
        "UPDATE ballot_tokens SET used_at = used_at WHERE workflow_id = $1 AND token_hash = $2",
        [(workflow_id, h) for h in spent],
    )


async def unregistered_pool_batches(
    conn: asyncpg.Connection, workflow_id: str
) -> list[BallotBatchReceipt]:
    """Pool batches the unit has not counted yet (their registration was lost, say), now
    registered: what the unit adds when its evaluation closes."""
    rows = await conn.fetch(
        """UPDATE ballot_batches SET registered_at = date_trunc('day', now())
           WHERE workflow_id = $1 AND source = 'pool' AND registered_at IS NULL
           RETURNING batch_id, ballots, checksum, sheets_by_group::text""",
        workflow_id,
    )
    return [
        BallotBatchReceipt(
            batch_id=r["batch_id"],
            count=r["ballots"],
            checksum=r["checksum"],
            duplicate=False,
            sheets_by_group=json.loads(r["sheets_by_group"]),
        )
        for r in sorted(rows, key=lambda r: r["batch_id"])
    ]


async def counted_receipts(conn: asyncpg.Connection, workflow_id: str) -> list[str] | None:
    """The receipts of the counted sheets, sorted (their order says nothing), once the
    evaluation is closed; None before."""
    if not await conn.fetchval(
        "SELECT true FROM ballot_pool_closed WHERE workflow_id = $1", workflow_id
    ):
        return None
    rows = await conn.fetch(
        "SELECT receipt FROM ballot_receipts WHERE workflow_id = $1 ORDER BY receipt", workflow_id
    )
    return [r["receipt"] for r in rows]
