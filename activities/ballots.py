"""Ballot activities of units started with ballot sheets (see activities/ballot_store.py).

The workflow calls them as local activities by name. A batch that cannot be taken raises a
non-retryable ApplicationError of type "BallotRejected" whose message names the field (e.g.
`sheets[3].token: already used`); the workflow turns it into the update's rejection.
"""

from __future__ import annotations

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
        a = rec.action
        batch = prepare_batch(a.batch_id, a.sheets)
        try:
            # The planned counts come from unit_rater_groups, which register_unit filled.
            async with self._pool.acquire() as conn, conn.transaction():
                receipt = await store_batch(conn, rec.ref.workflow_id, batch, "update")
                if not receipt.duplicate:
                    await write_audit(
                        conn,
                        rec.ref,
                        f"ballots:{a.batch_id}",
                        "ballots_recorded",
                        a.actor,
                        receipt_detail(receipt, "update"),
                    )
        except BallotRejected as err:
            raise _rejected(rec.ref, a.batch_id, err) from None
        _count_ingested(receipt, batch.sheets, "update")
        log_event(
            rec.ref,
            "ballot batch stored",
            batch_id=a.batch_id,
            ballots=receipt.count,
            sheets=batch.sheets,
            duplicate=receipt.duplicate,
        )
        return receipt

    @activity.defn
    async def verify_ballot_batch(self, rec: BallotBatchCheck) -> BallotBatchReceipt:
        """register_ballot_batch: the import stored the batch; confirm it is as announced."""
        a = rec.action
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                receipt = await verify_batch(conn, rec.ref.workflow_id, a)
                await write_audit(
                    conn,
                    rec.ref,
                    f"ballots:{a.batch_id}",
                    "ballots_registered",
                    a.actor,
                    receipt_detail(receipt, "import"),
                )
        except BallotRejected as err:
            raise _rejected(rec.ref, a.batch_id, err) from None
        _count_ingested(receipt, a.sheets, "import")
        log_event(
            rec.ref,
            "imported ballot batch registered",
            batch_id=a.batch_id,
            ballots=receipt.count,
            sheets=a.sheets,
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
