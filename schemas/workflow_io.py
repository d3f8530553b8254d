"""Workflow inputs and the records activities take: what crosses the workflow boundary."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from schemas.calibration import CalibrationEntry
from schemas.common import Actor, CadreGrade, Model, Stage, TeamGrade
from schemas.messages import (
    AcknowledgeNotice,
    ApproveGrades,
    CloseFollowUp,
    FollowUpKind,
    ProposeGrades,
    RaiseObjection,
    RecordBallots,
    RecordFollowUp,
    RecordTalk,
    RegisterBallotBatch,
    ResolveObjection,
    SubmitReport,
)
from schemas.policy import Policy, RaterGroup
from schemas.roster import Contact, Roster, UnitSpec


class UnitInput(Model):
    campaign_id: str
    year: int
    campaign_title: str
    unit: UnitSpec
    policy: Policy = Field(default_factory=Policy)
    # From the roster: where notifications go, and who escalations go to.
    contacts: dict[str, Contact] = Field(default_factory=dict)
    group_leader: str = "assessment-group-leader"
    department: str = "organization-department"
    assessment_group: str = "assessment-group"
    approver: str = "approver"

    @property
    def rater_groups(self) -> list[RaterGroup]:
        return self.unit.rater_groups or self.policy.rater_groups


class CampaignInput(Model):
    roster: Roster
    policy: Policy = Field(default_factory=Policy)
    max_concurrent_starts: int = Field(default=50, ge=1, le=500)
    # Carried over continue-as-new so a restarted campaign starts nothing twice.
    started: list[str] = Field(default_factory=list)
    stages: dict[str, Stage] = Field(default_factory=dict)
    seqs: dict[str, int] = Field(default_factory=dict)
    # Cross-unit calibration: unit id -> its latest proposal's entry; decisions taken.
    calibration: dict[str, CalibrationEntry] = Field(default_factory=dict)
    calibration_decisions: dict[str, str] = Field(default_factory=dict)


class UnitProgress(Model):
    """Signal a unit sends its campaign at every transition."""

    unit_id: str
    stage: Stage
    # The transition's number: signals to another workflow may arrive out of order.
    seq: int = 0


class UnitRef(Model):
    """Who a record belongs to; every storage activity starts with it."""

    workflow_id: str
    campaign_id: str
    unit_id: str
    stage: Stage


class RegisterUnit(Model):
    ref: UnitRef
    year: int
    campaign_title: str
    unit: UnitSpec
    rater_groups: list[RaterGroup] = Field(default_factory=list)
    # "team" / "cadre" -> grade -> the label the policy shows (only those that differ).
    grade_labels: dict[str, dict[str, str]] = Field(default_factory=dict)


class TransitionRecord(Model):
    ref: UnitRef
    seq: int
    from_stage: Stage | None
    to_stage: Stage
    reason: str | None = None
    actor: Actor | None = None


class AcknowledgementRecord(Model):
    ref: UnitRef
    action: AcknowledgeNotice


class ReportRecord(Model):
    ref: UnitRef
    action: SubmitReport
    revision: int


class BallotBatchRecord(Model):
    ref: UnitRef
    action: RecordBallots


class BallotBatchReceipt(Model):
    batch_id: str
    count: int
    checksum: str
    duplicate: bool
    # Sheets of this batch per rater group (the token tells the group).
    sheets_by_group: dict[str, int] = Field(default_factory=dict)


class BallotSheetsRecord(Model):
    """record_ballots with sheets: tokens checked and marked used, marks stored, at once.
    The planned counts come from unit_rater_groups, stored by register_unit."""

    ref: UnitRef
    action: RecordBallots


class BallotBatchCheck(Model):
    """register_ballot_batch: the bulk import stored the batch; confirm it is as announced."""

    ref: UnitRef
    action: RegisterBallotBatch


class OverallCount(Model):
    """Ballots of one target from one rater group with one overall option."""

    kind: str
    target_id: str
    rater_group: str
    option: str
    n: int


class BallotCounts(Model):
    overall: list[OverallCount]
    sheets_by_group: dict[str, int]


class TalkRecord(Model):
    ref: UnitRef
    action: RecordTalk


class GradeProposalRecord(Model):
    ref: UnitRef
    proposal_no: int
    action: ProposeGrades


class GradeDecisionRecord(Model):
    ref: UnitRef
    proposal_no: int
    action: ApproveGrades
    # With publicity the approved grades are published, not yet final.
    publicity: bool = False


class PreviousGradesQuery(Model):
    """Final grades of these cadres in `year` (any unit): the two-year rule needs them."""

    ref: UnitRef
    year: int
    cadre_ids: list[str]


class ObjectionRecord(Model):
    ref: UnitRef
    action: RaiseObjection


class ObjectionDecision(Model):
    ref: UnitRef
    action: ResolveObjection


class FollowUpSpec(Model):
    follow_up_id: str
    kind: FollowUpKind
    cadre_id: str | None = None
    owner: str
    due_date: dt.date | None = None
    description: str


class FollowUpsRecord(Model):
    """Follow-ups derived from the final grades, created once (keyed by follow_up_id)."""

    ref: UnitRef
    team_grade: TeamGrade
    cadre_grades: dict[str, CadreGrade]
    follow_ups: list[FollowUpSpec]


class FollowUpRecord(Model):
    ref: UnitRef
    action: RecordFollowUp


class FollowUpClosure(Model):
    ref: UnitRef
    action: CloseFollowUp


class AuditRecord(Model):
    """A free-standing audit row: stage closed early, signal rejected, evaluation closed."""

    ref: UnitRef
    event_key: str
    kind: str
    actor: Actor | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Delivery(Model):
    recipient: str
    channel: Literal["log", "webhook", "email"]
    address: str = ""  # the webhook URL or email address


class Notification(Model):
    """A message to a unit, a cadre or an official; sent once per idempotency key."""

    ref: UnitRef
    idempotency_key: str
    recipients: list[str]
    subject: str
    body: str
    # Resolved from the roster's contacts; empty (older units): the log channel for each.
    deliveries: list[Delivery] = Field(default_factory=list)


class NotifyOutcome(Model):
    status: Literal["sent", "duplicate", "dead"]
    # Deliveries given up after the maximum attempts: "recipient via channel: last error".
    dead: list[str] = Field(default_factory=list)
