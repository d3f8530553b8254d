"""Effects of result use (结果运用): follow-ups derived from the final grades, each cadre's
signed feedback, 复核 with its answer date; the stage ends with its last follow-up."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.calendar import SHANGHAI
    from domain.rules import derive_follow_ups
    from domain.stages import TERMINAL
    from schemas.messages import CloseFollowUp, FollowUpKind, RecordFollowUp, RequestReview
    from schemas.status import FollowUp, FollowUpView
    from schemas.workflow_io import (
        FollowUpClosure,
        FollowUpRecord,
        FollowUpSpec,
        FollowUpsRecord,
        PreviousGradesQuery,
    )
    from workflows.unit import io
    from workflows.unit.context import Unit
    from workflows.unit.timer import sleep_until


def _view(f: RecordFollowUp | FollowUpSpec) -> FollowUpView:
    return FollowUpView(**f.model_dump(include=set(FollowUp.model_fields)))


async def enter(u: Unit) -> None:
    """On entering result use: the follow-ups the grades, last year's grades and the
    evaluation's flags call for, and the results' feedback to the unit and its cadres."""
    s, unit = u.state, u.input.unit
    final = s.final
    assert final is not None
    s.notified_at = workflow.now()
    previous = await io.store(
        io.storage.previous_grades,
        PreviousGradesQuery(
            ref=u.ref(), year=u.input.year - 1, cadre_ids=[c.cadre_id for c in unit.cadres]
        ),
    )
    follow_ups = derive_follow_ups(
        unit,
        final.team_grade,
        final.cadre_grades,
        workflow.now().date(),
        previous,
        u.input.policy.result_use,
        s.flags,
    )
    await io.store(
        io.storage.create_follow_ups,
        FollowUpsRecord(
            ref=u.ref(),
            team_grade=final.team_grade,
            cadre_grades=final.cadre_grades,
            follow_ups=follow_ups,
        ),
    )
    for f in follow_ups:
        s.follow_ups[f.follow_up_id] = _view(f)
    u.notify(
        "feedback",
        [unit.contact or unit.unit_id, *(c.cadre_id for c in unit.cadres)],
        f"{u.input.campaign_title}: 考核结果反馈",
        f"{unit.name} 的考核结果已公布, 请签收。",
    )


async def record_follow_up(u: Unit, a: RecordFollowUp) -> str:
    await io.store(io.storage.save_follow_up, FollowUpRecord(ref=u.ref(), action=a))
    u.state.follow_ups[a.follow_up_id] = _view(a)
    return f"follow-up {a.follow_up_id} recorded"


async def request_review(u: Unit, a: RequestReview) -> str:
    cadre = u.input.unit.cadre(a.cadre_id)
    assert cadre is not None
    policy = u.input.policy.result_use
    days = policy.review_answer_days
    follow_up = RecordFollowUp(
        idempotency_key=a.idempotency_key,
        actor=a.actor,
        follow_up_id=f"review-{a.cadre_id}",
        kind=FollowUpKind.REVIEW,
        cadre_id=a.cadre_id,
        owner="department",
        due_date=(workflow.now() + timedelta(days=days)).date(),
        description=f"{cadre.name}: 复核 — {a.reason}"[:200],
    )
    await record_follow_up(u, follow_up)
    seconds = u.input.policy.demo.review_answer_seconds
    answer_by = workflow.now() + (
        timedelta(seconds=seconds) if seconds is not None else timedelta(days=days)
    )
    u.spawn(_watch_review(u, follow_up.follow_up_id, answer_by))
    return f"复核 requested; the department answers by {follow_up.due_date}"


async def _watch_review(u: Unit, follow_up_id: str, answer_by: dt.datetime) -> None:
    """A 复核 not answered by its date goes to the organization department, once."""
    s = u.state
    answered = lambda: s.follow_ups[follow_up_id].closed or s.stage in TERMINAL  # noqa: E731
    if not await sleep_until(answer_by, interrupted=answered):
        return
    async with u.lock:
        if answered():
            return
        item = s.follow_ups[follow_up_id]
        item.overdue = True
        due = answer_by.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        u.notify(
            f"overdue-{follow_up_id}",
            [u.input.department],
            f"{u.input.campaign_title}: 复核逾期未答复",
            f"{u.input.unit.name}: 干部 {item.cadre_id} 的复核申请应于 {due} 前答复, 尚未答复。",
        )
        await u.audit(
            f"overdue:{follow_up_id}",
            "review_overdue",
            None,
            {
                "follow_up_id": follow_up_id,
                "answer_by": answer_by.isoformat(),
                "notified": u.input.department,
            },
        )
        u.refresh_details()


async def close_follow_up(u: Unit, a: CloseFollowUp) -> str:
    s = u.state
    await io.store(io.storage.close_follow_up, FollowUpClosure(ref=u.ref(), action=a))
    item = s.follow_ups[a.follow_up_id]
    item.closed = True
    item.closed_by = a.actor.id
    open_ids = s.open_follow_ups()
    if not open_ids:
        await u.advance(None, a.actor)
        return f"follow-up {a.follow_up_id} closed; every follow-up is closed"
    return f"follow-up {a.follow_up_id} closed; open: {', '.join(open_ids)}"
