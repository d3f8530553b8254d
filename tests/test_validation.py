"""Bad input is rejected with the field named, never enters history, and the unit goes on."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from kaohe.sim.simulate import (
    APPROVER,
    GROUP,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
)
from schemas.common import Stage
from schemas.messages import (
    AcknowledgeNotice,
    ActionResult,
    ApproveGrades,
    CloseStage,
    RecordTalk,
    SubmitReport,
)
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment


async def accepted_updates(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        for e in history.events
    )


async def rejection(handle: WorkflowHandle, name: str, payload: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(name, payload, result_type=ActionResult)
    return str(info.value.cause)


def ack(key: str = "ack-1") -> AcknowledgeNotice:
    return AcknowledgeNotice(idempotency_key=key, actor=UNIT_CONTACT)


def team_report(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "actor": {"id": "unit-office", "role": "unit"},
        "kind": "team",
        "title": "年度工作总结",
        "text": "总结",
        **extra,
    }


async def test_wrong_stage_is_rejected_and_the_unit_goes_on(client: Client, worker: str) -> None:
    handle = await start_unit(client, worker, sample_unit())
    message = await rejection(handle, "submit_report", team_report("r1"))
    assert "current stage" in message
    assert "'notice'" in message and "report_back" in message
    assert await accepted_updates(handle) == 0

    result = await handle.execute_update(UnitAssessment.acknowledge_notice, ack())
    assert result.accepted and result.stage == Stage.REPORT_BACK
    assert (await handle.describe()).status is not None
    result = await handle.execute_update(
        "submit_report", team_report("r1"), result_type=ActionResult
    )
    assert result.accepted
    assert await accepted_updates(handle) == 2


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"actor": {"id": "x", "role": "unit"}}, "idempotency_key"),
        ({"idempotency_key": "k"}, "actor"),
        ({"idempotency_key": "k", "actor": {"id": "x", "role": "janitor"}}, "actor.role"),
        ({"idempotency_key": "k", "actor": {"id": "x", "role": "unit"}, "colour": 1}, "colour"),
        ({"idempotency_key": "", "actor": {"id": "x", "role": "unit"}}, "idempotency_key"),
        ({"idempotency_key": "k" * 500, "actor": {"id": "x", "role": "unit"}}, "idempotency_key"),
        ({"idempotency_key": "k", "actor": "unit-office"}, "actor"),
    ],
)
async def test_malformed_payload_names_the_field(
    client: Client, worker: str, payload: dict[str, Any], field: str
) -> None:
    handle = await start_unit(client, worker, sample_unit())
    message = await rejection(handle, "acknowledge_notice", payload)
    assert field in message
    assert await accepted_updates(handle) == 0
    assert (await handle.execute_update(UnitAssessment.acknowledge_notice, ack())).accepted


async def test_report_rules(client: Client, worker: str) -> None:
    unit = sample_unit(cadres=2)
    handle = await start_unit(client, worker, unit)
    await handle.execute_update(UnitAssessment.acknowledge_notice, ack())

    # kind=cadre without cadre_id; unknown cadre; oversize text.
    msg = await rejection(handle, "submit_report", team_report("r0", kind="cadre"))
    assert "cadre_id" in msg
    msg = await rejection(
        handle, "submit_report", team_report("r0", kind="cadre", cadre_id="nobody")
    )
    assert "cadre_id" in msg and "nobody" in msg
    msg = await rejection(handle, "submit_report", team_report("r0", text="x" * 100_001))
    assert "text" in msg

    await handle.execute_update("submit_report", team_report("r1"), result_type=ActionResult)
    msg = await rejection(handle, "submit_report", team_report("r2"))
    assert "revision_reason" in msg
    revised = await handle.execute_update(
        "submit_report", team_report("r3", revision_reason="补充数据"), result_type=ActionResult
    )
    assert "revision 2" in revised.message
    status = await handle.query(UnitAssessment.status)
    assert status.reports.revisions == 1
    assert status.reports.missing == [c.cadre_id for c in unit.cadres]


async def test_repeated_idempotency_key_returns_the_first_result(
    client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle = await start_unit(client, worker, sample_unit())
    first = await handle.execute_update(UnitAssessment.acknowledge_notice, ack("same"))
    again = await handle.execute_update(UnitAssessment.acknowledge_notice, ack("same"))
    assert again.duplicate and not first.duplicate
    assert again.message == first.message and again.stage == first.stage
    status = await handle.query(UnitAssessment.status)
    assert status.acknowledgements == 1
    # A repeated update id (a client retrying after a lost answer): the server answers with
    # the first outcome, whatever the second call carried.
    once = await handle.execute_update(
        UnitAssessment.submit_report, team_report("report-1"), id="update-7"
    )
    twice = await handle.execute_update(
        UnitAssessment.submit_report, team_report("report-2"), id="update-7"
    )
    assert twice == once and not twice.duplicate
    reports = (await handle.query(UnitAssessment.status)).reports
    assert reports.team_summary and reports.revisions == 0
    # The same key for another action is a client bug, and said so.
    msg = await rejection(handle, "submit_report", team_report("same"))
    assert "idempotency_key" in msg and "acknowledge_notice" in msg
    async with pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM acknowledgements WHERE workflow_id = $1", handle.id
        )
    assert n == 1


async def test_roles_and_four_eyes(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)

    by_unit = proposal_for(unit).model_copy(update={"actor": UNIT_CONTACT})
    msg = await rejection(handle, "propose_grades", by_unit)
    assert "actor.role" in msg and "'unit'" in msg
    incomplete = proposal_for(unit).model_copy(update={"cadre_grades": {}})
    msg = await rejection(handle, "propose_grades", incomplete)
    assert "cadre_grades" in msg and unit.cadres[0].cadre_id in msg

    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    self_approval = ApproveGrades(
        idempotency_key="self",
        actor=GROUP.model_copy(update={"role": "approver"}),
        decision="approve",
    )
    msg = await rejection(handle, "approve_grades", self_approval)
    assert "actor.id" in msg and "cannot approve" in msg
    returned = await handle.execute_update(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key="ret", actor=APPROVER, decision="return", comment="补充依据"),
    )
    assert "returned" in returned.message and returned.stage == Stage.GRADING
    status = await handle.query(UnitAssessment.status)
    assert status.grading.returned == 1 and not status.grading.pending_proposal


async def test_close_stage_must_name_the_current_stage(client: Client, worker: str) -> None:
    handle = await start_unit(client, worker, sample_unit())
    stale = CloseStage(idempotency_key="c1", actor=GROUP, stage=Stage.TALKS, reason="时间紧")
    msg = await rejection(handle, "close_stage", stale)
    assert "stage" in msg and "'notice'" in msg
    ok = await handle.execute_update(
        UnitAssessment.close_stage, stale.model_copy(update={"stage": Stage.NOTICE})
    )
    assert ok.stage == Stage.REPORT_BACK
    status = await handle.query(UnitAssessment.status)
    assert status.history[0].closed_early_reason == "时间紧"


async def test_signals_are_validated_and_recorded(
    client: Client, worker: str, pool: asyncpg.Pool
) -> None:
    handle = await start_unit(client, worker, sample_unit())
    await handle.signal("acknowledge_notice", {"idempotency_key": "s1"})  # no actor
    await handle.signal("acknowledge_notice", "not even an object")
    await handle.signal("submit_report", team_report("s2"))  # wrong stage
    await handle.signal("acknowledge_notice", ack("s3").model_dump(mode="json"))
    await handle.signal("acknowledge_notice", ack("s3").model_dump(mode="json"))  # repeated

    status = await wait_for_status(
        handle, lambda s: s.stage == Stage.REPORT_BACK and len(s.rejected_signals) == 3
    )
    assert status.stage == Stage.REPORT_BACK and len(status.rejected_signals) == 3, status
    reasons = [r.reason for r in status.rejected_signals]
    assert "actor" in reasons[0]
    assert "(payload)" in reasons[1] or "object" in reasons[1]
    assert "'notice'" in reasons[2]
    assert status.acknowledgements == 1
    async with pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE workflow_id = $1 AND kind = 'signal_rejected'",
            handle.id,
        )
    assert n == 3
    # The workflow is healthy: a valid update still goes through.
    talk_too_early = RecordTalk(
        idempotency_key="t",
        actor=GROUP,
        talk_id="t1",
        interviewer="a",
        interviewee_role="b",
        talk_date=dt.date(2026, 12, 1),
        talk_ref=f"talk-{'0' * 32}",
        digest="0" * 64,
    )
    assert "'report_back'" in await rejection(handle, "record_talk", talk_too_early)
    report = SubmitReport.model_validate(team_report("r"))
    assert (await handle.execute_update(UnitAssessment.submit_report, report)).accepted
