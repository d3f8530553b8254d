"""How a notification leaves: the structured log, a signed webhook, or email over SMTP.

Each send raises DeliveryError with a short reason on failure; activities/notify.py counts
the attempts and dead-letters a delivery after the maximum. The idempotency key travels with
every message (header `X-Kaohe-Idempotency-Key`, the email's Message-ID) so that a receiver
can drop the copy a crash between sending and recording may cause.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx
import structlog

from schemas.workflow_io import Delivery, Notification

log = structlog.get_logger("kaohe.notify")


class DeliveryError(Exception):
    """A send that did not go through; the message is safe to store and show."""


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of "timestamp.body", hex: what `X-Kaohe-Signature` carries."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Channels:
    webhook_secret: bytes | None = None
    webhook_timeout: float = 5.0
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "kaohe@localhost"
    smtp_starttls: bool = True
    max_attempts: int = 8

    async def send(self, n: Notification, d: Delivery) -> None:
        if d.channel == "webhook":
            await self._webhook(n, d)
        elif d.channel == "email":
            await self._email(n, d)
        # Every delivery is also logged: recipients and subject, never the body.
        log.info(
            "notification",
            workflow_id=n.ref.workflow_id,
            unit=n.ref.unit_id,
            stage=n.ref.stage.value,
            recipient=d.recipient,
            channel=d.channel,
            subject=n.subject,
            key=n.idempotency_key,
        )

    async def _webhook(self, n: Notification, d: Delivery) -> None:
        if self.webhook_secret is None:
            raise DeliveryError("KAOHE_WEBHOOK_SECRET is not set: webhooks are not signed")
        body = json.dumps(
            {
                "idempotency_key": n.idempotency_key,
                "workflow_id": n.ref.workflow_id,
                "campaign_id": n.ref.campaign_id,
                "unit_id": n.ref.unit_id,
                "stage": n.ref.stage.value,
                "recipient": d.recipient,
                "subject": n.subject,
                "body": n.body,
            },
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Kaohe-Idempotency-Key": n.idempotency_key,
            "X-Kaohe-Timestamp": timestamp,
            "X-Kaohe-Signature": "sha256=" + signature(self.webhook_secret, timestamp, body),
        }
        try:
            async with httpx.AsyncClient(timeout=self.webhook_timeout) as http:
                response = await http.post(d.address, content=body, headers=headers)
        except httpx.HTTPError as err:
            raise DeliveryError(f"webhook: {type(err).__name__}") from None
        if response.status_code >= 300:
            raise DeliveryError(f"webhook: HTTP {response.status_code}")

    async def _email(self, n: Notification, d: Delivery) -> None:
        if self.smtp_host is None:
            raise DeliveryError("KAOHE_SMTP_HOST is not set")
        message = EmailMessage()
        message["From"] = self.smtp_from
        message["To"] = d.address
        message["Subject"] = n.subject
        digest = hashlib.sha256(n.idempotency_key.encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@kaohe>"
        message["X-Kaohe-Idempotency-Key"] = n.idempotency_key
        message.set_content(n.body)
        try:
            await aiosmtplib.send(
                message,
                hostname=self.smtp_host,
                port=self.smtp_port,
                username=self.smtp_user,
                password=self.smtp_password,
                start_tls=self.smtp_starttls,
                timeout=self.webhook_timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as err:
            raise DeliveryError(f"email: {type(err).__name__}") from None
