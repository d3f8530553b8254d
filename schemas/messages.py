"""One model per update/signal. Integrators send these as JSON; see `kaohe schema export`."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.common import (
    Action,
    CadreGrade,
    CadreOverall,
    Identifier,
    LongText,
    Model,
    Reason,
    ShortText,
    Stage,
    TeamGrade,
)

MAX_BALLOTS_PER_BATCH = 500
MAX_TALK_CHARS = 20_000


class AcknowledgeNotice(Action):
    """The unit confirms it received the notice (考核通知) and the schedule."""

    note: ShortText | None = None


class SubmitReport(Action):
    """The team's annual summary (kind=team) or one cadre's duty report (kind=cadre, 述职述廉)."""

    kind: Literal["team", "cadre"]
    cadre_id: Identifier | None = Field(default=None, description="Required when kind=cadre.")
    title: ShortText
    text: LongText
    revision_reason: Reason | None = Field(
        default=None, description="Required to replace a report already submitted."
    )

    @model_validator(mode="after")
    def _cadre_iff_cadre_report(self) -> SubmitReport:
        if self.kind == "cadre" and self.cadre_id is None:
            raise ValueError("cadre_id is required when kind is 'cadre'")
        if self.kind == "team" and self.cadre_id is not None:
            raise ValueError("cadre_id must be empty when kind is 'team'")
        return self


class Ballot(Model):
    """One anonymous ballot: no voter identity, only the rater group (票类)."""

    target_kind: Literal["team", "cadre"]
    target_id: Identifier | None = Field(default=None, description="The cadre; empty for team.")
    rater_group: Identifier = Field(description="票类, e.g. A (leaders), B, C.")
    overall: str = Field(
        description="team: 好/较好/一般/较差; cadre: 优秀/称职/基本称职/不称职/不了解"
    )

    @model_validator(mode="after")
    def _option_in_set(self) -> Ballot:
        if self.target_kind == "team":
            if self.target_id is not None:
                raise ValueError("target_id must be empty for a team ballot")
            allowed = [g.value for g in TeamGrade]
        else:
            if self.target_id is None:
                raise ValueError("target_id is required for a cadre ballot")
            allowed = [o.value for o in CadreOverall]
        if self.overall not in allowed:
            raise ValueError(f"overall {self.overall!r} is not one of {allowed}")
        return self


class RecordBallots(Action):
    """A batch of ballots (民主测评); all-or-nothing, idempotent by batch_id."""

    batch_id: Identifier
    ballots: Annotated[list[Ballot], Field(min_length=1, max_length=MAX_BALLOTS_PER_BATCH)]


class CloseEvaluation(Action):
    reason: Reason | None = None


class RecordTalk(Action):
    """One individual talk (个别谈话). The content is encrypted before it is stored."""

    talk_id: Identifier
    interviewer: ShortText
    interviewee_role: ShortText
    talk_date: dt.date
    content: Annotated[str, Field(min_length=1, max_length=MAX_TALK_CHARS)]


class ProposeGrades(Action):
    """The group's evaluation (综合分析研判) and proposed grades; sealed until published."""

    evaluation: LongText
    team_grade: TeamGrade
    cadre_grades: dict[Identifier, CadreGrade]


class ApproveGrades(Action):
    decision: Literal["approve", "return"]
    comment: ShortText | None = None

    @model_validator(mode="after")
    def _return_needs_comment(self) -> ApproveGrades:
        if self.decision == "return" and not self.comment:
            raise ValueError("comment is required when the proposal is returned")
        return self


class FollowUpKind(StrEnum):
    FEEDBACK = "feedback"
    INCENTIVE = "incentive"
    CANDIDATE_POOL = "candidate_pool"
    ADMONISHING_TALK = "admonishing_talk"
    TRAINING = "training"
    REMOVAL_PROPOSAL = "removal_proposal"
    ACCOUNTABILITY = "accountability"
    ADJUSTMENT = "adjustment"
    RECTIFICATION = "rectification"
    SELECTION_REVIEW = "selection_review"
    OTHER = "other"


class RecordFollowUp(Action):
    """A follow-up action of result use (结果运用), added by hand beside the derived ones."""

    follow_up_id: Identifier
    kind: FollowUpKind
    cadre_id: Identifier | None = None
    owner: ShortText
    due_date: dt.date | None = None
    description: ShortText


class CloseFollowUp(Action):
    follow_up_id: Identifier
    outcome: Reason


class CloseStage(Action):
    """Close the current stage early. `stage` must name it, so a stale request cannot skip two."""

    stage: Stage
    reason: Reason


class ActionResult(Model):
    accepted: bool
    duplicate: bool = False
    stage: Stage
    message: str


# Update and signal names (snake_case) with their message models: the public contract.
ACTION_MODELS: dict[str, type[Action]] = {
    "acknowledge_notice": AcknowledgeNotice,
    "submit_report": SubmitReport,
    "record_ballots": RecordBallots,
    "close_evaluation": CloseEvaluation,
    "record_talk": RecordTalk,
    "propose_grades": ProposeGrades,
    "approve_grades": ApproveGrades,
    "record_follow_up": RecordFollowUp,
    "close_follow_up": CloseFollowUp,
    "close_stage": CloseStage,
}
