"""What kaohe's API takes and answers for ballot sheets (kaohe/api/ballots.py). Sheets never
reach a workflow: the unit is told of them by count and checksum (register_ballot_batch)."""

from __future__ import annotations

from pydantic import Field

from schemas.common import IdempotencyKey, Model
from schemas.messages import MAX_SHEETS_PER_BATCH, BallotSheet


class SheetsSubmission(Model):
    """A ballot system's sheets (POST /v1/campaigns/{c}/units/{u}/ballots): all taken or
    none; the same idempotency key again answers with the first receipts."""

    idempotency_key: IdempotencyKey
    sheets: list[BallotSheet] = Field(min_length=1, max_length=MAX_SHEETS_PER_BATCH)


class SheetsTaken(Model):
    """Sheets taken: each sheet's receipt (in the order sent), to hand to its rater; the
    sheets wait in the pool until enough of their rater group are in (policy
    ballots.pool_flush_sheets, never fewer than ballots.anonymity_min_sheets), then count."""

    receipts: list[str]
    duplicate: bool = Field(default=False, description="A retry: nothing was taken again.")
    counted_batches: int = Field(
        default=0, description="Pool batches this submission let go to the unit."
    )
