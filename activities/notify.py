"""Notifications through the outbox: one row per idempotency key (workflow id + step) and one
per delivery (recipient and channel), so retries, worker crashes and replays send nothing
that was recorded as sent. A delivery that keeps failing is dead-lettered after the maximum
attempts (an audit row says so) and the workflow goes on.

Sending happens outside any transaction (a webhook may take seconds); what was sent is
recorded right after. A crash between the two sends that delivery again on the retry, the
same body under the same idempotency key (webhook header, email Message-ID): a receiver that
keeps the keys it has taken processes it once (tests/test_notify_channels.py kills a worker
in that window). No sender can do better without the receiver: it cannot know whether a
request that was cut off arrived.
"""

from __future__ import annotations

import asyncio

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit_log import write_audit
from activities.channels import Channels, DeliveryError
from activities.failpoints import failpoint
from activities.metrics import NOTIFICATION_DELIVERIES
from schemas.workflow_io import Delivery, Notification, NotifyOutcome

HEARTBEAT_SECONDS = 1.0  # the workflow's heartbeat timeout for notify is a few of these


async def _heartbeat_every(seconds: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(seconds)


def _step(n: Notification) -> str:
    """The step of an idempotency key, without its visit and deadline (for failpoints)."""
    return n.idempotency_key.rsplit(":", 1)[-1].split("-")[0]


def deliveries_of(n: Notification) -> list[Delivery]:
    """Units started before channels existed name recipients only: the log for each."""
    return n.deliveries or [Delivery(recipient=r, channel="log") for r in n.recipients]


class NotifyActivities:
    def __init__(self, pool: asyncpg.Pool, channels: Channels | None = None) -> None:
        self._pool = pool
        self._channels = channels or Channels()

    @activity.defn
    async def notify(self, n: Notification) -> NotifyOutcome:
        """Delivers what of `n` is not delivered yet; raises (to be retried with backoff)
        while a delivery is still short of its maximum attempts."""
        # Heartbeats while it runs, so that the server hands a dead worker's notification to
        # another within the heartbeat timeout, not the whole start-to-close timeout.
        beating = asyncio.create_task(_heartbeat_every(HEARTBEAT_SECONDS))
        try:
            return await self._notify(n)
        finally:
            beating.cancel()

    async def _notify(self, n: Notification) -> NotifyOutcome:
        deliveries = deliveries_of(n)
        pending = await self._open(n, deliveries)
        if pending is None:
            return NotifyOutcome(status="duplicate")
        failing: list[str] = []
        for d in deliveries:
            if (d.recipient, d.channel) not in pending:
                continue
            try:
                await self._channels.send(n, d)
            except DeliveryError as err:
                if not await self._failed(n, d, str(err)):
                    failing.append(f"{d.recipient} via {d.channel}: {err}")
                continue
            # e.g. notify:notice:sent:webhook: sent, not yet recorded (the one window left).
            failpoint(f"notify:{_step(n)}:sent:{d.channel}")
            await self._record(
                "UPDATE notification_deliveries SET status = 'sent', attempts = attempts + 1, "
                "sent_at = now() WHERE idempotency_key = $1 AND recipient = $2 AND channel = $3",
                n,
                d,
            )
            NOTIFICATION_DELIVERIES.labels(d.channel, "sent").inc()
        if failing:
            raise ApplicationError("; ".join(failing), type="DeliveryFailed")
        return await self._close(n)

    async def _open(
        self, n: Notification, deliveries: list[Delivery]
    ) -> set[tuple[str, str]] | None:
        """The outbox rows, once; the deliveries still pending, or None if `n` was done."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO notifications
                       (idempotency_key, workflow_id, channel, recipients, subject, status)
                   VALUES ($1, $2, $3, $4, $5, 'pending') ON CONFLICT DO NOTHING""",
                n.idempotency_key,
                n.ref.workflow_id,
                ",".join(sorted({d.channel for d in deliveries})),
                n.recipients,
                n.subject,
            )
            # Row lock: a concurrent retry of the same key waits here, then sees it done.
            status = await conn.fetchval(
                "SELECT status FROM notifications WHERE idempotency_key = $1 FOR UPDATE",
                n.idempotency_key,
            )
            if status != "pending":
                return None
            await conn.executemany(
                """INSERT INTO notification_deliveries (idempotency_key, recipient, channel,
                                                        address)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                [(n.idempotency_key, d.recipient, d.channel, d.address) for d in deliveries],
            )
            rows = await conn.fetch(
                "SELECT recipient, channel FROM notification_deliveries "
                "WHERE idempotency_key = $1 AND status = 'pending'",
                n.idempotency_key,
            )
        return {(r["recipient"], r["channel"]) for r in rows}

    async def _failed(self, n: Notification, d: Delivery, error: str) -> bool:
        """Counts a failed attempt; True if that was the last one (dead-lettered)."""
        async with self._pool.acquire() as conn, conn.transaction():
            dead = await conn.fetchval(
                """UPDATE notification_deliveries
                   SET attempts = attempts + 1, last_error = $4,
                       status = CASE WHEN attempts + 1 >= $5 THEN 'dead' ELSE status END
                   WHERE idempotency_key = $1 AND recipient = $2 AND channel = $3
                   RETURNING status = 'dead'""",
                n.idempotency_key,
                d.recipient,
                d.channel,
                error,
                self._channels.max_attempts,
            )
            if dead:
                await write_audit(
                    conn,
                    n.ref,
                    f"dead-letter:{n.idempotency_key}:{d.recipient}:{d.channel}",
                    "notification_dead_lettered",
                    detail={
                        "idempotency_key": n.idempotency_key,
                        "recipient": d.recipient,
                        "channel": d.channel,
                        "error": error,
                    },
                )
        NOTIFICATION_DELIVERIES.labels(d.channel, "dead_lettered" if dead else "failed").inc()
        return bool(dead)

    async def _record(self, sql: str, n: Notification, d: Delivery) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(sql, n.idempotency_key, d.recipient, d.channel)

    async def _close(self, n: Notification) -> NotifyOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            dead = [
                f"{r['recipient']} via {r['channel']}: {r['last_error']}"
                for r in await conn.fetch(
                    "SELECT recipient, channel, last_error FROM notification_deliveries "
                    "WHERE idempotency_key = $1 AND status = 'dead' ORDER BY 1, 2",
                    n.idempotency_key,
                )
            ]
            status = "dead" if dead else "sent"
            await conn.execute(
                """UPDATE notifications SET status = $2, attempts = attempts + 1,
                          sent_at = CASE WHEN $2 = 'sent' THEN now() END
                   WHERE idempotency_key = $1""",
                n.idempotency_key,
                status,
            )
        failpoint(f"notify:{_step(n)}:committed")  # e.g. notify:level1:committed
        return NotifyOutcome(status=status, dead=dead)  # type: ignore[arg-type]
