"""Markdown for the Temporal UI's "current details": progress only, never sealed grades."""

from __future__ import annotations

from domain.calendar import SHANGHAI
from domain.stages import ORDER, stage_number
from schemas.common import Stage
from schemas.status import CampaignProgress, UnitStatus

STAGE_LABELS: dict[Stage, str] = {
    Stage.NOTICE: "考核通知 notice",
    Stage.REPORT_BACK: "总结述职 report-back",
    Stage.EVALUATION: "测评评议 evaluation",
    Stage.TALKS: "个别谈话 talks",
    Stage.GRADING: "评定等次 grading",
    Stage.RESULT_USE: "结果运用 result use",
    Stage.COMPLETED: "已完成 completed",
    Stage.CANCELLED: "已取消 cancelled",
}


def unit_details(s: UnitStatus) -> str:
    n = stage_number(s.stage)
    head = f"### {s.unit_name} · {s.year}年度考核\n**Stage {min(n, 6)}/6: {STAGE_LABELS[s.stage]}**"
    if s.stalled:
        head += f" — ⚠ stalled, escalation level {s.escalation_level}"
    if s.paused_since is not None:
        head += f"\n⏸ paused since {s.paused_since.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"
    elif s.deadline is not None:
        head += f"\nDeadline: {s.deadline.astimezone(SHANGHAI):%Y-%m-%d %H:%M} (Asia/Shanghai)"
    if s.deadline_steps:
        head += "\nDeadline steps: " + "; ".join(s.deadline_steps)
    if s.dead_letters:
        head += f"\n✉ {len(s.dead_letters)} notification(s) not delivered (see status)"
    g = s.grading
    open_objections = sum(o.state == "open" for o in g.objections)
    if g.published:
        team = g.team_grade_label or g.team_grade
        grading = f"{'final' if g.final else 'published'}, team {team}"
        if g.publicity_ends is not None:
            grading += f"; 公示 until {g.publicity_ends.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"
        if open_objections:
            grading += f"; {open_objections} open objection(s)"
    elif g.pending_proposal:
        grading = "proposal awaiting approval (sealed)"
    else:
        grading = f"{g.proposals} proposal(s), {g.returned} returned"
    rows = [
        ("Acknowledgements", str(s.acknowledgements)),
        (
            "Reports",
            f"team {'✓' if s.reports.team_summary else '✗'}, cadres "
            f"{s.reports.cadres_submitted}/{s.reports.cadres_total}"
            + (f" — late: {', '.join(s.reports.late)}" if s.reports.late else ""),
        ),
        (
            "Ballots",
            f"{s.evaluation.ballots} on {s.evaluation.sheets} sheet(s), "
            f"{s.evaluation.batches} batch(es)" + (" — closed" if s.evaluation.closed else ""),
        ),
        (
            "Participation",
            ", ".join(f"{g.group_id} {g.returned}/{g.planned}" for g in s.evaluation.participation)
            or "—",
        ),
        ("Flags", "; ".join(f.message for f in s.evaluation.flags) or "none"),
        ("Talks", f"{s.talks.recorded}/{s.talks.planned}"),
        ("Grades", grading),
        ("Follow-ups", _follow_ups(s)),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    done = [v.stage for v in s.history]
    trail = " → ".join(
        f"**{st.value}**" if st == s.stage else (f"~~{st.value}~~" if st in done else st.value)
        for st in ORDER
    )
    extra = ""  # the deadline is in the head, in Beijing time
    if s.rejected_signals:
        last = s.rejected_signals[-1]
        extra += f"\n\nLast rejected signal: `{last.name}` — {last.reason}"
    return f"{head}\n\n{trail}\n\n{table}{extra}"


def _follow_ups(s: UnitStatus) -> str:
    text = f"{s.follow_ups.closed} closed, {s.follow_ups.open} open"
    unsigned = [f.follow_up_id for f in s.follow_ups.items if f.kind == "feedback" and not f.closed]
    if unsigned:
        text += f" — feedback unsigned: {len(unsigned)}"
    overdue = [f.follow_up_id for f in s.follow_ups.items if f.overdue and not f.closed]
    if overdue:
        text += f" — ⚠ 复核 overdue: {', '.join(overdue)}"
    return text


def campaign_details(p: CampaignProgress) -> str:
    rows = "\n".join(
        f"| {STAGE_LABELS[stage]} | {p.by_stage.get(stage, 0)} |"
        for stage in (*ORDER, Stage.CANCELLED)
        if p.by_stage.get(stage, 0) or stage in ORDER
    )
    held = (
        f"\n\n**Calibration:** {len(p.calibration_held)} proposal(s) on hold for the "
        f"department: {', '.join(p.calibration_held)}"
        if p.calibration_held
        else ""
    )
    return (
        f"### {p.title}\n{p.units_started}/{p.units_total} units started\n\n"
        f"| Stage | Units |\n|---|---|\n{rows}{held}"
    )
