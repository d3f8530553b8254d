"""Notifications through the outbox: one row per idempotency key, so nothing is sent twice.

The walking skeleton's channel is the structured log; webhook and SMTP channels come with
the deadline work (issue 6) behind the same outbox.
"""

from __future__ import annotations

import asyncpg
import structlog
from temporalio import activity

from activities.failpoints import failpoint
from schemas.workflow_io import Notification

log = structlog.get_logger("kaohe.notify")


class NotifyActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def notify(self, n: Notification) -> bool:
        """Sends `n` unless its key was sent before; True if it was sent now."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO notifications
                       (idempotency_key, workflow_id, channel, recipients, subject, status)
                   VALUES ($1, $2, 'log', $3, $4, 'pending') ON CONFLICT DO NOTHING""",
                n.idempotency_key,
                n.ref.workflow_id,
                n.recipients,
                n.subject,
            )
            # Row lock: a concurrent retry of the same key waits here, then sees 'sent'.
            status = await conn.fetchval(
                "SELECT status FROM notifications WHERE idempotency_key = $1 FOR UPDATE",
                n.idempotency_key,
            )
            if status == "sent":
                return False
            log.info(
                "notification",
                workflow_id=n.ref.workflow_id,
                unit=n.ref.unit_id,
                stage=n.ref.stage.value,
                recipients=n.recipients,
                subject=n.subject,
                key=n.idempotency_key,
            )
            await conn.execute(
                """UPDATE notifications SET status = 'sent', attempts = attempts + 1,
                          sent_at = now() WHERE idempotency_key = $1""",
                n.idempotency_key,
            )
        failpoint(f"notify:{n.idempotency_key.rsplit(':', 1)[-1]}:committed")
        return True
