"""What the `status` and `progress` queries return. Grades appear only once published."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from schemas.calibration import CalibrationView
from schemas.common import CadreGrade, Model, Stage, TeamGrade
from schemas.messages import FollowUpKind


class StageVisit(Model):
    stage: Stage
    entered_at: dt.datetime
    left_at: dt.datetime | None = None
    closed_early_reason: str | None = None


class TargetTally(Model):
    """Counts of one target's ballots, computed in SQL, and the rates derived from them."""

    target_kind: str
    target_id: str | None
    ballots: int
    counts: dict[str, int]
    # Rates over all returned ballots, 不了解 included (DOMAIN.md).
    excellent_rate: float | None = None  # 优秀率
    competent_or_better_rate: float | None = None  # 称职以上率
    incompetent_rate: float | None = None  # 不称职票率
    good_rate: float | None = None  # 好评率 (team, selection work: 好 + 较好)
    approval_rate: float | None = None  # 认同率 (newly promoted: 认同 + 基本认同)
    disapproval_rate: float | None = None  # 不认同率
    # rater group -> option -> ballots; the rates above are weighted by group.
    by_group: dict[str, dict[str, int]] = Field(default_factory=dict)


class Flag(Model):
    """A policy flag raised by the tallies, for the grading stage to weigh."""

    code: str
    target_kind: str
    target_id: str | None
    message: str


class GroupParticipation(Model):
    group_id: str
    label: str
    planned: int
    returned: int
    weight: float


class ReportProgress(Model):
    team_summary: bool = False
    cadres_submitted: int = 0
    cadres_total: int = 0
    missing: list[str] = Field(default_factory=list)
    revisions: int = 0
    due: dt.datetime | None = None
    # Submitted after `due`, or still missing once it passed ("team" or a cadre id).
    late: list[str] = Field(default_factory=list)


class EvaluationProgress(Model):
    batches: int = 0
    ballots: int = 0
    sheets: int = 0
    closed: bool = False
    close_reason: str | None = None
    participation: list[GroupParticipation] = Field(default_factory=list)
    tallies: list[TargetTally] = Field(default_factory=list)
    flags: list[Flag] = Field(default_factory=list)


class TalkProgress(Model):
    recorded: int = 0
    planned: int = 0
    # interviewee role -> (recorded, planned), when the unit has a talk plan
    by_role: dict[str, tuple[int, int]] = Field(default_factory=dict)


class ObjectionView(Model):
    objection_id: str
    cadre_id: str | None
    state: Literal["open", "upheld", "dismissed"]


class GradingProgress(Model):
    # Suggested from the tallies by the policy's method (not a proposal: not sealed).
    suggested: dict[str, str] = Field(default_factory=dict)
    proposals: int = 0
    pending_proposal: bool = False
    returned: int = 0
    approved: bool = False
    published: bool = False
    publicity_ends: dt.datetime | None = None
    final: bool = False
    objections: list[ObjectionView] = Field(default_factory=list)
    # Cross-unit calibration of the latest proposal (a pooled 优秀 quota only).
    calibration: CalibrationView | None = None
    # Sealed: stay None until publication (DOMAIN.md: 不承诺评定等次).
    team_grade: TeamGrade | None = None
    cadre_grades: dict[str, CadreGrade] | None = None
    # The same grades as the policy shows them (grading.team_labels / cadre_labels).
    team_grade_label: str | None = None
    cadre_grade_labels: dict[str, str] | None = None


class FollowUp(Model):
    """A follow-up action of result use (结果运用): what, for whom, whose, by when."""

    follow_up_id: str
    kind: FollowUpKind
    cadre_id: str | None = None
    owner: str
    due_date: dt.date | None = None


class FollowUpView(FollowUp):
    """A follow-up as the unit's status shows it."""

    closed: bool = False
    closed_by: str | None = Field(default=None, description="Actor id; a feedback's signer.")
    overdue: bool = Field(default=False, description="A 复核 not answered by its date.")


class FollowUpProgress(Model):
    open: int = 0
    closed: int = 0
    items: list[FollowUpView] = Field(default_factory=list)


class Rejection(Model):
    name: str
    idempotency_key: str | None
    reason: str
    # Whether the same signal may succeed later: only when storage was unavailable.
    retryable: bool = False
    at: dt.datetime


class StorageFailure(Model):
    """A storage write the unit gave up on (after its retries, or refused by the database):
    the action it belonged to was refused, or a record of the unit's own is missing."""

    during: str  # the action, or what the unit was doing
    activity: str
    retryable: bool
    reason: str
    at: dt.datetime


class UnitStatus(Model):
    workflow_id: str
    campaign_id: str
    year: int
    unit_id: str
    unit_name: str
    stage: Stage
    history: list[StageVisit]
    deadline: dt.datetime | None = None
    stalled: bool = False
    escalation_level: int = 0
    # Since when the deadline clock is paused (deadline: the current stage's, exclusive).
    paused_since: dt.datetime | None = None
    # Notifications dead-lettered after their maximum attempts: "step: recipient via channel:
    # last error" (the audit table has a row for each).
    dead_letters: list[str] = Field(default_factory=list)
    # The current stage's deadline steps so far: "reminder 2026-12-01 09:00 → 办公室".
    deadline_steps: list[str] = Field(default_factory=list)
    # Why there is no deadline, or no reminder: a year without a working-day calendar.
    deadline_problem: str | None = None
    acknowledgements: int = 0
    reports: ReportProgress
    evaluation: EvaluationProgress
    talks: TalkProgress
    grading: GradingProgress
    follow_ups: FollowUpProgress
    # The latest signals refused, and how many in all (those refused near the history's
    # limit only count: workflows/unit/continuing.py).
    rejected_signals: list[Rejection] = Field(default_factory=list)
    rejected_signal_count: int = 0
    # The latest storage failures (the department is notified of each), and how many in all.
    storage_failures: list[StorageFailure] = Field(default_factory=list)
    storage_failure_count: int = 0


class CampaignProgress(Model):
    campaign_id: str
    year: int
    title: str
    units_total: int
    units_started: int
    by_stage: dict[Stage, int]
    completed: bool
    # Proposals held by cross-unit calibration, awaiting the department.
    calibration_held: list[str] = Field(default_factory=list)
