"""Workflow inputs and the records activities take: what crosses the workflow boundary."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas.calibration import CalibrationEntry
from schemas.common import Actor, CadreGrade, Model, Stage, TeamGrade
from schemas.messages import (
    AcknowledgeNotice,
    ApproveGrades,
    CloseFollowUp,
    ProposeGrades,
    RaiseObjection,
    RecordFollowUp,
    RecordTalk,
    RegisterBallotBatch,
    ResolveObjection,
    SubmitReport,
)
from schemas.policy import Policy, RaterGroup
from schemas.roster import Contact, Roster, RosterHeader, UnitSpec
from schemas.status import FollowUp


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
    # A continued run's domain.state.UnitState, as JSON (this layer cannot name it): the run
    # it continues had registered the unit (workflows/unit/continuing.py). None at start.
    carried_state: dict[str, Any] | None = None

    @property
    def rater_groups(self) -> list[RaterGroup]:
        return self.unit.rater_groups or self.policy.rater_groups


class StoredRoster(Model):
    """A roster kept in PostgreSQL (table campaign_roster_units) because it is too large for
    a workflow input; the campaign reads its units page by page. The digest names the exact
    roster, so one stored again with changes never alters what a running campaign reads."""

    header: RosterHeader
    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    units_total: int = Field(ge=1, le=10_000)
    # Category -> cadres graded this year: the pooled 优秀 quotas need no unit list.
    graded_by_category: dict[str, int]


class RosterUnit(Model):
    """One unit of a stored roster with the contacts its notifications can go to."""

    unit: UnitSpec
    contacts: dict[str, Contact] = Field(default_factory=dict)


class RosterPage(Model):
    campaign_id: str
    digest: str
    offset: int = Field(ge=0)
    # Exactly this many units are expected: fewer means the roster was not (fully) stored.
    count: int = Field(ge=1, le=1000)


class CampaignState(Model):
    """What a campaign carries over continue-as-new, so a new run starts nothing twice."""

    # Roster units, in order, whose start was attempted (started, or found already running).
    cursor: int = Field(default=0, ge=0)
    started: list[str] = Field(default_factory=list)
    # Units an earlier run had started: their stages are read from the database once.
    recover: list[str] = Field(default_factory=list)
    stages: dict[str, Stage] = Field(default_factory=dict)
    seqs: dict[str, int] = Field(default_factory=dict)
    # Cross-unit calibration: unit id -> its latest proposal's entry; decisions taken.
    calibration: dict[str, CalibrationEntry] = Field(default_factory=dict)
    calibration_decisions: dict[str, str] = Field(default_factory=dict)


class CampaignInput(Model):
    """A campaign's roster, inline or stored (exactly one), and its state so far."""

    roster: Roster | None = None
    stored_roster: StoredRoster | None = None
    policy: Policy = Field(default_factory=Policy)
    max_concurrent_starts: int = Field(default=50, ge=1, le=500)
    # Continue-as-new once the history has this many events (besides when Temporal suggests
    # it): bounds a run's history and replay time below the server's own limits.
    history_limit: int | None = Field(default=None, ge=20)
    state: CampaignState = Field(default_factory=CampaignState)

    @model_validator(mode="after")
    def _one_roster(self) -> CampaignInput:
        if (self.roster is None) == (self.stored_roster is None):
            raise ValueError("roster: give the roster or stored_roster, exactly one")
        return self

    @property
    def header(self) -> RosterHeader:
        if self.roster is not None:
            return self.roster.header()
        assert self.stored_roster is not None
        return self.stored_roster.header

    @property
    def units_total(self) -> int:
        if self.roster is not None:
            return len(self.roster.units)
        assert self.stored_roster is not None
        return self.stored_roster.units_total


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


class BallotBatchReceipt(Model):
    batch_id: str
    count: int
    checksum: str
    duplicate: bool
    # Sheets of this batch per rater group (the token tells the group).
    sheets_by_group: dict[str, int] = Field(default_factory=dict)


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


class FollowUpSpec(FollowUp):
    """A follow-up derived from the final grades and the evaluation's flags."""

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
