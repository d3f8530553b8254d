"""Ballot sheets in, by kaohe's API (a ballot system's batch, a rater's page) or a script:
checked against the unit's ballot, pooled, flushed when the pool may go, and announced to
the unit by count and checksum (register_ballot_batch). No sheet and no token ever goes to
Temporal (issue 20); activities/ballot_pool.py says why two transactions.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.ballot_pool import (
    EvaluationClosed,
    NotInEvaluation,
    flush_pool,
    pool_sheets,
    rewrite_spent_tokens,
)
from activities.ballot_store import MAX_PROBLEMS_IN_MESSAGE, BallotRejected
from domain.ballots import batch_problems
from kaohe.ingest.ballot_io import BallotImportError, unit_input_of
from schemas.common import Actor, Role
from schemas.messages import ActionResult, BallotSheet
from schemas.workflow_io import BallotBatchReceipt, UnitInput

log = structlog.get_logger("kaohe.ballots")

POOL_ACTOR = Actor(id="kaohe-ballot-pool", role=Role.INTEGRATOR)


class SheetsUnavailable(Exception):
    """Temporal or PostgreSQL could not be reached: nothing was taken that a retry with the
    same submission key would take twice (it answers with the first receipts)."""


# What a restarting server or database makes a call fail with, for a while.
_TRANSIENT_DB = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class SheetsRefused(Exception):
    """Sheets not taken (nothing spent): the message names the field, e.g.
    `sheets[2].token: already used`; `closed` when the evaluation is over."""

    def __init__(self, message: str, *, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed


@dataclass
class Intake:
    receipts: list[str]  # one per sheet, in the order sent
    sheets_by_group: dict[str, int]
    duplicate: bool = False
    batches: list[BallotBatchReceipt] = field(default_factory=list)  # flushed just now
    answers: list[ActionResult] = field(default_factory=list)  # the unit's, per batch


class BallotIntake:
    """What the API (or a script) takes sheets with: the Temporal client (it signs, and it
    reads a unit's ballot from its first event) and the database."""

    def __init__(self, client: Client, pool: asyncpg.Pool, cache_size: int = 2048) -> None:
        self.client = client
        self.pool = pool
        self._inputs: OrderedDict[str, UnitInput] = OrderedDict()
        self._cache_size = cache_size

    def knows(self, workflow_id: str) -> bool:
        """Whether the unit's ballot is at hand (read for an earlier sheet)."""
        return workflow_id in self._inputs

    async def unit_input(self, workflow_id: str) -> UnitInput:
        """The unit's cadres and ballot policy, as it started (they never change)."""
        found = self._inputs.get(workflow_id)
        if found is None:
            try:
                found = await unit_input_of(self.client, workflow_id)
            except BallotImportError as err:
                if isinstance(err.__cause__, RPCError) and not _not_found(err.__cause__):
                    raise SheetsUnavailable(f"unit: {err}") from None
                raise SheetsRefused(f"unit: {err}") from None
            self._inputs[workflow_id] = found
            if len(self._inputs) > self._cache_size:
                self._inputs.popitem(last=False)
        self._inputs.move_to_end(workflow_id)
        return found

    async def submit(
        self,
        workflow_id: str,
        sheets: Sequence[BallotSheet],
        submission_key: bytes,
        *,
        actor: Actor = POOL_ACTOR,
    ) -> Intake:
        """Takes the sheets all or none (SheetsRefused names why), then flushes what may go
        and registers it with the unit under `actor`. The same `submission_key` (32 bytes,
        see `submission_key`) again is a retry: the first receipts, nothing taken twice."""
        if not sheets:
            raise SheetsRefused("sheets: give at least one sheet")
        unit_input = await self.unit_input(workflow_id)
        problems = batch_problems(list(sheets), unit_input.unit, unit_input.policy.ballots)
        if problems:
            raise SheetsRefused(_joined(problems))
        ballots = unit_input.policy.ballots
        try:
            async with self.pool.acquire() as conn:
                pooled = await pool_sheets(
                    conn, workflow_id, sheets, submission_key, ballots.flush_sheets
                )
        except BallotRejected as err:
            closed = isinstance(err, EvaluationClosed) or (
                isinstance(err, NotInEvaluation) and err.over
            )
            raise SheetsRefused(str(err), closed=closed) from None
        except _TRANSIENT_DB as err:
            raise SheetsUnavailable(f"database: {err}") from None
        intake = Intake(pooled.receipts, pooled.sheets_by_group, duplicate=pooled.duplicate)
        if pooled.may_flush:
            try:
                intake.batches = await self.flush(workflow_id, unit_input)
            except _TRANSIENT_DB as err:  # taken: the next flush, or the close, lets go
                log.warning("pool not flushed", workflow_id=workflow_id, error=str(err))
        for batch in intake.batches:
            answer = await self.register(workflow_id, batch, actor)
            if answer is not None:
                intake.answers.append(answer)
        return intake

    async def flush(self, workflow_id: str, unit_input: UnitInput) -> list[BallotBatchReceipt]:
        """In a transaction of its own, never the one that spent the tokens."""
        flush_at = unit_input.policy.ballots.flush_sheets
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                batches = await flush_pool(conn, workflow_id, min_sheets=flush_at)
            if batches:
                async with conn.transaction():
                    groups = [g for b in batches for g in b.sheets_by_group]
                    await rewrite_spent_tokens(conn, workflow_id, groups)
        return batches

    async def register(
        self, workflow_id: str, batch: BallotBatchReceipt, actor: Actor
    ) -> ActionResult | None:
        """Tells the unit of a flushed batch; a failure leaves it for the unit to count when
        its evaluation closes (it takes every pool batch it has not counted)."""
        payload: dict[str, Any] = {
            "idempotency_key": batch.batch_id,
            "actor": actor.model_dump(mode="json"),
            "batch_id": batch.batch_id,
            "ballots": batch.count,
            "sheets": sum(batch.sheets_by_group.values()),
            "checksum": batch.checksum,
        }
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            return await handle.execute_update(
                "register_ballot_batch",
                payload,
                id=f"register_ballot_batch:{batch.batch_id}",
                result_type=ActionResult,
            )
        except (WorkflowUpdateFailedError, RPCError) as err:
            log.warning(
                "pool batch not registered; the unit counts it at close",
                workflow_id=workflow_id,
                batch_id=batch.batch_id,
                error=str(getattr(err, "cause", None) or err),
            )
            return None


def _not_found(err: RPCError) -> bool:
    return err.status == RPCStatusCode.NOT_FOUND


def submission_key(*parts: str) -> bytes:
    """The key a submission is known by again: who sent it and their idempotency key (a
    ballot system), or the rater's token (the voting page)."""
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def _joined(problems: list[str]) -> str:
    more = len(problems) - MAX_PROBLEMS_IN_MESSAGE
    return "; ".join(problems[:MAX_PROBLEMS_IN_MESSAGE]) + (
        f"; and {more} more" if more > 0 else ""
    )
