"""Pure, deterministic rules: result use (结果运用: which follow-ups the final grades call
for) and grading (评定等次: quota, 优秀 gates, 不确定等次, the 不称职 flag, the suggested grade).

Defaults from DOMAIN.md (local practice); the numbers come from the yearly policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from fractions import Fraction

from schemas.common import CadreGrade, TeamGrade
from schemas.messages import FollowUpKind
from schemas.policy import GradingPolicy, ResultUsePolicy
from schemas.roster import CadreSpec, UnitSpec
from schemas.status import Flag
from schemas.workflow_io import FollowUpSpec

FOLLOW_UP_DAYS = 30
LOW_GRADES = (CadreGrade.BASICALLY_COMPETENT, CadreGrade.INCOMPETENT)

# DOMAIN.md: 优秀 -> incentive; 基本称职 -> admonishing talk and training;
# 不称职 -> removal/demotion proposal and accountability.
_CADRE_ACTIONS: dict[CadreGrade, tuple[tuple[FollowUpKind, str], ...]] = {
    CadreGrade.EXCELLENT: ((FollowUpKind.INCENTIVE, "激励: 纳入优秀干部人选库"),),
    CadreGrade.BASICALLY_COMPETENT: (
        (FollowUpKind.ADMONISHING_TALK, "诫勉谈话"),
        (FollowUpKind.TRAINING, "培训提升"),
    ),
    CadreGrade.INCOMPETENT: (
        (FollowUpKind.REMOVAL_PROPOSAL, "免职或降职建议"),
        (FollowUpKind.ACCOUNTABILITY, "问责追责"),
    ),
}


def derive_follow_ups(
    unit: UnitSpec,
    team_grade: TeamGrade,
    cadre_grades: dict[str, CadreGrade],
    today: dt.date,
    previous_grades: dict[str, str] | None = None,
    policy: ResultUsePolicy | None = None,
    flags: Sequence[Flag] = (),
) -> list[FollowUpSpec]:
    """The follow-ups the final grades call for, each once (ids are stable).

    With `previous_grades` (last year's final grades by cadre; units started before
    RESULT_USE_PATCH pass None and keep the first rules) the policy's mapping applies, each
    cadre signs for its feedback, flags call for their actions and the two-year rule applies.
    """
    if previous_grades is None:
        return _first_follow_ups(unit, team_grade, cadre_grades, today)
    policy = policy or ResultUsePolicy()
    due = today + dt.timedelta(days=policy.follow_up_days)

    def spec(
        ident: str, kind: FollowUpKind, owner: str, text: str, cadre_id: str | None = None
    ) -> FollowUpSpec:
        return FollowUpSpec(
            follow_up_id=ident,
            kind=kind,
            cadre_id=cadre_id,
            owner=owner,
            due_date=due,
            description=text,
        )

    out = [spec("feedback-unit", FollowUpKind.FEEDBACK, "department", f"向{unit.name}反馈考核结果")]
    out += [
        spec(f"{a.kind.value}-team", a.kind, unit.contact or unit.unit_id, a.text)
        for a in policy.team_actions.get(team_grade.value, [])
    ]
    for cadre in unit.cadres:
        grade = cadre_grades.get(cadre.cadre_id)
        # DOMAIN.md: results are notified in writing and the cadre signs (acknowledges) them.
        out.append(
            spec(
                f"feedback-{cadre.cadre_id}",
                FollowUpKind.FEEDBACK,
                cadre.cadre_id,
                f"{cadre.name}: 签收考核结果",
                cadre.cadre_id,
            )
        )
        out += [
            spec(
                f"{a.kind.value}-{cadre.cadre_id}",
                a.kind,
                "department",
                f"{cadre.name}: {a.text}",
                cadre.cadre_id,
            )
            for a in policy.cadre_actions.get(grade.value if grade else "", [])
        ]
        repeated = two_year_rule(cadre.cadre_id, grade, previous_grades)
        if repeated:
            out.append(
                spec(
                    f"adjustment-{cadre.cadre_id}",
                    FollowUpKind.ADJUSTMENT,
                    "department",
                    f"{cadre.name}: {repeated}",
                    cadre.cadre_id,
                )
            )
    for flag in flags:
        target = unit.cadre(flag.target_id or "")
        for a in policy.flag_actions.get(flag.code, []):
            name = target.name if target else flag.target_id
            out.append(
                spec(
                    f"{a.kind.value}-{flag.target_id}",
                    a.kind,
                    "department",
                    f"{name}: {a.text}",
                    target.cadre_id if target else None,
                )
            )
    # One follow-up per id, the first wins (a grade and a flag may call for one action).
    unique: dict[str, FollowUpSpec] = {}
    for f in out:
        unique.setdefault(f.follow_up_id, f)
    return list(unique.values())


def _first_follow_ups(
    unit: UnitSpec, team_grade: TeamGrade, cadre_grades: dict[str, CadreGrade], today: dt.date
) -> list[FollowUpSpec]:
    """The follow-ups of units started before RESULT_USE_PATCH, unchanged for replay."""
    due = today + dt.timedelta(days=FOLLOW_UP_DAYS)
    # Feedback (反馈) to the unit always; the unit completes once it is acknowledged.
    out = [
        FollowUpSpec(
            follow_up_id="feedback-unit",
            kind=FollowUpKind.FEEDBACK,
            owner="department",
            due_date=due,
            description=f"向{unit.name}反馈考核结果",
        )
    ]
    # DOMAIN.md: team 一般/较差 -> rectification plan with a deadline, tracked to closure.
    if team_grade in (TeamGrade.AVERAGE, TeamGrade.POOR):
        out.append(
            FollowUpSpec(
                follow_up_id="rectification-team",
                kind=FollowUpKind.RECTIFICATION,
                owner=unit.contact or unit.unit_id,
                due_date=due,
                description="班子整改方案及整改落实",
            )
        )
    for cadre in unit.cadres:
        for kind, text in _CADRE_ACTIONS.get(cadre_grades.get(cadre.cadre_id), ()):  # type: ignore[arg-type]
            out.append(
                FollowUpSpec(
                    follow_up_id=f"{kind.value}-{cadre.cadre_id}",
                    kind=kind,
                    cadre_id=cadre.cadre_id,
                    owner="department",
                    due_date=due,
                    description=f"{cadre.name}: {text}",
                )
            )
    return out


def two_year_rule(
    cadre_id: str, grade: CadreGrade | None, previous_grades: dict[str, str]
) -> str | None:
    """DOMAIN.md: the same low grade two years in a row -> adjustment (调整)."""
    if grade in LOW_GRADES and previous_grades.get(cadre_id) == grade:
        return f"连续两年{grade.value}, 予以调整"  # type: ignore[union-attr]
    return None


# ---- 评定等次: grading rules -----------------------------------------------------------------
# One function per rule, each returning the violation (naming the rule and the cadre) or None;
# `proposal_violations` applies them all. Pure: the validator and the suggestion share them.

EXCELLENT = "优秀"
UNDETERMINED = "不确定等次"
COMPETENT_OR_BETTER = ("优秀", "称职")


def graded_headcount(unit: UnitSpec) -> int:
    """Cadres graded this year (not 不确定等次), as the roster says."""
    return sum(1 for c in unit.cadres if not c.ungraded_reason)


def graded_by_category(units: Sequence[UnitSpec]) -> dict[str, int]:
    """Graded cadres per category: what the pooled 优秀 quotas of a campaign count."""
    graded: dict[str, int] = {}
    for unit in units:
        graded[unit.category] = graded.get(unit.category, 0) + graded_headcount(unit)
    return graded


def excellent_quota(headcount: int, ratio: Fraction) -> int:
    """DOMAIN.md: quota = headcount × ratio, rounded down (default ratio 20%)."""
    return int(headcount * ratio)  # int() of a non-negative Fraction rounds down


def accountability_bar(cadre: CadreSpec, year: int, policy: GradingPolicy) -> str | None:
    """DOMAIN.md: accountability at 诫勉 level or above whose influence period overlaps the
    year bars 优秀."""
    floor = policy.accountability_bars_excellent_from.rank
    first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
    for a in cadre.accountabilities:
        if a.level.rank >= floor and a.start <= last and a.end >= first:
            return (
                f"{cadre.cadre_id}: not eligible for 优秀: {a.level.value} "
                f"({a.start}–{a.end}) overlaps {year}"
            )
    return None


def leave_bar(cadre: CadreSpec, policy: GradingPolicy) -> str | None:
    """DOMAIN.md: leave over 180 days in the year bars 优秀."""
    if cadre.leave_days > policy.max_leave_days:
        return (
            f"{cadre.cadre_id}: not eligible for 优秀: {cadre.leave_days} days of leave, "
            f"more than {policy.max_leave_days}"
        )
    return None


def negative_list_bar(cadre: CadreSpec) -> str | None:
    """DOMAIN.md: an entry on the negative list (负面清单) bars 优秀."""
    return (
        f"{cadre.cadre_id}: not eligible for 优秀: on the 负面清单" if cadre.negative_list else None
    )


def undetermined_rule(cadre: CadreSpec, grade: str) -> str | None:
    """DOMAIN.md: 不确定等次 for cadres not graded this year, and only for them."""
    if cadre.ungraded_reason and grade != UNDETERMINED:
        return (
            f"{cadre.cadre_id}: is not graded this year ({cadre.ungraded_reason}): {UNDETERMINED}"
        )
    if not cadre.ungraded_reason and grade == UNDETERMINED:
        return f"{cadre.cadre_id}: {UNDETERMINED} is only for a cadre not graded this year"
    return None


def incompetent_flag_rule(
    cadre_id: str, grade: str, flagged: set[str], determinations: dict[str, str]
) -> str | None:
    """DOMAIN.md: a cadre flagged 不称职 (不称职票率 over the threshold) cannot be proposed 称职
    or better without a written determination recorded by the group."""
    if cadre_id in flagged and grade in COMPETENT_OR_BETTER and not determinations.get(cadre_id):
        return (
            f"{cadre_id}: flagged by 不称职票率; proposing {grade} needs a written "
            "determination (determinations)"
        )
    return None


def quota_rule(unit: UnitSpec, grades: dict[str, str], policy: GradingPolicy) -> str | None:
    """DOMAIN.md: 优秀 at most ratio × the graded cadres of the category, rounded down."""
    graded = sum(1 for c in unit.cadres if grades.get(c.cadre_id) != UNDETERMINED)
    ratio = policy.ratio_for(unit.category)
    quota = excellent_quota(graded, ratio)
    excellent = sorted(c for c, g in grades.items() if g == EXCELLENT)
    if len(excellent) > quota:
        return (
            f"quota: {len(excellent)} 优秀 ({', '.join(excellent)}) exceed the quota of "
            f"{quota} ({graded} graded cadres × {ratio}, rounded down, category "
            f"{unit.category})"
        )
    return None


def proposal_violations(
    unit: UnitSpec,
    year: int,
    policy: GradingPolicy,
    grades: dict[str, str],
    flagged_incompetent: set[str],
    determinations: dict[str, str],
) -> list[str]:
    """Every rule a proposal of cadre grades breaks; [] if it may go to approval."""
    out: list[str] = []
    for cadre in unit.cadres:
        grade = grades.get(cadre.cadre_id)
        if grade is None:
            continue  # completeness is checked where the proposal is parsed
        found = [
            undetermined_rule(cadre, grade),
            incompetent_flag_rule(cadre.cadre_id, grade, flagged_incompetent, determinations),
        ]
        if grade == EXCELLENT:
            found += [
                accountability_bar(cadre, year, policy),
                leave_bar(cadre, policy),
                negative_list_bar(cadre),
            ]
        out += [v for v in found if v]
    # A pooled quota is the campaign's to check (cross-unit calibration).
    quota = quota_rule(unit, grades, policy) if policy.excellent_quota_scope == "unit" else None
    return out + ([quota] if quota else [])


def suggested_grade(
    by_group: dict[str, dict[str, int]], weights: dict[str, Fraction], policy: GradingPolicy
) -> tuple[str, Fraction] | None:
    """A grade suggested from a cadre's tallies (configurable method: weighted score bands).

    Each group's score is the mean points of its ballots (不了解 and unknown options not
    counted); groups are weighted, their weights rescaled over the groups that scored."""
    scores: dict[str, Fraction] = {}
    for group, counts in by_group.items():
        scored = {o: n for o, n in counts.items() if o in policy.points}
        total = sum(scored.values())
        if total and weights.get(group, 0) > 0:
            scores[group] = Fraction(sum(policy.points[o] * n for o, n in scored.items()), total)
    weight = sum((weights[g] for g in scores), Fraction(0))
    if not weight:
        return None
    score = sum((weights[g] * s for g, s in scores.items()), Fraction(0)) / weight
    for minimum, grade in policy.bands:
        if score >= minimum:
            return grade, score
    return policy.bands[-1][1], score
