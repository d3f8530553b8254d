"""The yearly assessment policy: every number and label DOMAIN.md calls policy.

A policy file (YAML) is versioned per campaign year; `kaohe/policies/<year>.yaml` ships the
defaults. The campaign carries it, so a unit is judged by the policy it started under.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from schemas.common import (
    AccountabilityLevel,
    CadreGrade,
    Identifier,
    Model,
    ShortText,
    Stage,
    TeamGrade,
)
from schemas.messages import FollowUpKind


def _to_fraction(value: object) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        return Fraction(value.strip()[:-1]) / 100
    try:
        result = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{value!r} is not a fraction such as 1/3, 0.2 or 20%") from err
    return result


# Exact ratios ("1/3", "20%", "0.8"): boundaries such as 30 of 90 must compare exactly.
Ratio = Annotated[
    Fraction,
    BeforeValidator(_to_fraction),
    PlainSerializer(lambda f: f"{f.numerator}/{f.denominator}", return_type=str),
    WithJsonSchema({"type": "string", "examples": ["1/3", "20%", "0.8"]}),
]

LIKERT_4 = ["好", "较好", "一般", "较差"]


class RaterGroup(Model):
    """A 票类: who rates (e.g. A unit leaders, B middle-level cadres, C staff)."""

    group_id: Identifier
    label: ShortText
    planned: int = Field(ge=1, le=100_000, description="Participants planned; tokens issued.")
    weight: Ratio = Field(description="Share of this group in weighted rates; all sum to 100%.")


def check_weights(groups: list[RaterGroup], where: str) -> None:
    """Weights must sum to exactly 100% (local practice)."""
    total = sum((g.weight for g in groups), Fraction(0))
    if total != 1:
        shares = ", ".join(f"{g.group_id} {float(g.weight) * 100:g}%" for g in groups)
        raise ValueError(
            f"{where}: weights must sum to 100%, they sum to {float(total) * 100:g}% ({shares})"
        )
    ids = [g.group_id for g in groups]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: a rater group appears twice")


class BallotPolicy(Model):
    team_options: list[str] = Field(default_factory=lambda: list(LIKERT_4))
    team_dimensions: list[str] = Field(
        default_factory=lambda: ["政治思想建设", "领导能力", "工作实绩", "党风廉政建设", "作风建设"]
    )
    focus_items: list[str] = Field(
        default_factory=lambda: ["政治素质", "高质量发展成效", "作风建设", "制度执行力"],
        description="The year's focus items (年度重点), rated on the team ballot.",
    )
    dimension_options: list[str] = Field(default_factory=lambda: list(LIKERT_4))
    cadre_options: list[str] = Field(
        default_factory=lambda: ["优秀", "称职", "基本称职", "不称职", "不了解"]
    )
    cadre_dimensions: list[str] = Field(
        default_factory=lambda: ["政治素质", "德", "能", "勤", "绩", "廉"]
    )
    principal_items: list[str] = Field(
        default_factory=lambda: ["抓班子带队伍", "执行民主集中制", "发挥表率作用"]
    )
    selection_questions: list[str] = Field(
        default_factory=lambda: ["选人用人工作总体评价", "选人用人监督", "上年度整改情况"]
    )
    selection_options: list[str] = Field(default_factory=lambda: ["好", "较好", "一般", "差"])
    new_cadre_options: list[str] = Field(
        default_factory=lambda: ["认同", "基本认同", "不认同", "不了解"]
    )
    # Local systems require every item to be filled before a sheet is accepted.
    items_mandatory: bool = True
    anonymity_min_sheets: int = Field(
        default=5,
        ge=2,
        le=100,
        description=(
            "无记名 holds only among enough raters: a rater group's sheets are counted in "
            "batches of at least this many (or all that are left, once its tokens are spent "
            "or the evaluation closes), and a group's results are shown or exported only "
            "once the evaluation is closed and at least this many of its sheets came back."
        ),
    )
    pool_flush_sheets: int = Field(
        default=20,
        ge=2,
        le=1000,
        description=(
            "How many sheets a rater group's pool gathers before they are counted together, "
            "shuffled, as one batch (never fewer than anonymity_min_sheets; the rest once the "
            "group's tokens are spent or the evaluation closes). More hide each sheet among "
            "more and cost the unit's history fewer events; fewer show returns sooner."
        ),
    )

    @property
    def flush_sheets(self) -> int:
        """The pooled sheets a rater group lets go at: never fewer than the minimum."""
        return max(self.pool_flush_sheets, self.anonymity_min_sheets)


class FlagPolicy(Model):
    """Thresholds of the flags (DOMAIN.md "Flags and rules"); strict comparisons as worded."""

    incompetent_more_than: Ratio = Fraction(1, 3)  # 不称职票率 more than 1/3
    competent_or_better_below: Ratio = Fraction(2, 3)  # 优秀+称职 below 2/3
    new_cadre_disapproval_more_than: Ratio = Fraction(1, 3)  # 不认同 more than 1/3
    min_participation: Ratio = Fraction(4, 5)  # returned / planned, per group


class GradingPolicy(Model):
    """评定等次: the 优秀 quota, the 优秀 gates and how a grade is suggested from the tallies."""

    excellent_ratio: Ratio = Fraction(1, 5)  # at most 20% of the graded cadres
    excellent_ratio_by_category: dict[str, Ratio] = Field(default_factory=dict)
    excellent_quota_scope: Literal["unit", "category"] = Field(
        default="unit",
        description=(
            "unit: each unit's 优秀 within its own quota (checked when grades are proposed). "
            "category: the quota is pooled over the campaign's units of a category (a unit of "
            "three cadres may then have one 优秀); the campaign calibrates every proposal and "
            "holds one that breaks the pool until the department decides."
        ),
    )
    max_leave_days: int = Field(default=180, ge=0, le=366)
    # An accountability at this level or above, overlapping the year, bars 优秀.
    accountability_bars_excellent_from: AccountabilityLevel = AccountabilityLevel.ADMONISHMENT
    # Suggested grade: each ballot's points (不了解 not counted), averaged per rater group,
    # weighted by group; the first band whose minimum the score reaches.
    points: dict[str, int] = Field(
        default_factory=lambda: {"优秀": 100, "称职": 80, "基本称职": 60, "不称职": 0}
    )
    bands: list[tuple[int, str]] = Field(
        default_factory=lambda: [(90, "优秀"), (75, "称职"), (60, "基本称职"), (0, "不称职")]
    )

    # 公示: working days from the first working day after publication, to 24:00 Shanghai.
    publicity_working_days: int = Field(default=5, ge=0, le=30)

    # How grades are shown (DOMAIN.md: some places grade teams 优秀/良好/一般/较差). Proposals
    # may name a grade by its label or by the default name; unlisted grades keep their name.
    team_labels: dict[TeamGrade, ShortText] = Field(default_factory=dict)
    cadre_labels: dict[CadreGrade, ShortText] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _labels_unambiguous(self) -> GradingPolicy:
        for field, labels, grades in (
            ("team_labels", self.team_labels, list(TeamGrade)),
            ("cadre_labels", self.cadre_labels, list(CadreGrade)),
        ):
            named: dict[str, str] = {}
            for grade in grades:
                label = labels.get(grade, grade.value)
                for name in {label, grade.value}:
                    if named.get(name, grade.value) != grade.value:
                        raise ValueError(
                            f"{field}: {name!r} would name both {named[name]} and {grade.value}"
                        )
                    named[name] = grade.value
        return self

    def ratio_for(self, category: str) -> Fraction:
        return self.excellent_ratio_by_category.get(category, self.excellent_ratio)

    def team_label(self, grade: TeamGrade) -> str:
        return self.team_labels.get(grade, grade.value)

    def cadre_label(self, grade: CadreGrade) -> str:
        return self.cadre_labels.get(grade, grade.value)

    def grade_labels(self) -> dict[str, dict[str, str]]:
        """grade -> label per set, only where they differ (stored for reports)."""
        return {
            "team": {g.value: label for g, label in self.team_labels.items()},
            "cadre": {g.value: label for g, label in self.cadre_labels.items()},
        }

    def grade_names(self) -> dict[str, dict[str, str]]:
        """label -> grade, per set: the context ProposeGrades parses its grades with."""
        return {
            "team": {label: g.value for g, label in self.team_labels.items()},
            "cadre": {label: g.value for g, label in self.cadre_labels.items()},
        }


class FollowUpAction(Model):
    kind: FollowUpKind
    text: ShortText


def _actions(*pairs: tuple[FollowUpKind, str]) -> list[FollowUpAction]:
    return [FollowUpAction(kind=k, text=t) for k, t in pairs]


class ResultUsePolicy(Model):
    """结果运用: which follow-ups final grades and flags call for (DOMAIN.md defaults)."""

    follow_up_days: int = Field(default=30, ge=1, le=366)
    # 复核: days after the results are notified to ask, and days to answer (local practice).
    review_request_days: int = Field(default=10, ge=0, le=366)
    review_answer_days: int = Field(default=10, ge=1, le=366)
    cadre_actions: dict[str, list[FollowUpAction]] = Field(
        default_factory=lambda: {
            "优秀": _actions(
                (FollowUpKind.INCENTIVE, "激励"),
                (FollowUpKind.CANDIDATE_POOL, "纳入优秀干部人选库"),
            ),
            "基本称职": _actions(
                (FollowUpKind.ADMONISHING_TALK, "诫勉谈话"),
                (FollowUpKind.TRAINING, "培训提升; 不发年度奖金"),
            ),
            "不称职": _actions(
                (FollowUpKind.REMOVAL_PROPOSAL, "免职或降职建议"),
                (FollowUpKind.ACCOUNTABILITY, "问责追责"),
            ),
        }
    )
    team_actions: dict[str, list[FollowUpAction]] = Field(
        default_factory=lambda: {
            "一般": _actions((FollowUpKind.RECTIFICATION, "班子整改方案及整改落实")),
            "较差": _actions((FollowUpKind.RECTIFICATION, "班子整改方案及整改落实")),
        }
    )
    # Flags of the evaluation, by code (domain/tally.py).
    flag_actions: dict[str, list[FollowUpAction]] = Field(
        default_factory=lambda: {
            "selection_review": _actions((FollowUpKind.SELECTION_REVIEW, "新提拔干部选任核查")),
        }
    )


class DeadlinePolicy(Model):
    """Stage deadlines in working days (DOMAIN.md "Timing"), reminders before them and the
    escalation after: level 1 (the assessment group leader) when a deadline passes, level 2
    (the organization department) the given working days later."""

    working_days: dict[Stage, int] = Field(
        default_factory=lambda: {
            Stage.NOTICE: 3,
            Stage.REPORT_BACK: 10,
            Stage.EVALUATION: 10,
            Stage.TALKS: 10,
            Stage.GRADING: 20,
            Stage.RESULT_USE: 60,
        },
        description="Working days a stage has, from the first working day after it starts; "
        "a stage not listed has no deadline.",
    )
    reminder_working_days: int = Field(default=2, ge=0, le=30)
    escalate_after_working_days: int = Field(default=3, ge=1, le=60)


class DemoClock(Model):
    """Seconds instead of days, for tests and demonstrations only: with it a stall, the end
    of publicity or an overdue 复核 shows within seconds. A real campaign's policy has none;
    `kaohe demo` sets one. Each field left out keeps the calendar's own days."""

    working_day_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Every working day of a stage's deadline, reminder and escalation lasts "
        "this many seconds.",
    )
    publicity_seconds: float | None = Field(
        default=None, ge=0, description="Publicity (公示) lasts this many seconds."
    )
    review_answer_seconds: float | None = Field(
        default=None, gt=0, description="A 复核 is overdue this many seconds after the request."
    )


_OLD_DEMO_KNOBS = (
    ("grading", "publicity_seconds"),
    ("deadlines", "working_day_seconds"),
    ("result_use", "review_answer_seconds"),
)


class YearSchedule(Model):
    """One year's working-day schedule, as the State Council's notice sets it (国务院办公厅关于
    YYYY年部分节假日安排的通知): the days off, and the weekend days worked instead (调休上班).
    Entered in the policy, it takes precedence over the chinese-calendar package; a unit
    starts with a copy of every year it may reach, so that upgrading the package never moves
    a running unit's dates."""

    rest_days: list[dt.date] = Field(
        default_factory=list,
        max_length=60,
        description="Days off (放假); a weekend day listed here is off anyway.",
    )
    working_days: list[dt.date] = Field(
        default_factory=list,
        max_length=20,
        description="Saturdays and Sundays that are working days (调休上班).",
    )
    source: ShortText = Field(
        default="policy",
        description="Where it comes from: policy (entered by the department), or the package "
        "it was copied from (chinese-calendar, provisional).",
    )

    @model_validator(mode="after")
    def _working_days_are_weekends(self) -> YearSchedule:
        for d in self.working_days:
            if d.weekday() < 5:
                raise ValueError(
                    f"working_days: {d} is a weekday; list only the Saturdays and Sundays "
                    "that are worked (调休上班)"
                )
        both = sorted(set(self.rest_days) & set(self.working_days))
        if both:
            raise ValueError(f"rest_days and working_days both list {both[0]}")
        return self


class Policy(Model):
    version: ShortText = "default"
    year: int | None = Field(default=None, ge=2000, le=2100)
    reports_due: dt.date | None = Field(
        default=None,
        description="述职 reports are due by the end of this day (Asia/Shanghai); later ones "
        "show as late in status.",
    )
    ballots: BallotPolicy = Field(default_factory=BallotPolicy)
    flags: FlagPolicy = Field(default_factory=FlagPolicy)
    grading: GradingPolicy = Field(default_factory=GradingPolicy)
    result_use: ResultUsePolicy = Field(default_factory=ResultUsePolicy)
    deadlines: DeadlinePolicy = Field(default_factory=DeadlinePolicy)
    demo_clock: DemoClock | None = Field(
        default=None, description="Tests and demonstrations only: seconds instead of days."
    )
    calendar: dict[Annotated[int, Field(ge=2000, le=2100)], YearSchedule] = Field(
        default_factory=dict,
        max_length=10,
        description="Year -> its working-day schedule (README: entering the State Council's "
        "schedule); years left out come from the chinese-calendar package when a unit starts.",
    )
    rater_groups: list[RaterGroup] = Field(
        default_factory=lambda: [
            RaterGroup(group_id="A", label="领导班子成员", planned=5, weight=Fraction(2, 5)),
            RaterGroup(group_id="B", label="中层干部", planned=10, weight=Fraction(3, 10)),
            RaterGroup(group_id="C", label="职工代表", planned=15, weight=Fraction(3, 10)),
        ],
        description="Default rater groups of a unit whose roster entry names none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _demo_knobs_of_old(cls, data: Any) -> Any:
        """Policies written before the demo clock named its knobs in grading, deadlines and
        result_use: they are read into demo_clock (deprecated; the schema shows only
        demo_clock), so such a file keeps working."""
        if not isinstance(data, dict):
            return data
        moved: dict[str, Any] = {}
        data = dict(data)
        for section, knob in _OLD_DEMO_KNOBS:
            part = data.get(section)
            if isinstance(part, dict) and knob in part:
                part = dict(part)
                moved[knob] = part.pop(knob)
                data[section] = part
        if moved:
            clock = data.get("demo_clock") or {}
            data["demo_clock"] = {**moved, **clock} if isinstance(clock, dict) else clock
        return data

    @property
    def demo(self) -> DemoClock:
        """The demo clock, or one that leaves every day a day."""
        return self.demo_clock or DemoClock()

    @model_validator(mode="after")
    def _weights(self) -> Policy:
        check_weights(self.rater_groups, "rater_groups")
        return self

    @model_validator(mode="after")
    def _calendar_years(self) -> Policy:
        for year, schedule in self.calendar.items():
            for field in ("rest_days", "working_days"):
                for d in getattr(schedule, field):
                    if d.year != year:
                        raise ValueError(f"calendar.{year}.{field}: {d} is not in {year}")
        return self
