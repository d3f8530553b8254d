"""Durable requests (202, `Prefer: respond-async`): stored in PostgreSQL and sent by every API
process that runs (rows are claimed with SKIP LOCKED), retried with backoff while Temporal
cannot be reached, until the unit accepts or rejects them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from kaohe.api.problems import Problem

log = structlog.get_logger("kaohe.api")

Send = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
MAX_BACKOFF_SECONDS = 60.0


class RequestQueue:
    def __init__(self, pool: asyncpg.Pool, send: Send, poll_seconds: float = 0.2) -> None:
        self._pool = pool
        self._send = send
        self._poll = poll_seconds
        self._wake = asyncio.Event()

    async def put(self, principal: str, workflow_id: str, action: str, payload: dict) -> str:
        request_id = uuid.uuid4().hex
        async with self._pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO api_requests (request_id, principal, workflow_id, action, payload)
                   VALUES ($1, $2, $3, $4, $5::jsonb)""",
                request_id,
                principal,
                workflow_id,
                action,
                json.dumps(payload, ensure_ascii=False),
            )
        self._wake.set()
        return request_id

    async def get(self, request_id: str, principal: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT request_id, action, state, answer, attempts FROM api_requests
                   WHERE request_id = $1 AND principal = $2""",
                request_id,
                principal,
            )
        if row is None:
            return None
        out = dict(row)
        out["answer"] = json.loads(row["answer"]) if row["answer"] else None
        return out

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                while await self._send_one():
                    pass
            except (OSError, asyncpg.PostgresError):
                log.warning("request queue: database unavailable; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    async def _send_one(self) -> bool:
        """Sends the oldest due request, if any; False when none is due."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT request_id, workflow_id, action, payload, attempts FROM api_requests
                   WHERE state = 'queued' AND next_at <= now()
                   ORDER BY next_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
            )
            if row is None:
                return False
            state, answer, attempts = "queued", None, row["attempts"] + 1
            try:
                result = await self._send(
                    row["workflow_id"], row["action"], json.loads(row["payload"])
                )
                state, answer = "accepted", result.model_dump(mode="json")
            except Problem as problem:
                if problem.status >= 500:  # the unit's storage unavailable: try again later
                    log.warning("request queue: unit unavailable", detail=problem.detail)
                else:
                    state = "rejected"
                    answer = {
                        "status": problem.status,
                        "detail": problem.detail,
                        "retryable": problem.extra.get("retryable", False),
                    }
            except Exception as err:  # Temporal unreachable, a timeout: try again later
                log.warning("request queue: send failed", error=type(err).__name__)
            backoff = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(attempts, 10))
            await conn.execute(
                """UPDATE api_requests SET state = $2, answer = $3::jsonb, attempts = $4,
                          next_at = now() + make_interval(secs => $5), updated_at = now()
                   WHERE request_id = $1""",
                row["request_id"],
                state,
                json.dumps(answer, ensure_ascii=False) if answer is not None else None,
                attempts,
                backoff,
            )
        return True
