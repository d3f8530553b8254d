"""The table of actions and its stateful checks as pure functions: no server, no worker.

Each check is a function of (the unit's input, its state, the action, the moment); these tests
build a state by hand and ask the table's row.
"""

from __future__ import annotations

import datetime as dt

import pytest

from domain.actions import ACTIONS, ActionRejected, Moment
from domain.state import UnitState
from kaohe.sim.simulate import APPROVER, DEPARTMENT, GROUP, proposal_for
from schemas.calibration import CalibrationView
from schemas.common import Actor, Role, Stage
from schemas.messages import (
    ApproveGrades,
    CloseFollowUp,
    CloseStage,
    FollowUpKind,
    RaiseObjection,
    RequestReview,
)
from schemas.status import FollowUpView, ObjectionView
from schemas.workflow_io import UnitInput
from tests.helpers import TEST_POLICY, sample_unit

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
AT = Moment(now=NOW)


def _unit() -> UnitInput:
    return UnitInput(
        campaign_id="c", year=2026, campaign_title="t", unit=sample_unit("u1"), policy=TEST_POLICY
    )


def _in(stage: Stage, **fields: object) -> UnitState:
    state = UnitState.starting(NOW)
    state.stage = stage
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def _admit(name: str, state: UnitState, action: object, at: Moment = AT) -> None:
    ACTIONS[name].admit(_unit(), state, action, at)  # type: ignore[arg-type]


def _approve(actor: Actor, key: str = "a1") -> ApproveGrades:
    return ApproveGrades(idempotency_key=key, actor=actor, decision="approve")


# ---- every row ---------------------------------------------------------------------------


def test_every_action_has_one_row_naming_its_model() -> None:
    for name, rule in ACTIONS.items():
        assert rule.name == name
        assert rule.stages and rule.roles


def test_the_wrong_stage_and_the_wrong_role_are_refused_naming_them() -> None:
    proposal = proposal_for(sample_unit("u1"))
    with pytest.raises(ActionRejected, match="stage 'talks'"):
        _admit("propose_grades", _in(Stage.TALKS), proposal)
    as_approver = proposal.model_copy(update={"actor": APPROVER})
    with pytest.raises(ActionRejected, match=r"actor.role: 'approver' may not propose_grades"):
        _admit("propose_grades", _in(Stage.GRADING), as_approver)
    _admit("propose_grades", _in(Stage.GRADING), proposal)


# ---- four-eyes ---------------------------------------------------------------------------


def test_four_eyes_whoever_proposed_cannot_approve() -> None:
    proposal = proposal_for(sample_unit("u1"))  # by GROUP
    state = _in(Stage.GRADING, pending=proposal, proposal_no=1)
    proposer_as_approver = Actor(id=GROUP.id, role=Role.APPROVER)
    with pytest.raises(ActionRejected, match=f"actor.id: {GROUP.id!r} proposed these grades"):
        _admit("approve_grades", state, _approve(proposer_as_approver))
    _admit("approve_grades", state, _approve(APPROVER))  # another identity may


def test_approval_waits_for_calibration_and_a_hold() -> None:
    proposal = proposal_for(sample_unit("u1"))
    for calibration, match in (
        ("pending", "awaits cross-unit calibration"),
        ("held", "on hold by cross-unit calibration"),
    ):
        view = CalibrationView(proposal_no=1, state=calibration, reason="beyond the pool")
        state = _in(Stage.GRADING, pending=proposal, proposal_no=1, calibration=view)
        with pytest.raises(ActionRejected, match=match):
            _admit("approve_grades", state, _approve(APPROVER))
    cleared = CalibrationView(proposal_no=1, state="cleared")
    _admit(
        "approve_grades",
        _in(Stage.GRADING, pending=proposal, proposal_no=1, calibration=cleared),
        _approve(APPROVER),
    )


def test_calibration_fails_closed_when_the_campaign_cannot_answer() -> None:
    proposal = proposal_for(sample_unit("u1"))
    view = CalibrationView(proposal_no=1, state="unavailable", reason="campaign gone")
    state = _in(Stage.GRADING, pending=proposal, proposal_no=1, calibration=view)
    with pytest.raises(ActionRejected, match="was not calibrated"):
        _admit("approve_grades", state, _approve(APPROVER))
    returned = ApproveGrades(idempotency_key="r", actor=APPROVER, decision="return", comment="重报")
    _admit("approve_grades", state, returned)  # the way out: return, and propose again


def test_nothing_to_approve_is_refused() -> None:
    with pytest.raises(ActionRejected, match="no grade proposal awaiting approval"):
        _admit("approve_grades", _in(Stage.GRADING), _approve(APPROVER))


# ---- publicity and objections ------------------------------------------------------------


def _objection(key: str = "o1") -> RaiseObjection:
    return RaiseObjection(
        idempotency_key=key,
        actor=DEPARTMENT,
        objection_id=key,
        raised_by="职工群众",
        reason="对等次有不同意见",
    )


def test_objections_are_taken_during_publicity_only() -> None:
    ends = NOW + dt.timedelta(days=5)
    with pytest.raises(ActionRejected, match="during publicity"):
        _admit("raise_objection", _in(Stage.GRADING), _objection())
    with pytest.raises(ActionRejected, match="during publicity"):
        _admit("raise_objection", _in(Stage.GRADING, publicity_ends=NOW), _objection())
    _admit("raise_objection", _in(Stage.GRADING, publicity_ends=ends), _objection())


def test_an_open_objection_blocks_the_grades_from_becoming_final() -> None:
    ended = NOW - dt.timedelta(seconds=1)
    state = _in(Stage.GRADING, publicity_ends=ended)
    assert state.grades_may_become_final(NOW)
    state.objections["o1"] = ObjectionView(objection_id="o1", cadre_id=None, state="open")
    assert not state.grades_may_become_final(NOW)
    state.objections["o1"].state = "dismissed"
    assert state.grades_may_become_final(NOW)
    # Before publicity ends, never; after an upheld objection withdrew the grades, never.
    assert not _in(
        Stage.GRADING, publicity_ends=NOW + dt.timedelta(hours=1)
    ).grades_may_become_final(NOW)
    assert not _in(Stage.GRADING, publicity_ends=None).grades_may_become_final(NOW)


# ---- result use ----------------------------------------------------------------------------


def _follow_up(fid: str, kind: FollowUpKind, cadre: str | None, closed: bool) -> FollowUpView:
    return FollowUpView(follow_up_id=fid, kind=kind, cadre_id=cadre, owner="x", closed=closed)


def test_result_use_ends_only_with_its_follow_ups() -> None:
    close = CloseStage(
        idempotency_key="k", actor=DEPARTMENT, stage=Stage.RESULT_USE, reason="按计划提前结束"
    )
    open_one = {"f1": _follow_up("f1", FollowUpKind.FEEDBACK, None, closed=False)}
    with pytest.raises(ActionRejected, match="result_use ends when every follow-up is closed"):
        _admit("close_stage", _in(Stage.RESULT_USE, follow_ups=open_one), close)
    done = {"f1": _follow_up("f1", FollowUpKind.FEEDBACK, None, closed=True)}
    _admit("close_stage", _in(Stage.RESULT_USE, follow_ups=done), close)


def test_grading_cannot_be_closed_early() -> None:
    close = CloseStage(
        idempotency_key="k", actor=DEPARTMENT, stage=Stage.GRADING, reason="按计划提前结束"
    )
    with pytest.raises(ActionRejected, match="not accepted now"):
        _admit("close_stage", _in(Stage.GRADING), close)


def test_a_cadre_signs_only_its_own_feedback() -> None:
    unit = _unit().unit
    me, other = unit.cadres[0].cadre_id, unit.cadres[1].cadre_id
    follow_ups = {
        f"feedback-{me}": _follow_up(f"feedback-{me}", FollowUpKind.FEEDBACK, me, False),
        f"feedback-{other}": _follow_up(f"feedback-{other}", FollowUpKind.FEEDBACK, other, False),
    }
    state = _in(Stage.RESULT_USE, follow_ups=follow_ups)
    cadre = Actor(id=me, role=Role.CADRE)

    def sign(fid: str, actor: Actor) -> CloseFollowUp:
        return CloseFollowUp(idempotency_key=fid, actor=actor, follow_up_id=fid, outcome="已签收")

    with pytest.raises(ActionRejected, match="a cadre signs only its own feedback"):
        _admit("close_follow_up", state, sign(f"feedback-{other}", cadre))
    with pytest.raises(ActionRejected, match="is signed by cadre"):
        _admit("close_follow_up", state, sign(f"feedback-{me}", GROUP))
    _admit("close_follow_up", state, sign(f"feedback-{me}", cadre))
    _admit("close_follow_up", state, sign(f"feedback-{me}", DEPARTMENT))  # on paper


def test_review_is_asked_within_its_days_by_the_cadre_for_itself() -> None:
    unit = _unit().unit
    me, other = unit.cadres[0].cadre_id, unit.cadres[1].cadre_id
    days = TEST_POLICY.result_use.review_request_days
    state = _in(Stage.RESULT_USE, notified_at=NOW)

    def ask(cadre_id: str, actor: Actor) -> RequestReview:
        return RequestReview(
            idempotency_key="r", actor=actor, cadre_id=cadre_id, reason="对结果有异议"
        )

    cadre = Actor(id=me, role=Role.CADRE)
    with pytest.raises(ActionRejected, match="may ask 复核 for itself only"):
        _admit("request_review", state, ask(other, cadre))
    late = Moment(now=NOW + dt.timedelta(days=days, seconds=1))
    with pytest.raises(ActionRejected, match=f"within {days} days"):
        _admit("request_review", state, ask(me, cadre), late)
    _admit("request_review", state, ask(me, cadre))
