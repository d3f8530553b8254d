"""Ballot activities: sheets by update, batches from the bulk import, counts (the SQL is in
activities/ballot_store.py).

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
from activities.ballot_store import (
    BallotRejected,
    count_overall,
    prepare_batch,
    receipt_detail,
    store_batch,
    verify_batch,
)
from activities.metrics import BALLOT_SHEETS_INGESTED, BALLOTS_INGESTED
from schemas.messages import RecordBallots, RegisterBallotBatch
from schemas.workflow_io import (
    BallotBatchCheck,
    BallotBatchReceipt,
    BallotCounts,
    BallotSheetsRecord,
    UnitRef,
)

BALLOT_REJECTED = "BallotRejected"


def _rejected(ref: UnitRef, batch_id: str, err: BallotRejected) -> ApplicationError:
    log_event(ref, "ballot batch rejected", batch_id=batch_id, problems=len(err.problems))
    return ApplicationError(str(err), type=BALLOT_REJECTED, non_retryable=True)


class BallotActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def save_ballot_sheets(self, rec: BallotSheetsRecord) -> BallotBatchReceipt:
        """record_ballots: checks and uses the tokens, stores the marks and the batch, all or
        nothing; the same batch again is a duplicate, another with the same id a rejection."""
        batch = prepare_batch(rec.action.batch_id, rec.action.sheets)

        # The planned counts come from unit_rater_groups, which register_unit filled.
        async def store(conn: asyncpg.Connection) -> BallotBatchReceipt:
            return await store_batch(conn, rec.ref.workflow_id, batch, "update")

        return await self._take(
            rec.ref, rec.action, batch.sheets, "update", "ballots_recorded", store
        )

    @activity.defn
    async def verify_ballot_batch(self, rec: BallotBatchCheck) -> BallotBatchReceipt:
        """register_ballot_batch: the import stored the batch; confirm it is as announced."""

        async def verify(conn: asyncpg.Connection) -> BallotBatchReceipt:
            return await verify_batch(conn, rec.ref.workflow_id, rec.action)

        return await self._take(
            rec.ref, rec.action, rec.action.sheets, "import", "ballots_registered", verify
        )

    async def _take(
        self,
        ref: UnitRef,
        a: RecordBallots | RegisterBallotBatch,
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
            "ballot batch stored" if source == "update" else "imported ballot batch registered",
            batch_id=a.batch_id,
            ballots=receipt.count,
            sheets=sheets,
            duplicate=receipt.duplicate,
        )
        return receipt

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
