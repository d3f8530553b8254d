"""Notification channels on loopback: a signed webhook, email to an SMTP server (aiosmtpd),
and receivers that fail or hang: dead-lettered after the maximum attempts while the unit
goes on."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from pydantic import ValidationError
from temporalio.client import Client

from activities.channels import Channels, signature
from activities.failpoints import KILLED
from activities.notify import NotifyActivities
from activities.storage import StorageActivities
from kaohe.listening import free_port, listen
from kaohe.sim.simulate import UNIT_CONTACT, wait_for_status
from schemas.common import Stage
from schemas.messages import AcknowledgeNotice
from schemas.roster import Contact, Roster
from schemas.workflow_io import UnitInput
from tests.conftest import Stack
from tests.helpers import TEST_POLICY, sample_unit
from tests.test_campaign import wait_for
from tests.test_worker_restart import spawn_worker
from worker import build_worker
from workflows.unit import UnitAssessment

SECRET = b"webhook-secret-for-tests"


@dataclass
class Receiver:
    """A webhook endpoint: answers `status` (after `delay` seconds) and keeps what came."""

    status: int = 200
    delay: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    port = free_port()
    runner = await listen(app, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content)
        return "250 OK"


@asynccontextmanager
async def channel_worker(
    client: Client, pool: asyncpg.Pool, channels: Channels
) -> AsyncIterator[str]:
    task_queue = f"notify-{uuid.uuid4().hex[:8]}"
    notify = NotifyActivities(pool, channels)
    async with build_worker(client, StorageActivities(pool), notify, task_queue):
        yield task_queue


async def start(client: Client, task_queue: str, contacts: dict[str, Contact]) -> tuple:  # type: ignore[type-arg]
    unit = sample_unit()
    unit.contact = "office"
    handle = await client.start_workflow(
        UnitAssessment.run,
        UnitInput(
            campaign_id="test",
            year=2026,
            campaign_title="测试考核",
            unit=unit,
            policy=TEST_POLICY,
            contacts=contacts,
        ),
        id=f"kaohe-test-{unit.unit_id}",
        task_queue=task_queue,
    )
    return unit, handle


async def deliveries(pool: asyncpg.Pool, workflow_id: str) -> list[tuple[str, str, str, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT d.recipient, d.channel, d.status, d.attempts FROM notification_deliveries d "
            "JOIN notifications n USING (idempotency_key) WHERE n.workflow_id = $1 "
            "AND n.idempotency_key LIKE '%:notice' ORDER BY 1, 2",
            workflow_id,
        )
    return [(r["recipient"], r["channel"], r["status"], r["attempts"]) for r in rows]


async def test_signed_webhook_and_email_each_once(client: Client, pool: asyncpg.Pool) -> None:
    receiver, inbox = Receiver(), Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        channels = Channels(
            webhook_secret=SECRET, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=False
        )
        async with serving(receiver) as url, channel_worker(client, pool, channels) as tq:
            office = Contact(webhook=url, email="office@unit.example")
            unit, handle = await start(client, tq, {"office": office})

            async def both_arrived() -> bool:
                return bool(receiver.received and inbox.messages)

            await wait_for(both_arrived, 20)
            await asyncio.sleep(0.5)  # nothing more should come
    finally:
        smtp.stop()
    [(headers, body)] = receiver.received
    key = f"{handle.id}:notice"
    assert headers["X-Kaohe-Idempotency-Key"] == key
    expected = signature(SECRET, headers["X-Kaohe-Timestamp"], body)
    assert headers["X-Kaohe-Signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert (payload["recipient"], payload["unit_id"]) == ("office", unit.unit_id)
    [mail] = inbox.messages
    assert b"office@unit.example" in mail and key.encode() in mail
    # The office by webhook and email; the cadres, not in contacts, by the log.
    rows = await deliveries(pool, handle.id)
    assert ("office", "webhook", "sent", 1) in rows and ("office", "email", "sent", 1) in rows
    assert {r[1] for r in rows if r[0] != "office"} == {"log"}


@pytest.mark.parametrize("failure", ["http-500", "hangs"])
async def test_a_failing_receiver_is_dead_lettered_and_the_unit_goes_on(
    client: Client, pool: asyncpg.Pool, failure: str
) -> None:
    receiver = Receiver(status=500) if failure == "http-500" else Receiver(delay=5)
    channels = Channels(webhook_secret=SECRET, webhook_timeout=0.5, max_attempts=3)
    async with serving(receiver) as url, channel_worker(client, pool, channels) as tq:
        _, handle = await start(client, tq, {"office": Contact(webhook=url)})
        # The notice's webhook is still failing: the unit takes its acknowledgement meanwhile.
        result = await handle.execute_update(
            UnitAssessment.acknowledge_notice,
            AcknowledgeNotice(idempotency_key="ack", actor=UNIT_CONTACT),
        )
        assert result.accepted and result.stage == Stage.REPORT_BACK
        # ... before the webhook has given up: the unit did not wait for it.
        assert (await handle.query(UnitAssessment.status)).dead_letters == []
        status = await wait_for_status(handle, lambda s: bool(s.dead_letters), 30)
    assert len(receiver.received) == 3
    [dead] = status.dead_letters
    reason = "HTTP 500" if failure == "http-500" else "ReadTimeout"
    assert dead.startswith("notice: office via webhook: webhook: ") and reason in dead
    assert ("office", "webhook", "dead", 3) in await deliveries(pool, handle.id)
    async with pool.acquire() as conn:
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE workflow_id = $1 "
            "AND kind = 'notification_dead_lettered'",
            handle.id,
        )
    assert audited == 1


async def test_a_worker_killed_between_sending_and_recording_sends_under_the_same_key(
    stack: Stack, client: Client, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The one window no outbox closes: the receiver answered, the worker died before the
    sent row was written. The next worker sends it again, the same body under the same key,
    so a receiver that keeps the keys it took processes it once; the outbox says sent, once."""
    receiver = Receiver()
    task_queue = f"notify-kill-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    env = {"KAOHE_WEBHOOK_SECRET": SECRET.decode()}
    async with serving(receiver) as url:
        doomed = spawn_worker(stack, task_queue, log, "notify:notice:sent:webhook", env)
        _, handle = await start(client, task_queue, {"office": Contact(webhook=url)})
        assert await asyncio.to_thread(doomed.wait, 60) == KILLED
        assert len(receiver.received) == 1  # it arrived; the worker died before recording it
        survivor = spawn_worker(stack, task_queue, log, env=env)
        try:

            async def recorded() -> bool:
                return ("office", "webhook", "sent", 1) in await deliveries(pool, handle.id)

            await wait_for(recorded, 30)
        finally:
            survivor.terminate()
            survivor.wait(timeout=30)
    [(first, body1), (again, body2)] = receiver.received
    key = f"{handle.id}:notice"
    assert first["X-Kaohe-Idempotency-Key"] == again["X-Kaohe-Idempotency-Key"] == key
    assert body1 == body2
    for headers, body in receiver.received:
        assert headers["X-Kaohe-Signature"] == "sha256=" + signature(
            SECRET, headers["X-Kaohe-Timestamp"], body
        )
    taken = {h["X-Kaohe-Idempotency-Key"] for h, _ in receiver.received}
    assert taken == {key}  # what a receiver keeping its keys processes: once
    rows = await deliveries(pool, handle.id)
    assert [r for r in rows if r[1] == "webhook"] == [("office", "webhook", "sent", 1)]
    assert {r[2] for r in rows} == {"sent"}


def test_recipients_are_checked_against_the_contacts() -> None:
    unit = sample_unit()
    with pytest.raises(ValidationError) as info:
        Roster(
            campaign_id="c",
            year=2026,
            title="t",
            units=[unit],
            contacts={"department": Contact(email="org@x.example")},
            group_leader="leader",
        )
    message = str(info.value)
    assert "group_leader: 'leader' is not in contacts" in message
    assert "units[0].contact:" in message and "is not in contacts" in message
    with pytest.raises(ValidationError, match="webhook"):
        Contact(webhook="ftp://nope")
