"""One model per update/signal. Integrators send these as JSON; see `kaohe schema export`."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator

from schemas.common import (
    Action,
    CadreGrade,
    Identifier,
    LongText,
    Model,
    Reason,
    ShortText,
    Stage,
    TeamGrade,
)

MAX_SHEETS_PER_BATCH = 500
MAX_TALK_CHARS = 20_000
MAX_CADRES = 200  # a unit's cadres (schemas.roster.UnitSpec)
MAX_ITEMS = 50  # the items of one rating

# One option of a ballot (好, 称职, 认同 ...): the model's validators name the set.
Option = Annotated[str, StringConstraints(max_length=50)]


class AcknowledgeNotice(Action):
    """The unit confirms it received the notice (考核通知) and the schedule."""

    note: ShortText | None = None


class FileRef(Model):
    """A report kept in a document system: where it is and what it must hash to."""

    uri: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(ge=1, le=2**40)
    media_type: ShortText | None = None


class SubmitReport(Action):
    """The team's annual summary (kind=team) or one cadre's duty report (kind=cadre, 述职述廉),
    as text or as a file reference (exactly one of them)."""

    kind: Literal["team", "cadre"]
    cadre_id: Identifier | None = Field(default=None, description="Required when kind=cadre.")
    title: ShortText
    text: LongText | None = None
    file: FileRef | None = None
    revision_reason: Reason | None = Field(
        default=None, description="Required to replace a report already submitted."
    )

    @model_validator(mode="after")
    def _cadre_iff_cadre_report(self) -> SubmitReport:
        if self.kind == "cadre" and self.cadre_id is None:
            raise ValueError("cadre_id is required when kind is 'cadre'")
        if self.kind == "team" and self.cadre_id is not None:
            raise ValueError("cadre_id must be empty when kind is 'team'")
        if (self.text is None) == (self.file is None):
            raise ValueError("text: give the report as text or as a file reference (file)")
        return self


Token = Annotated[str, StringConstraints(min_length=16, max_length=128)]
Items = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=50)], Option],
    Field(max_length=MAX_ITEMS),
]


class TeamRating(Model):
    """民主测评 of the leadership team: overall 好/较好/一般/较差, team dimensions, focus items."""

    overall: Option
    items: Items = Field(default_factory=dict)


class CadreRating(Model):
    """民主测评 of one cadre: overall grade or 不了解, 政治素质/德/能/勤/绩/廉, principal items."""

    cadre_id: Identifier
    overall: Option
    items: Items = Field(default_factory=dict)


class NewCadreRating(Model):
    """民主评议 of a newly promoted cadre: 认同/基本认同/不认同/不了解."""

    cadre_id: Identifier
    opinion: Option


class BallotSheet(Model):
    """One rater's anonymous sheet. The one-time token proves the right to rate and gives the
    rater group; it is never stored with the ratings."""

    token: Token
    team: TeamRating | None = None
    cadres: list[CadreRating] = Field(default_factory=list, max_length=200)
    selection_work: Items | None = Field(
        default=None, description="民主评议 of the year's selection work: question -> option."
    )
    new_cadres: list[NewCadreRating] = Field(default_factory=list, max_length=200)

    def ballot_count(self) -> int:
        """Ballots on the sheet: one per rated target (team, cadre, selection work)."""
        return (
            (self.team is not None)
            + len(self.cadres)
            + len(self.new_cadres)
            + (self.selection_work is not None)
        )


class RegisterBallotBatch(Action):
    """A batch of sheets already in PostgreSQL (a ballot pool batch, or one COPYed by `kaohe
    ballots import`), by id, count and checksum: the unit never holds a sheet or a token."""

    batch_id: Identifier
    ballots: int = Field(ge=1)
    sheets: int = Field(ge=1)
    checksum: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class CloseEvaluation(Action):
    reason: Reason | None = None


# A talk's content never reaches a workflow: kaohe's API stores it encrypted (POST
# /v1/campaigns/{c}/units/{u}/talks, schemas/talks.py) and the unit gets its reference.
TalkRef = Annotated[str, StringConstraints(pattern=r"^talk-[0-9a-f]{32}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class RecordTalk(Action):
    """One individual talk (个别谈话), by reference: kaohe's API stored its content, encrypted,
    and sends this with the reference, the content's digest and the talk's metadata. The unit
    counts the talk once it has checked that the reference is a talk stored for this unit
    with this digest and metadata. There is no content field: a payload with one is refused."""

    talk_id: Identifier
    interviewer: ShortText
    interviewee_role: ShortText
    talk_date: dt.date
    talk_ref: TalkRef = Field(description="The stored talk (POST .../talks answers it).")
    digest: Sha256 = Field(description="sha256 (hex) of the content's UTF-8 bytes, as stored.")


class Appraisal(Model):
    """Strengths and shortcomings (优点与不足) the assessment group finds."""

    strengths: LongText
    shortcomings: LongText


class GroupEvaluation(Appraisal):
    """The group's comprehensive analysis (综合分析研判) of the team, and of each cadre it
    names. The grades it suggests are the proposal's team_grade and cadre_grades; the rules
    engine's own suggestion from the tallies is in the status beside them."""

    cadres: dict[Identifier, Appraisal] = Field(default_factory=dict, max_length=MAX_CADRES)


def evaluation_text(evaluation: GroupEvaluation | str) -> str:
    """The evaluation as one text (the team's strengths, then shortcomings)."""
    if isinstance(evaluation, str):
        return evaluation
    return f"优点: {evaluation.strengths}\n不足: {evaluation.shortcomings}"


class ProposeGrades(Action):
    """The group's evaluation (综合分析研判) and proposed grades; sealed until published.

    A grade may be given by the label the campaign's policy shows for it (grading.team_labels,
    grading.cadre_labels): the workflow parses with those labels as validation context."""

    evaluation: GroupEvaluation | LongText = Field(
        description="Strengths, shortcomings (team and cadres); plain text is still taken."
    )
    team_grade: TeamGrade
    cadre_grades: dict[Identifier, CadreGrade] = Field(max_length=MAX_CADRES)
    determinations: dict[Identifier, Reason] = Field(
        default_factory=dict,
        max_length=MAX_CADRES,
        description="Written determinations for cadres flagged by 不称职票率 and proposed "
        "称职 or better.",
    )

    @field_validator("team_grade", mode="before")
    @classmethod
    def _team_label(cls, value: object, info: ValidationInfo) -> object:
        return _grade_named(value, info, "team")

    @field_validator("cadre_grades", mode="before")
    @classmethod
    def _cadre_labels(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, dict):
            return value
        return {k: _grade_named(v, info, "cadre") for k, v in value.items()}


def _grade_named(value: object, info: ValidationInfo, grade_set: str) -> object:
    names = (info.context or {}).get("grade_names", {}).get(grade_set, {})
    return names.get(value, value) if isinstance(value, str) else value


class ApproveGrades(Action):
    decision: Literal["approve", "return"]
    comment: ShortText | None = None
    publicity_from: dt.date | None = Field(
        default=None,
        description="The day 公示 is published (Asia/Shanghai): today, the default, or a later"
        " working day; its working days count from the first working day after it.",
    )

    @model_validator(mode="after")
    def _return_needs_comment(self) -> ApproveGrades:
        if self.decision == "return" and not self.comment:
            raise ValueError("comment is required when the proposal is returned")
        return self


class RaiseObjection(Action):
    """An objection (异议) during publicity, against the team's grade or one cadre's."""

    objection_id: Identifier
    raised_by: ShortText
    cadre_id: Identifier | None = Field(default=None, description="Empty: the team's grade.")
    reason: Reason


class ResolveObjection(Action):
    """Upheld: the published grades are withdrawn and go through a new proposal and approval.
    Dismissed: the reason is recorded."""

    objection_id: Identifier
    decision: Literal["uphold", "dismiss"]
    reason: Reason


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
    REVIEW = "review"  # 复核 requested by a cadre
    OTHER = "other"


class RecordFollowUp(Action):
    """A follow-up action of result use (结果运用), added by hand beside the derived ones."""

    follow_up_id: Identifier
    kind: FollowUpKind
    cadre_id: Identifier | None = None
    owner: ShortText
    due_date: dt.date | None = None
    description: ShortText


class RequestReview(Action):
    """A cadre asks for 复核 of its final grade, within the policy's days after notification;
    the department answers by closing the review follow-up it opens."""

    cadre_id: Identifier
    reason: Reason


class CloseFollowUp(Action):
    follow_up_id: Identifier
    outcome: Reason


class CloseStage(Action):
    """Close the current stage early. `stage` must name it, so a stale request cannot skip two."""

    stage: Stage
    reason: Reason


class ExtendDeadline(Action):
    """Moves the current stage's deadline by working days after its old last day; a stalled
    unit is no longer stalled if the new deadline lies ahead."""

    days: int = Field(ge=1, le=60)
    reason: Reason


class PauseUnit(Action):
    """Stops the unit's deadline clock (e.g. the unit is reorganized); `resume` restarts it."""

    reason: Reason


class ResumeUnit(Action):
    """Restarts a paused unit's clock: its deadline moves by the working days it was paused."""

    reason: Reason | None = None


class ActionResult(Model):
    accepted: bool
    duplicate: bool = False
    stage: Stage
    message: str
