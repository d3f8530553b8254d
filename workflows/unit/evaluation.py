"""Effects of the evaluation stage (民主测评 and 民主评议): ballot batches, which the unit hears
of by count and checksum only (the sheets went to PostgreSQL through kaohe's API, the ballot
pool or the bulk import, never through history), and the close that tallies them."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain.actions import ActionRejected
    from domain.tally import groups_complete, tally_ballots
    from schemas.common import Actor
    from schemas.messages import CloseEvaluation, RegisterBallotBatch
    from schemas.workflow_io import BallotBatchCheck, BallotBatchReceipt
    from workflows.unit import io
    from workflows.unit.context import Unit


async def register_ballot_batch(u: Unit, a: RegisterBallotBatch) -> str:
    check = BallotBatchCheck(ref=u.ref(), action=a)
    return await _take_batch(u, io.ballots.verify_ballot_batch, check, a.actor)


async def _take_batch(u: Unit, activity: Any, record: Any, actor: Actor) -> str:
    """Stores or verifies a batch, counts its sheets per group, and closes the evaluation
    when every rater group has returned its planned sheets."""
    s = u.state
    try:
        receipt: BallotBatchReceipt = await io.store(activity, record)
    except (ActivityError, ApplicationError) as err:
        # A local activity's failure arrives as the activity's own ApplicationError, a
        # scheduled one's as an ActivityError around it: a batch the database refuses is a
        # rejection either way, by signal as by update.
        cause = err.cause if isinstance(err, ActivityError) else err
        if isinstance(cause, ApplicationError) and cause.type == "BallotRejected":
            raise ActionRejected(cause.message) from err
        raise
    _count(u, receipt)
    message = (
        f"batch {receipt.batch_id}: {receipt.count} ballots on "
        f"{sum(receipt.sheets_by_group.values())} sheets recorded"
    )
    if groups_complete(u.input.rater_groups, s.group_sheets):
        reason = "every rater group returned its planned sheets"
        await finish(u, reason)
        await u.advance(reason, actor)
        return f"{message}; {reason}, evaluation closed"
    return message


async def close_evaluation(u: Unit, a: CloseEvaluation) -> str:
    await finish(u, a.reason)
    await u.advance(a.reason, a.actor)
    return f"evaluation closed with {u.state.ballots()} ballots"


def _count(u: Unit, receipt: BallotBatchReceipt) -> None:
    u.state.batches[receipt.batch_id] = receipt.count
    for group, n in receipt.sheets_by_group.items():
        u.state.group_sheets[group] = u.state.group_sheets.get(group, 0) + n


async def finish(u: Unit, reason: str | None) -> None:
    """The tallies and flags, from counts the database computes (no ballot enters history),
    once the ballot pool has let go of every sheet it held and taken no more."""
    s = u.state
    for receipt in await io.store(io.ballots.close_ballot_pool, u.ref()):
        if receipt.batch_id not in s.batches:
            _count(u, receipt)
    counts = await io.store(io.ballots.count_ballots, u.ref())
    s.tallies, _, s.flags = tally_ballots(counts, u.input.rater_groups, u.input.policy.flags)
    s.evaluation_closed = True
    s.evaluation_close_reason = reason
