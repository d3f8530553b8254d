"""Stage deadlines on the real servers, with second-long working days: reminder, escalation
levels 1 and 2 exactly once, KaoheStalled in visibility, extend, pause and resume."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from activities.failpoints import KILLED
from kaohe.sim.simulate import (
    DEPARTMENT,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
)
from schemas.common import Stage
from schemas.messages import AcknowledgeNotice, ActionResult
from schemas.policy import DeadlinePolicy, Policy
from tests.conftest import Stack
from tests.helpers import TEST_POLICY, sample_unit, start_unit
from tests.test_campaign import wait_for
from tests.test_cli import akaohe
from tests.test_worker_restart import spawn_worker
from workflows.unit import UnitAssessment


def clock_policy(notice_days: int, reminder: int, escalate_after: int) -> Policy:
    """A working day lasts a second; only the notice stage has a deadline."""
    deadlines = DeadlinePolicy(
        working_days={Stage.NOTICE: notice_days},
        reminder_working_days=reminder,
        escalate_after_working_days=escalate_after,
    )
    demo = TEST_POLICY.demo.model_copy(update={"working_day_seconds": 1})
    return TEST_POLICY.model_copy(update={"deadlines": deadlines, "demo_clock": demo})


async def audit(pool: asyncpg.Pool, workflow_id: str) -> list[tuple[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind, detail->>'level' AS level FROM audit_log WHERE workflow_id = $1 "
            "AND kind IN ('deadline_reminder', 'escalation', 'deadline_extended', 'paused', "
            "'resumed') ORDER BY id",
            workflow_id,
        )
    return [(r["kind"], r["level"]) for r in rows]


async def stalled_ids(client: Client, unit_id: str) -> list[str]:
    query = f'KaoheStalled = true AND KaoheUnit = "{unit_id}"'
    return [wf.id async for wf in client.list_workflows(query)]


async def act(handle: WorkflowHandle, name: str, **body: Any) -> ActionResult:
    payload = {"idempotency_key": f"{name}-{len(body)}-{body.get('days', '')}", **body}
    payload.setdefault("actor", DEPARTMENT.model_dump(mode="json"))
    return await handle.execute_update(name, payload, result_type=ActionResult)


async def test_reminder_then_escalation_levels_once_each_and_cleared_by_the_next_stage(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    # Deadline 3 s after the start; the reminder 1 s before it; level 2 1 s after it.
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, policy=clock_policy(3, 1, 1))
    status = await wait_for_status(handle, lambda s: s.escalation_level == 2, 30)
    assert status.stalled and status.escalation_level == 2 and status.deadline is not None
    assert await audit(pool, handle.id) == [
        ("deadline_reminder", "0"),
        ("escalation", "1"),
        ("escalation", "2"),
    ]

    # Each step in the status and in the UI's current details.
    assert [step.split(" 20")[0] for step in status.deadline_steps] == [
        "reminder",
        "escalation level 1",
        "escalation level 2",
    ]
    assert status.deadline_steps[-1].endswith("→ organization-department")
    assert "escalation level 2" in await current_details(handle)
    assert await wait_for(lambda: steps_delivered(pool, handle.id)) == [
        (unit.contact or unit.unit_id, "sent", 1),
        ("assessment-group-leader", "sent", 1),
        ("organization-department", "sent", 1),
    ]
    assert await wait_for(lambda: stalled_ids(client, unit.unit_id)) == [handle.id]
    shown = await akaohe(stack, "stalled", "--campaign", "test")
    assert shown.returncode == 0 and unit.unit_id in shown.stdout, shown.stderr
    everywhere = await akaohe(stack, "stalled")  # every campaign's
    assert everywhere.returncode == 0 and unit.unit_id in everywhere.stdout, everywhere.stderr

    # The stage completes: not stalled any more, and nothing fires again.
    await handle.execute_update(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key="ack", actor=UNIT_CONTACT),
    )
    status = await handle.query(UnitAssessment.status)
    assert status.stage == Stage.REPORT_BACK
    assert not status.stalled and status.escalation_level == 0 and status.deadline is None
    assert status.deadline_steps == [] and "Deadline steps" not in await current_details(handle)
    await wait_for(lambda: _none(stalled_ids(client, unit.unit_id)))
    assert len(await audit(pool, handle.id)) == 3


async def steps_delivered(pool: asyncpg.Pool, workflow_id: str) -> list[tuple[str, str, int]]:
    """(recipient, status, attempts) of the three deadline steps' deliveries once all three
    are done, else []: they go out in the background, as activities, so the last may still be
    on its way when the status shows level 2."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT d.recipient, d.status, d.attempts FROM notification_deliveries d "
            "JOIN notifications n USING (idempotency_key) WHERE n.workflow_id = $1 "
            "AND n.idempotency_key NOT LIKE '%:notice' ORDER BY n.created_at",
            workflow_id,
        )
    found = [(r["recipient"], r["status"], r["attempts"]) for r in rows]
    return found if len(found) == 3 and all(f[1] != "pending" for f in found) else []


async def current_details(handle: WorkflowHandle) -> str:
    """What the Temporal UI shows as the workflow's current details."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def _none(ids):  # type: ignore[no-untyped-def]
    return not await ids


async def test_reminders_go_to_whoever_the_stage_waits_for(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    """Talks wait for the assessment group; grading for the group until it proposes, then
    for the approver."""
    deadlines = DeadlinePolicy(
        working_days={Stage.TALKS: 3, Stage.GRADING: 3},
        reminder_working_days=1,
        escalate_after_working_days=30,
    )
    demo = TEST_POLICY.demo.model_copy(update={"working_day_seconds": 2})
    policy = TEST_POLICY.model_copy(update={"deadlines": deadlines, "demo_clock": demo})
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, policy=policy)
    await drive_unit(client, handle.id, unit, policy=policy, stop_at=Stage.TALKS, tokens=tokens)
    status = await wait_for_status(handle, lambda s: bool(s.deadline_steps), 30)
    assert status.stage == Stage.TALKS
    [reminder] = status.deadline_steps
    assert reminder.startswith("reminder") and reminder.endswith("→ assessment-group")

    await drive_unit(
        client, handle.id, unit, policy=policy, stop_at=Stage.GRADING, tokens=tokens, talks=talks
    )
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    status = await wait_for_status(
        handle, lambda s: s.stage == Stage.GRADING and bool(s.deadline_steps), 30
    )
    [grading] = status.deadline_steps
    assert grading.startswith("reminder") and grading.endswith("→ approver")
    # The step shows in status as the reminder goes out; its audit row follows it.
    for _ in range(100):
        async with pool.acquire() as conn:
            reminded = await conn.fetch(
                "SELECT detail->>'notified' AS who FROM audit_log WHERE workflow_id = $1 "
                "AND kind = 'deadline_reminder' ORDER BY id",
                handle.id,
            )
        if len(reminded) >= 2:
            break
        await asyncio.sleep(0.1)
    assert [r["who"] for r in reminded] == ["assessment-group", "approver"]


async def test_extend_clears_the_escalation_and_pause_stops_the_clock(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, policy=clock_policy(2, 0, 30))
    await wait_for_status(handle, lambda s: s.escalation_level == 1, 20)

    with pytest.raises(WorkflowUpdateFailedError) as info:
        await act(
            handle, "extend_deadline", days=3, reason="单位调整", actor=UNIT_CONTACT.model_dump()
        )
    assert "actor.role: 'unit' may not extend_deadline" in str(info.value.cause)

    before = (await handle.query(UnitAssessment.status)).deadline
    # Enough working seconds that the CLI's pause below lands before the new deadline even
    # on a loaded 2-core machine (a CLI process takes seconds to start there).
    extended = await akaohe(stack, "extend", handle.id, "--days", "10", "--reason", "单位机构调整")
    assert extended.returncode == 0, extended.stderr
    status = await handle.query(UnitAssessment.status)
    assert not status.stalled and status.escalation_level == 0
    assert before is not None and status.deadline is not None
    assert (status.deadline - before).total_seconds() == pytest.approx(10)
    new_deadline = status.deadline

    paused = await akaohe(stack, "pause", handle.id, "--reason", "主要负责人调整")
    assert paused.returncode == 0, paused.stderr
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await act(handle, "pause", reason="再次暂停")
    assert "the unit is paused since" in str(info.value.cause)
    # Past the extended deadline: a paused clock does not run out.
    past = (new_deadline - dt.datetime.now(dt.UTC)).total_seconds() + 1
    await asyncio.sleep(max(past, 0))
    status = await handle.query(UnitAssessment.status)
    assert status.paused_since is not None and status.escalation_level == 0

    resumed = await akaohe(stack, "resume", handle.id, "--reason", "调整完毕")
    assert resumed.returncode == 0, resumed.stderr
    status = await handle.query(UnitAssessment.status)
    assert status.paused_since is None and status.deadline is not None
    assert status.deadline - new_deadline > dt.timedelta(seconds=past)  # moved by the pause
    await wait_for_status(handle, lambda s: s.escalation_level == 1, 20)
    kinds = [k for k, _ in await audit(pool, handle.id)]
    assert kinds == ["escalation", "deadline_extended", "paused", "resumed", "escalation"]


async def test_each_step_once_though_the_worker_dies_after_sending_level_1(
    stack: Stack, client: Client, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The worker dies right after the level-1 notification is recorded as sent, before the
    workflow knows; the next worker retries it (nothing sent again) and goes on to level 2.
    Visibility then lists exactly the stalled unit of the campaign, not its punctual peer."""
    task_queue = f"deadline-kill-{uuid.uuid4().hex[:8]}"
    campaign = f"late-{uuid.uuid4().hex[:6]}"
    policy = clock_policy(3, 1, 1)
    late, punctual = sample_unit(), sample_unit()
    log = tmp_path / "worker.log"
    doomed = spawn_worker(stack, task_queue, log, failpoint="notify:level1:committed")
    handle = await start_unit(client, task_queue, late, campaign_id=campaign, policy=policy)
    other = await start_unit(client, task_queue, punctual, campaign_id=campaign, policy=policy)
    await other.execute_update(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key="ack", actor=UNIT_CONTACT),
    )
    assert await asyncio.to_thread(doomed.wait, 60) == KILLED

    survivor = spawn_worker(stack, task_queue, log)
    try:
        status = await wait_for_status(handle, lambda s: s.escalation_level == 2, 60)
        rows = await wait_for(lambda: steps_delivered(pool, handle.id))
    finally:
        survivor.terminate()
        survivor.wait(timeout=30)
    assert status.escalation_level == 2
    assert await audit(pool, handle.id) == [
        ("deadline_reminder", "0"),
        ("escalation", "1"),
        ("escalation", "2"),
    ]
    assert rows == [
        (late.contact or late.unit_id, "sent", 1),
        ("assessment-group-leader", "sent", 1),
        ("organization-department", "sent", 1),
    ]

    async def stalled_in_campaign() -> list[str]:
        query = f'KaoheStalled = true AND KaoheCampaign = "{campaign}"'
        return [wf.id async for wf in client.list_workflows(query)]

    assert await wait_for(stalled_in_campaign) == [handle.id]
