"""The one state model of a unit's assessment: everything its workflow knows, and nothing
else. A pydantic model, so that continue-as-new can carry it and the pure checks in
domain/actions.py can read it without a server."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from schemas.calibration import CalibrationView
from schemas.common import Model, Stage
from schemas.messages import ActionResult, ProposeGrades
from schemas.status import (
    Flag,
    FollowUpView,
    ObjectionView,
    Rejection,
    StageVisit,
    StorageFailure,
    TargetTally,
)

# Idempotency memory, carried from run to run: the last this many actions taken. A retry
# later than that is a new action (which its stage's rules then judge).
MAX_PROCESSED_KEPT = 1000


class Processed(Model):
    """An action taken, by idempotency key: a retry gets the same answer."""

    name: str
    result: ActionResult


class Clock(Model):
    """The current stage's deadline clock (workflows/unit/clock.py runs it)."""

    deadline: dt.datetime | None = None
    visit: int = 0  # len(history) of the stage the deadline belongs to
    reminded: bool = False
    escalation: int = 0
    steps: list[str] = Field(default_factory=list)  # the stage's reminders and escalations
    paused_since: dt.datetime | None = None
    # Why the stage has no deadline: a year its working days reach has no calendar.
    problem: str | None = None


class UnitState(Model):
    stage: Stage = Stage.NOTICE
    history: list[StageVisit] = Field(default_factory=list)
    seq: int = 0  # transitions recorded
    processed: dict[str, Processed] = Field(default_factory=dict)
    clock: Clock = Field(default_factory=Clock)
    dead_letters: list[str] = Field(default_factory=list)  # notifications given up
    # Notice and report-back.
    acks: int = 0
    reports: dict[str, int] = Field(default_factory=dict)  # "team" or cadre id -> revision
    report_times: dict[str, dt.datetime] = Field(default_factory=dict)  # first submission
    # Evaluation.
    batches: dict[str, int] = Field(default_factory=dict)  # batch id -> ballots
    group_sheets: dict[str, int] = Field(default_factory=dict)  # rater group -> sheets
    flags: list[Flag] = Field(default_factory=list)
    evaluation_closed: bool = False
    evaluation_close_reason: str | None = None
    tallies: list[TargetTally] = Field(default_factory=list)
    # Talks.
    talks: list[str] = Field(default_factory=list)  # talk ids, in order
    talk_roles: dict[str, int] = Field(default_factory=dict)  # interviewee role -> talks
    # Grading.
    proposal_no: int = 0
    pending: ProposeGrades | None = None  # sealed until approved
    returned: int = 0
    final: ProposeGrades | None = None  # approved: published, sealed no more
    calibration: CalibrationView | None = None  # of the latest proposal
    publicity_ends: dt.datetime | None = None  # set while publicity runs
    publicity_starts: dt.datetime | None = None  # a later publication day than approval's
    grades_final: bool = False
    objections: dict[str, ObjectionView] = Field(default_factory=dict)
    # Result use.
    notified_at: dt.datetime | None = None  # results notified: 复核 counts from it
    follow_ups: dict[str, FollowUpView] = Field(default_factory=dict)
    # Signals refused (the latest few) and how many in all.
    rejections: list[Rejection] = Field(default_factory=list)
    rejection_count: int = 0
    # Storage writes given up on (the latest few) and how many in all.
    storage_failures: list[StorageFailure] = Field(default_factory=list)
    storage_failure_count: int = 0

    @classmethod
    def starting(cls, now: dt.datetime) -> UnitState:
        return cls(history=[StageVisit(stage=Stage.NOTICE, entered_at=now)])

    def open_follow_ups(self) -> list[str]:
        return [f.follow_up_id for f in self.follow_ups.values() if not f.closed]

    def open_objections(self) -> bool:
        return any(o.state == "open" for o in self.objections.values())

    def grades_may_become_final(self, now: dt.datetime) -> bool:
        """Published grades become final when their publicity is over and no objection is
        open (an upheld one withdraws them: publicity_ends is cleared)."""
        ends = self.publicity_ends
        return ends is not None and now >= ends and not self.open_objections()

    def ballots(self) -> int:
        return sum(self.batches.values())

    def remember(self, key: str, processed: Processed) -> None:
        """An action taken under `key`, the oldest forgotten past MAX_PROCESSED_KEPT."""
        self.processed[key] = processed
        for old in list(self.processed)[:-MAX_PROCESSED_KEPT]:
            del self.processed[old]
