"""Effects of the grading stage (评定等次): proposal, cross-unit calibration, approval,
publicity (公示) and objections."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.calendar import SHANGHAI
    from domain.checks import publicity_window
    from domain.stages import TERMINAL
    from schemas import search_attributes as sa
    from schemas.calibration import CalibrationRequest, CalibrationResult, CalibrationView
    from schemas.common import Actor, CadreGrade, Role
    from schemas.messages import ApproveGrades, ProposeGrades, RaiseObjection, ResolveObjection
    from schemas.status import ObjectionView
    from schemas.workflow_io import (
        GradeDecisionRecord,
        GradeProposalRecord,
        ObjectionDecision,
        ObjectionRecord,
    )
    from workflows.unit import io
    from workflows.unit.context import Unit
    from workflows.unit.timer import sleep_until


async def propose_grades(u: Unit, a: ProposeGrades) -> str:
    s = u.state
    s.proposal_no += 1
    await io.store(
        io.storage.save_grade_proposal,
        GradeProposalRecord(ref=u.ref(), proposal_no=s.proposal_no, action=a),
    )
    s.pending = a
    message = f"proposal {s.proposal_no} recorded; sealed until approved and published"
    if _calibrates(u):
        await _request_calibration(u, a)
        message += f"; cross-unit calibration: {_calibration_state(u)}"
    return message


def _calibrates(u: Unit) -> bool:
    """A pooled 优秀 quota is calibrated by the campaign; a unit started on its own has
    none to ask."""
    pooled = u.input.policy.grading.excellent_quota_scope == "category"
    return pooled and workflow.info().parent is not None


async def _request_calibration(u: Unit, a: ProposeGrades) -> None:
    s, parent = u.state, workflow.info().parent
    assert parent is not None
    request = CalibrationRequest(
        unit_id=u.input.unit.unit_id,
        category=u.input.unit.category,
        proposal_no=s.proposal_no,
        excellent=sum(g == CadreGrade.EXCELLENT for g in a.cadre_grades.values()),
        graded=sum(g != CadreGrade.UNDETERMINED for g in a.cadre_grades.values()),
    )
    s.calibration = CalibrationView(proposal_no=s.proposal_no, state="pending")
    try:
        await workflow.get_external_workflow_handle(parent.workflow_id).signal("calibrate", request)
    except Exception:
        # No campaign to hold the proposal (terminated): approval is not blocked, and
        # the audit table says why.
        s.calibration = CalibrationView(
            proposal_no=s.proposal_no,
            state="unavailable",
            reason=f"campaign {parent.workflow_id} did not take the request",
        )
        await _audit_calibration(u, None)


def _calibration_state(u: Unit) -> str:
    c = u.state.calibration
    return "none" if c is None else c.state + (f" ({c.reason})" if c.reason else "")


async def _audit_calibration(u: Unit, actor: Actor | None) -> None:
    c = u.state.calibration
    assert c is not None
    await u.audit(
        f"calibration:{c.proposal_no}:{c.state}",
        f"calibration_{c.state}",
        actor,
        {"proposal_no": c.proposal_no, "reason": c.reason},
    )


async def take_calibration_result(u: Unit, result: CalibrationResult) -> None:
    """The campaign cleared, held, allowed or returned the latest proposal."""
    s = u.state
    c = s.calibration
    if c is None or c.proposal_no != result.proposal_no or c.state not in ("pending", "held"):
        return  # about an earlier proposal, or said already
    s.calibration = CalibrationView(
        proposal_no=result.proposal_no, state=result.outcome, reason=result.reason
    )
    await _audit_calibration(u, result.actor)
    if result.outcome == "returned" and s.pending is not None:
        decision = ApproveGrades(
            idempotency_key=f"calibration-{result.proposal_no}",
            actor=result.actor or Actor(id="campaign", role=Role.DEPARTMENT),
            decision="return",
            comment=f"cross-unit calibration: {result.reason}"[:200],
        )
        await io.store(
            io.storage.save_grade_decision,
            GradeDecisionRecord(ref=u.ref(), proposal_no=result.proposal_no, action=decision),
        )
        s.pending = None
        s.returned += 1


async def approve_grades(u: Unit, a: ApproveGrades) -> str:
    s = u.state
    publicity = a.decision == "approve"
    # Before anything is stored: a calendar year missing refuses the approval whole.
    window = publicity_window(u.input, a, workflow.now()) if publicity else None
    await io.store(
        io.storage.save_grade_decision,
        GradeDecisionRecord(ref=u.ref(), proposal_no=s.proposal_no, action=a, publicity=publicity),
    )
    proposal, s.pending = s.pending, None
    if a.decision == "return":
        s.returned += 1
        return f"proposal {s.proposal_no} returned to the assessment group"
    assert proposal is not None
    s.final = proposal
    workflow.upsert_search_attributes([sa.TEAM_GRADE.value_set(proposal.team_grade.value)])
    assert window is not None
    opens, s.publicity_ends = window
    s.publicity_starts = opens if opens > workflow.now() else None
    from_day = f" 自 {opens.astimezone(SHANGHAI):%Y-%m-%d} 起" if s.publicity_starts else ""
    u.notify(
        f"publicity-{s.proposal_no}",
        [u.input.unit.contact or u.input.unit.unit_id],
        f"{u.input.campaign_title}: 考核结果公示",
        f"{u.input.unit.name} 的考核等次{from_day}公示, 至 "
        f"{s.publicity_ends.astimezone(SHANGHAI):%Y-%m-%d %H:%M} 止。",
    )
    return (
        f"proposal {s.proposal_no} approved; grades published for publicity "
        f"until {s.publicity_ends.isoformat()}"
    )


async def raise_objection(u: Unit, a: RaiseObjection) -> str:
    await io.store(io.storage.save_objection, ObjectionRecord(ref=u.ref(), action=a))
    u.state.objections[a.objection_id] = ObjectionView(
        objection_id=a.objection_id, cadre_id=a.cadre_id, state="open"
    )
    return f"objection {a.objection_id} recorded; the grades are not final until it is resolved"


async def resolve_objection(u: Unit, a: ResolveObjection) -> str:
    s = u.state
    await io.store(io.storage.resolve_objection, ObjectionDecision(ref=u.ref(), action=a))
    item = s.objections[a.objection_id]
    if a.decision == "dismiss":
        item.state = "dismissed"
        return f"objection {a.objection_id} dismissed"
    item.state = "upheld"
    # The published grades are withdrawn: the group proposes again, the approver approves
    # again, and a new publicity follows.
    s.final = None
    s.publicity_ends = s.publicity_starts = None
    workflow.upsert_search_attributes([sa.TEAM_GRADE.value_unset()])
    return f"objection {a.objection_id} upheld; grades withdrawn for a new proposal"


async def follow_publicity(u: Unit) -> None:
    """Until the unit ends: when a publicity period is over and no objection is open, the
    published grades become final and the unit moves to result use."""
    s = u.state
    while s.stage not in TERMINAL:
        ends = s.publicity_ends
        moved = lambda ends=ends: s.stage in TERMINAL or s.publicity_ends != ends  # noqa: E731
        if not await sleep_until(ends, interrupted=moved):
            continue
        await workflow.wait_condition(
            lambda ends=ends: s.publicity_ends != ends or not s.open_objections()
        )
        failed = False
        async with u.lock:
            if s.publicity_ends != ends or not s.grades_may_become_final(workflow.now()):
                continue  # an objection was upheld, or raised, while we waited
            try:
                await io.store(io.storage.finalize_grades, u.ref())
                s.publicity_ends = s.publicity_starts = None
                s.grades_final = True
                await u.advance("publicity ended with no open objection", None)
            except io.StorageFailed as err:
                u.storage_failed(err, "final grades after publicity")
                failed = True
        if failed:  # tried again later, outside the lock meanwhile
            await workflow.sleep(io.STORAGE_PAUSE)
