"""Evaluation and talks with their real rules, through the workflow on the real servers."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from kaohe.sim.simulate import (
    BALLOT_SYSTEM,
    GROUP,
    TalkStore,
    TokenSource,
    drive_unit,
    sheet_for,
    talk_by_reference,
    wait_for_status,
)
from schemas.common import Stage
from schemas.messages import ActionResult, CloseEvaluation, RecordTalk, RegisterBallotBatch
from schemas.policy import BallotPolicy, Policy
from schemas.roster import UnitSpec
from schemas.talks import Talk
from tests.helpers import cast, refused, sample_unit, start_unit
from workflows.unit import UnitAssessment

POLICY = BallotPolicy()


async def unit_in_evaluation(
    client: Client, worker: str, tokens: TokenSource, **extra: Any
) -> tuple[UnitSpec, WorkflowHandle, dict[str, list[str]]]:
    unit = sample_unit(cadres=2, **extra)
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    return unit, handle, await tokens(handle.id)


async def rejected(handle: WorkflowHandle, name: str, payload: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(name, payload, result_type=ActionResult)
    return str(info.value.cause)


async def marks(pool: asyncpg.Pool, workflow_id: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) FROM ballot_marks WHERE workflow_id=$1", workflow_id
        )


async def test_bad_sheets_are_rejected_whole_with_the_reason(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit, handle, issued = await unit_in_evaluation(client, worker, tokens)
    rng = random.Random(1)
    a = issued["A"]
    good = sheet_for(a[0], unit, POLICY, rng)
    wf = handle.id

    unknown = good.model_copy(deep=True)
    unknown.cadres[1].cadre_id = "nobody"
    msg = await refused(client, tokens, wf, [good, unknown])
    assert "sheets[1].cadres[1].cadre_id: unknown cadre 'nobody'" in msg

    outside = sheet_for(a[1], unit, POLICY, rng)
    outside.team.overall = "极好"  # type: ignore[union-attr]
    msg = await refused(client, tokens, wf, [good, outside])
    assert "sheets[1].team.overall: '极好' is not one of" in msg

    missing = sheet_for(a[1], unit, POLICY, rng)
    del missing.cadres[0].items["廉"]
    msg = await refused(client, tokens, wf, [good, missing])
    assert "sheets[1].cadres[0].items: missing mandatory item(s) 廉" in msg
    assert await marks(pool, wf) == 0 and await pooled(pool, wf) == 0

    # A used token rejects the whole batch, whatever else it holds.
    first = await cast(client, tokens, wf, [good])
    assert len(first.receipts) == 1 and await pooled(pool, wf) == 1
    reuse = [sheet_for(a[1], unit, POLICY, rng), sheet_for(a[0], unit, POLICY, rng)]
    msg = await refused(client, tokens, wf, reuse)
    assert "sheets[1].token" in msg and "used" in msg
    forged = [sheet_for("x" * 20, unit, POLICY, rng)]
    assert "sheets[0].token" in await refused(client, tokens, wf, forged)
    assert await pooled(pool, wf) == 1

    status = await handle.query(UnitAssessment.status)
    assert status.stage == Stage.EVALUATION
    # The pooled sheet counts once its group's pool lets go (here: when A's tokens are spent).
    assert [(g.group_id, g.returned) for g in status.evaluation.participation] == [
        ("A", 0),
        ("B", 0),
        ("C", 0),
    ]
    # The unit goes on: the rejected batch's other sheet is still good on its own.
    ok = await cast(client, tokens, wf, reuse[:1])
    assert [a.message.endswith("2 sheets recorded") for a in ok.answers] == [True]
    status = await handle.query(UnitAssessment.status)
    assert next((g.group_id, g.returned) for g in status.evaluation.participation) == ("A", 2)


async def pooled(pool: asyncpg.Pool, workflow_id: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) FROM ballot_pool WHERE workflow_id=$1", workflow_id
        )


async def test_low_participation_is_flagged_not_passed(
    client: Client, worker: str, tokens: TokenSource
) -> None:
    unit, handle, issued = await unit_in_evaluation(client, worker, tokens)
    rng = random.Random(2)
    sheets = [sheet_for(t, unit, POLICY, rng) for t in issued["A"] + issued["B"] + issued["C"][:1]]
    await cast(client, tokens, handle.id, sheets)
    result = await handle.execute_update(
        UnitAssessment.close_evaluation,
        CloseEvaluation(idempotency_key="close", actor=GROUP, reason="两名职工代表出差"),
    )
    assert result.stage == Stage.TALKS
    status = await handle.query(UnitAssessment.status)
    flags = [(f.code, f.target_id) for f in status.evaluation.flags]
    assert ("low_participation", "C") in flags  # 1 of 3
    assert ("low_participation", "A") not in flags
    assert status.evaluation.closed and status.evaluation.close_reason == "两名职工代表出差"


async def test_selection_review_ballots(client: Client, worker: str, tokens: TokenSource) -> None:
    unit = sample_unit(cadres=2, selection_review=True)
    unit.cadres[1].newly_promoted = True
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    issued = await tokens(handle.id)
    rng = random.Random(3)
    sheet = sheet_for(issued["A"][0], unit, POLICY, rng)
    without = sheet.model_copy(update={"new_cadres": []})
    msg = await refused(client, tokens, handle.id, [without])
    assert f"sheets[0].new_cadres: no ballot for {unit.cadres[1].cadre_id}" in msg
    status = await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)
    kinds = {t.target_kind for t in status.evaluation.tallies}
    assert kinds == {"team", "cadre", "selection_work", "new_cadre"}
    new_cadre = next(t for t in status.evaluation.tallies if t.target_kind == "new_cadre")
    assert new_cadre.approval_rate is not None and new_cadre.ballots == 7


async def test_talk_plan_by_role(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=2, talk_plan={"班子成员": 1, "中层干部": 1})
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.TALKS, tokens=tokens)

    async def talk(n: int, role: str) -> RecordTalk:
        stored = Talk(
            idempotency_key=f"t{n}",
            talk_id=f"t{n}",
            interviewer="考核组",
            interviewee_role=role,
            talk_date=dt.date(2026, 12, 15),
            content="保密内容",
        )
        return talk_by_reference(stored, await talks(handle.id, stored))

    msg = await rejected(handle, "record_talk", await talk(0, "门卫"))
    assert "interviewee_role: '门卫' is not in the talk plan" in msg
    first = await handle.execute_update(UnitAssessment.record_talk, await talk(1, "班子成员"))
    assert first.stage == Stage.TALKS
    status = await handle.query(UnitAssessment.status)
    assert status.talks.by_role == {"班子成员": (1, 1), "中层干部": (0, 1)}
    second = await handle.execute_update(UnitAssessment.record_talk, await talk(2, "中层干部"))
    assert second.stage == Stage.GRADING


async def test_report_as_a_file_reference(client: Client, worker: str, pool: asyncpg.Pool) -> None:
    handle = await start_unit(client, worker, sample_unit())
    await handle.execute_update(
        "acknowledge_notice",
        {"idempotency_key": "a", "actor": {"id": "u", "role": "unit"}},
        result_type=ActionResult,
    )
    report = {
        "idempotency_key": "r",
        "actor": {"id": "u", "role": "unit"},
        "kind": "team",
        "title": "总结",
        "file": {
            "uri": "oa://docs/2026/summary.pdf",
            "sha256": "a" * 64,
            "size": 123456,
            "media_type": "application/pdf",
        },
    }
    both = {**report, "idempotency_key": "r0", "text": "正文"}
    assert "text" in await rejected(handle, "submit_report", both)
    await handle.execute_update("submit_report", report, result_type=ActionResult)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT body, file_uri, file_sha256, file_size FROM reports WHERE workflow_id=$1",
            handle.id,
        )
    assert row["body"] is None and row["file_uri"] == "oa://docs/2026/summary.pdf"
    assert (row["file_sha256"], row["file_size"]) == ("a" * 64, 123456)


async def test_the_unit_takes_no_sheet_by_update_or_signal(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    """Sheets never go through a workflow: record_ballots, even signed with kaohe's keys, has
    no handler; nothing is stored, no task fails, and the intake still takes the sheet."""
    unit, handle, issued = await unit_in_evaluation(client, worker, tokens)
    sheet = sheet_for(issued["A"][0], unit, POLICY, random.Random(4))
    body = {"idempotency_key": "s1", "batch_id": "s1", "sheets": [sheet.model_dump(mode="json")]}
    await handle.signal("record_ballots", body)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("record_ballots", body, result_type=ActionResult)
    assert await marks(pool, handle.id) == 0 and await pooled(pool, handle.id) == 0
    assert len((await cast(client, tokens, handle.id, [sheet])).receipts) == 1
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]


async def test_late_and_missing_reports_show_in_status(client: Client, worker: str) -> None:
    unit = sample_unit(cadres=2)
    past = await start_unit(client, worker, unit, policy=Policy(reports_due=dt.date(2026, 1, 5)))
    future = await start_unit(
        client, worker, sample_unit(cadres=2), policy=Policy(reports_due=dt.date(2099, 1, 5))
    )
    for handle in (past, future):
        await handle.execute_update(
            "acknowledge_notice",
            {"idempotency_key": "a", "actor": {"id": "u", "role": "unit"}},
            result_type=ActionResult,
        )
        await handle.execute_update(
            "submit_report",
            {
                "idempotency_key": "r",
                "actor": {"id": "u", "role": "unit"},
                "kind": "team",
                "title": "总结",
                "text": "……",
            },
            result_type=ActionResult,
        )
    late = (await past.query(UnitAssessment.status)).reports
    assert late.late == ["team", *(c.cadre_id for c in unit.cadres)]  # one late, two missing
    assert late.due is not None and late.due.isoformat() == "2026-01-06T00:00:00+08:00"
    assert (await future.query(UnitAssessment.status)).reports.late == []


async def test_a_batch_the_database_refuses_is_a_rejection_by_signal_and_by_update(
    client: Client, worker: str, tokens: TokenSource, pool: asyncpg.Pool
) -> None:
    """The store refuses a batch it does not hold inside a local activity: by update the
    caller gets ActionRejected naming the field; by signal the unit records the rejection and
    goes on (it used to fail the whole workflow)."""
    unit, handle, issued = await unit_in_evaluation(client, worker, tokens)
    ghost = RegisterBallotBatch(
        idempotency_key="g1",
        actor=BALLOT_SYSTEM,
        batch_id="ghost",
        ballots=4,
        sheets=1,
        checksum="0" * 64,
    )
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(UnitAssessment.register_ballot_batch, ghost)
    assert info.value.cause.type == "ActionRejected"  # type: ignore[attr-defined]
    assert "batch_id: batch 'ghost' was not imported" in str(info.value.cause)

    await handle.signal("register_ballot_batch", ghost.model_copy(update={"idempotency_key": "g2"}))
    status = await wait_for_status(handle, lambda s: bool(s.rejected_signals), 30)
    [rejection] = status.rejected_signals
    assert "batch_id" in rejection.reason and status.stage == Stage.EVALUATION
    # Still running and still taking ballots.
    sheets = [sheet_for(t, unit, POLICY, random.Random(3)) for t in issued["A"]]
    assert (await cast(client, tokens, handle.id, sheets)).answers[0].accepted
    assert await marks(pool, handle.id) > 0
