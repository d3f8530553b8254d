"""The grading rules (domain/rules.py), each at its boundary. Pure: no servers."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

from domain.rules import (
    accountability_bar,
    derive_follow_ups,
    excellent_quota,
    leave_bar,
    proposal_violations,
    suggested_grade,
)
from schemas.common import AccountabilityLevel, CadreGrade, TeamGrade
from schemas.policy import GradingPolicy
from schemas.roster import Accountability, CadreSpec
from schemas.status import Flag
from tests.helpers import sample_unit

POLICY = GradingPolicy()


def grades_with(unit, excellent: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.cadre_id: "优秀" if i < excellent else "称职" for i, c in enumerate(unit.cadres)}


def test_quota_is_rounded_down() -> None:
    assert excellent_quota(10, Fraction(1, 5)) == 2
    assert excellent_quota(14, Fraction(1, 5)) == 2
    assert excellent_quota(15, Fraction(1, 5)) == 3
    assert excellent_quota(4, Fraction(1, 5)) == 0


def test_ten_cadres_at_twenty_percent_allow_two_excellent() -> None:
    unit = sample_unit(cadres=10)
    assert proposal_violations(unit, 2026, POLICY, grades_with(unit, 2), set(), {}) == []
    [violation] = proposal_violations(unit, 2026, POLICY, grades_with(unit, 3), set(), {})
    assert violation.startswith("quota: 3 优秀") and "quota of 2" in violation
    assert "10 graded cadres × 1/5" in violation


def test_quota_per_category_and_undetermined_not_counted() -> None:
    unit = sample_unit(cadres=10, category="grassroots")
    policy = GradingPolicy(excellent_ratio_by_category={"grassroots": "30%"})
    assert proposal_violations(unit, 2026, policy, grades_with(unit, 3), set(), {}) == []
    unit.cadres[9].ungraded_reason = "2026年11月新任职"
    grades = grades_with(unit, 3) | {unit.cadres[9].cadre_id: "不确定等次"}
    [violation] = proposal_violations(unit, 2026, policy, grades, set(), {})
    assert "quota of 2 (9 graded cadres" in violation


def admonished(start: dt.date, end: dt.date) -> CadreSpec:
    """A cadre with one 诫勉 over the given period."""
    cadre = sample_unit(cadres=1).cadres[0]
    cadre.accountabilities = [
        Accountability(level=AccountabilityLevel.ADMONISHMENT, start=start, end=end)
    ]
    return cadre


def test_accountability_overlapping_the_year_bars_excellent() -> None:
    cadre = admonished(dt.date(2025, 7, 1), dt.date(2026, 1, 1))
    assert "诫勉" in (accountability_bar(cadre, 2026, POLICY) or "")  # overlaps by one day
    assert accountability_bar(cadre, 2027, POLICY) is None
    cadre.accountabilities[0].level = AccountabilityLevel.CRITICISM  # below 诫勉
    assert accountability_bar(cadre, 2026, POLICY) is None
    cadre.accountabilities[0].level = AccountabilityLevel.DISCIPLINARY
    assert accountability_bar(cadre, 2026, POLICY) is not None


def test_accountability_starting_on_the_last_day_of_the_year_bars_excellent() -> None:
    """The other edge: a period that starts on 12-31 overlaps the year; one that starts on
    the next 01-01 does not."""
    cadre = admonished(dt.date(2026, 12, 31), dt.date(2027, 6, 30))
    assert "(2026-12-31–2027-06-30) overlaps 2026" in (
        accountability_bar(cadre, 2026, POLICY) or ""
    )
    assert accountability_bar(cadre, 2025, POLICY) is None
    cadre.accountabilities[0].start = dt.date(2027, 1, 1)
    assert accountability_bar(cadre, 2026, POLICY) is None
    assert accountability_bar(cadre, 2027, POLICY) is not None


def test_leave_over_180_days_bars_excellent() -> None:
    cadre = sample_unit(cadres=1).cadres[0]
    cadre.leave_days = 180
    assert leave_bar(cadre, POLICY) is None
    cadre.leave_days = 181
    assert "181 days" in (leave_bar(cadre, POLICY) or "")


def test_an_ineligible_cadre_proposed_excellent_names_rule_and_cadre() -> None:
    unit = sample_unit(cadres=5)
    unit.cadres[0].negative_list = True
    violations = proposal_violations(unit, 2026, POLICY, grades_with(unit, 1), set(), {})
    assert violations == [f"{unit.cadres[0].cadre_id}: not eligible for 优秀: on the 负面清单"]


def test_undetermined_only_for_ungraded_cadres() -> None:
    unit = sample_unit(cadres=5)
    grades = grades_with(unit, 0)
    grades[unit.cadres[1].cadre_id] = "不确定等次"
    assert (
        "only for a cadre not graded"
        in proposal_violations(unit, 2026, POLICY, grades, set(), {})[0]
    )
    unit.cadres[2].ungraded_reason = "长期病假"
    violations = proposal_violations(unit, 2026, POLICY, grades, set(), {})
    assert any(v.startswith(f"{unit.cadres[2].cadre_id}: is not graded") for v in violations)


def test_flagged_incompetent_needs_a_written_determination() -> None:
    unit = sample_unit(cadres=5)
    flagged = {unit.cadres[3].cadre_id}
    grades = grades_with(unit, 0)
    [violation] = proposal_violations(unit, 2026, POLICY, grades, flagged, {})
    assert violation.startswith(unit.cadres[3].cadre_id) and "determination" in violation
    determined = {unit.cadres[3].cadre_id: "经核实, 不称职票系个别人员恶意投票"}
    assert proposal_violations(unit, 2026, POLICY, grades, flagged, determined) == []
    grades[unit.cadres[3].cadre_id] = "基本称职"  # not 称职 or better: no determination needed
    assert proposal_violations(unit, 2026, POLICY, grades, flagged, {}) == []


def test_suggested_grade_bands_are_weighted_by_group() -> None:
    weights = {"A": Fraction(2, 5), "B": Fraction(3, 5)}
    # A: all 优秀 (100); B: all 称职 (80) -> 0.4*100 + 0.6*80 = 88 -> 称职 (band 90 not reached)
    grade, score = suggested_grade({"A": {"优秀": 4}, "B": {"称职": 6}}, weights, POLICY) or ("", 0)
    assert (grade, score) == ("称职", 88)
    # 不了解 is not counted: B's score stays 80.
    assert suggested_grade({"A": {"优秀": 4}, "B": {"称职": 6, "不了解": 9}}, weights, POLICY) == (
        "称职",
        88,
    )
    assert suggested_grade({"A": {"优秀": 1}}, weights, POLICY) == ("优秀", 100)
    exactly_90 = {"A": {"优秀": 1, "称职": 1}}  # mean 90: the band's minimum is inclusive
    assert suggested_grade(exactly_90, weights, POLICY) == ("优秀", 90)
    assert suggested_grade({}, weights, POLICY) is None


def test_final_grades_map_to_their_follow_ups_once_with_owner_and_due_date() -> None:
    """DOMAIN.md 结果运用, the policy's defaults: every grade's and flag's actions, each once."""
    unit = sample_unit(cadres=5)
    ids = [c.cadre_id for c in unit.cadres]
    grades = dict(zip(ids, ["优秀", "称职", "基本称职", "不称职", "不确定等次"], strict=True))
    flag = Flag(code="selection_review", target_kind="new_cadre", target_id=ids[3], message="x")
    today = dt.date(2026, 12, 20)
    out = derive_follow_ups(
        unit,
        TeamGrade.AVERAGE,
        {k: CadreGrade(v) for k, v in grades.items()},
        today,
        previous_grades={ids[2]: "基本称职"},
        flags=[flag],
    )
    kinds = {(f.cadre_id, f.kind.value) for f in out}
    feedback = {(c, "feedback") for c in [None, *ids]}
    assert kinds == feedback | {
        (None, "rectification"),  # team 一般
        (ids[0], "incentive"),
        (ids[0], "candidate_pool"),
        (ids[2], "admonishing_talk"),
        (ids[2], "training"),
        (ids[2], "adjustment"),  # 基本称职 last year too
        (ids[3], "removal_proposal"),
        (ids[3], "accountability"),
        (ids[3], "selection_review"),
    }
    assert len(out) == len({f.follow_up_id for f in out}) == len(kinds)
    by_id = {f.follow_up_id: f for f in out}
    assert by_id["rectification-team"].owner == (unit.contact or unit.unit_id)
    assert by_id[f"feedback-{ids[1]}"].owner == ids[1]  # the cadre signs for it
    assert by_id[f"removal_proposal-{ids[3]}"].owner == "department"
    assert {f.due_date for f in out} == {today + dt.timedelta(days=30)}
    # A good team calls for no rectification; the same grades again, the same ids.
    again = derive_follow_ups(
        unit, TeamGrade.GOOD, {k: CadreGrade(v) for k, v in grades.items()}, today, {}
    )
    assert "rectification-team" not in {f.follow_up_id for f in again}
    assert {f.follow_up_id for f in again} < set(by_id)
