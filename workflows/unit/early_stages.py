"""Effects of the notice, report-back (述职) and talks (个别谈话) stages."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.actions import ActionRejected
    from domain.progress import missing_reports, talk_plan_met
    from schemas.messages import AcknowledgeNotice, RecordTalk, SubmitReport
    from schemas.workflow_io import AcknowledgementRecord, ReportRecord, TalkRecord
    from workflows.unit import io
    from workflows.unit.context import Unit


def send_notice(u: Unit) -> None:
    unit = u.input.unit
    u.notify(
        "notice",
        [unit.contact or unit.unit_id, *(c.cadre_id for c in unit.cadres)],
        f"{u.input.campaign_title}: 考核通知",
        f"{unit.name} 年度考核已启动, 请确认收到通知。",
    )


async def acknowledge_notice(u: Unit, a: AcknowledgeNotice) -> str:
    await io.store(io.storage.save_acknowledgement, AcknowledgementRecord(ref=u.ref(), action=a))
    u.state.acks += 1
    await u.advance(None, a.actor)
    return "notice acknowledged"


async def submit_report(u: Unit, a: SubmitReport) -> str:
    s = u.state
    subject = a.cadre_id or "team"
    revision = s.reports.get(subject, 0) + 1
    await io.store(io.storage.save_report, ReportRecord(ref=u.ref(), action=a, revision=revision))
    s.reports[subject] = revision
    s.report_times.setdefault(subject, workflow.now())
    missing = missing_reports(u.input, s)
    if not missing:
        await u.advance(None, a.actor)
        return f"{a.kind} report stored; all reports are in"
    return f"{a.kind} report stored (revision {revision}); missing: {', '.join(missing)}"


async def record_talk(u: Unit, a: RecordTalk) -> str:
    """A talk kaohe's API stored: counted once the reference checks out (a talk of this unit,
    with this digest and metadata). Its content never comes here."""
    s = u.state
    problem = await io.store(io.storage.accept_talk, TalkRecord(ref=u.ref(), action=a))
    if problem is not None:
        raise ActionRejected(problem)
    s.talks.append(a.talk_id)
    s.talk_roles[a.interviewee_role] = s.talk_roles.get(a.interviewee_role, 0) + 1
    if talk_plan_met(u.input, s):
        await u.advance(None, a.actor)
        return "talk recorded; the talk plan is complete"
    return f"talk recorded ({len(s.talks)}/{u.input.unit.talks_planned})"
