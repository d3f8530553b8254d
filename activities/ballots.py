"""Ballot activities: pool batches and imported batches registered, the pool closed, counts
(the SQL is in activities/ballot_store.py and activities/ballot_pool.py). No sheet reaches
them: the unit names a batch by id, count and checksum.

The workflow calls them as local activities. A batch that cannot be taken raises a
non-retryable ApplicationError of type "BallotRejected" whose message names the field (e.g.
`sheets[3].token: already used`); the workflow turns it into the update's rejection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit_log import log_event, write_audit
from activities.ballot_pool import (
    POOL_BATCH_PREFIX,
    flush_pool,
    rewrite_spent_tokens,
    unregistered_pool_batches,
)
from activities.ballot_store import (
    BallotRejected,
    count_overall,
    receipt_detail,
    verify_batch,
)
from activities.metrics import BALLOT_SHEETS_INGESTED, BALLOTS_INGESTED
from schemas.common import Actor, Role
from schemas.messages import RegisterBallotBatch
from schemas.workflow_io import (
    BallotBatchCheck,
    BallotBatchReceipt,
    BallotCounts,
    UnitRef,
)

BALLOT_REJECTED = "BallotRejected"
# Who registers what the pool still held when the evaluation closed: the unit itself.
POOL_CLOSER = Actor(id="evaluation-close", role=Role.INTEGRATOR)


def _rejected(ref: UnitRef, batch_id: str, err: BallotRejected) -> ApplicationError:
    log_event(ref, "ballot batch rejected", batch_id=batch_id, problems=len(err.problems))
    return ApplicationError(str(err), type=BALLOT_REJECTED, non_retryable=True)


class BallotActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def verify_ballot_batch(self, rec: BallotBatchCheck) -> BallotBatchReceipt:
        """register_ballot_batch: the import stored the batch; confirm it is as announced."""

        async def verify(conn: asyncpg.Connection) -> BallotBatchReceipt:
            return await verify_batch(conn, rec.ref.workflow_id, rec.action)

        source = "pool" if rec.action.batch_id.startswith(POOL_BATCH_PREFIX) else "import"
        return await self._take(
            rec.ref, rec.action, rec.action.sheets, source, "ballots_registered", verify
        )

    async def _take(
        self,
        ref: UnitRef,
        a: RegisterBallotBatch,
        sheets: int,
        source: str,
        kind: str,
        write: Callable[[asyncpg.Connection], Awaitable[BallotBatchReceipt]],
    ) -> BallotBatchReceipt:
        """A batch and its audit row in one transaction (the row once per batch: a duplicate
        adds none); a batch the database refuses is a non-retryable rejection."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                receipt = await write(conn)
                await write_audit(
                    conn,
                    ref,
                    f"ballots:{a.batch_id}",
                    kind,
                    a.actor,
                    receipt_detail(receipt, source),
                )
        except BallotRejected as err:
            raise _rejected(ref, a.batch_id, err) from None
        _count_ingested(receipt, sheets, source)
        log_event(
            ref,
            f"{source} ballot batch registered",
            batch_id=a.batch_id,
            ballots=receipt.count,
            sheets=sheets,
            duplicate=receipt.duplicate,
        )
        return receipt

    @activity.defn
    async def close_ballot_pool(self, ref: UnitRef) -> list[BallotBatchReceipt]:
        """The evaluation closes: no sheet is pooled after this, the pooled ones are counted
        (one batch per rater group, however few), and every pool batch the unit was not told
        of yet is registered and returned for it to count (activities/ballot_pool.py)."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await flush_pool(conn, ref.workflow_id, min_sheets=1, closing=True)
                receipts = await unregistered_pool_batches(conn, ref.workflow_id)
                for receipt in receipts:
                    await write_audit(
                        conn,
                        ref,
                        f"ballots:{receipt.batch_id}",
                        "ballots_registered",
                        POOL_CLOSER,
                        receipt_detail(receipt, "pool"),
                    )
            async with conn.transaction():
                await rewrite_spent_tokens(conn, ref.workflow_id)
        for receipt in receipts:
            _count_ingested(receipt, sum(receipt.sheets_by_group.values()), "pool")
        log_event(ref, "ballot pool closed", batches=len(receipts))
        return receipts

    @activity.defn
    async def count_ballots(self, ref: UnitRef) -> BallotCounts:
        """Overall marks per kind, target, rater group and option, and sheets per group."""
        async with self._pool.acquire() as conn:
            counts = await count_overall(conn, ref.workflow_id)
        log_event(ref, "ballots counted", sheets=sum(counts.sheets_by_group.values()))
        return counts


def _count_ingested(receipt: BallotBatchReceipt, sheets: int, source: str) -> None:
    """After the commit, and once per batch: a duplicate stored nothing."""
    if not receipt.duplicate:
        BALLOTS_INGESTED.labels(source).inc(receipt.count)
        BALLOT_SHEETS_INGESTED.labels(source).inc(sheets)
