"""Tally arithmetic and flags at their exact boundaries, and the policy's weight rule."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from domain.tally import participation_flags, tally_ballots, weighted_share
from kaohe.ingest.roster_io import load_policy
from schemas.policy import FlagPolicy, Policy, RaterGroup
from schemas.workflow_io import BallotCounts, OverallCount
from tests.helpers import sample_unit

ONE_GROUP = [RaterGroup(group_id="A", label="全体", planned=90, weight=Fraction(1))]


def cadre_counts(**options: int) -> BallotCounts:
    return BallotCounts(
        overall=[
            OverallCount(kind="cadre", target_id="c1", rater_group="A", option=o, n=n)
            for o, n in options.items()
        ],
        sheets_by_group={"A": sum(options.values())},
    )


def codes(counts: BallotCounts, groups: list[RaterGroup] = ONE_GROUP) -> set[str]:
    return {f.code for f in tally_ballots(counts, groups, FlagPolicy())[2]}


def test_incompetent_votes_flag_is_strictly_more_than_a_third() -> None:
    # 30 of 90 is exactly 1/3: not more than 1/3.
    assert "incompetent_votes" not in codes(cadre_counts(称职=60, 不称职=30))
    assert "incompetent_votes" in codes(cadre_counts(称职=59, 不称职=31))


def test_low_competence_flag_is_strictly_below_two_thirds() -> None:
    # 60 of 90 优秀+称职 is exactly 2/3: not below; 59 of 90 is.
    assert "low_competence" not in codes(cadre_counts(优秀=20, 称职=40, 基本称职=30))
    assert "low_competence" in codes(cadre_counts(优秀=20, 称职=39, 基本称职=31))


def test_new_cadre_disapproval_flag() -> None:
    def counts(disapprove: int) -> BallotCounts:
        return BallotCounts(
            overall=[
                OverallCount(
                    kind="new_cadre",
                    target_id="c2",
                    rater_group="A",
                    option="认同",
                    n=90 - disapprove,
                ),
                OverallCount(
                    kind="new_cadre", target_id="c2", rater_group="A", option="不认同", n=disapprove
                ),
            ],
            sheets_by_group={"A": 90},
        )

    assert "selection_review" not in codes(counts(30))
    assert "selection_review" in codes(counts(31))


def test_rates_count_dont_know_and_are_weighted_by_group() -> None:
    groups = [
        RaterGroup(group_id="A", label="班子", planned=10, weight=Fraction(2, 5)),
        RaterGroup(group_id="B", label="中层", planned=10, weight=Fraction(3, 5)),
    ]
    # A: 10 ballots, 5 优秀; B: 10 ballots, 2 优秀 and 5 不了解.
    counts = {"A": {"优秀": 5, "称职": 5}, "B": {"优秀": 2, "称职": 3, "不了解": 5}}
    weights = {g.group_id: g.weight for g in groups}
    assert weighted_share(counts, weights, ("优秀",)) == Fraction(2, 5) * Fraction(1, 2) + Fraction(
        3, 5
    ) * Fraction(1, 5)
    # A group with no ballots does not dilute the others: weights are rescaled.
    assert weighted_share({"A": {"优秀": 1, "称职": 1}}, weights, ("优秀",)) == Fraction(1, 2)


def test_min_participation_flag() -> None:
    tallied = tally_ballots(
        cadre_counts(称职=71),
        [RaterGroup(group_id="A", label="全体", planned=90, weight=Fraction(1))],
        FlagPolicy(),
    )
    participation = tallied[1]
    assert participation[0].returned == 71
    assert [f.code for f in participation_flags(participation, FlagPolicy())] == [
        "low_participation"
    ]  # 71/90 < 80%
    assert not participation_flags(
        [participation[0].model_copy(update={"returned": 72})], FlagPolicy()
    )  # 72/90 = 80%


def test_weights_must_sum_to_100_percent() -> None:
    with pytest.raises(ValidationError, match="weights must sum to 100%, they sum to 90%"):
        Policy(
            rater_groups=[
                RaterGroup(group_id="A", label="a", planned=1, weight="50%"),
                RaterGroup(group_id="B", label="b", planned=1, weight="40%"),
            ]
        )
    with pytest.raises(ValidationError, match="rater_groups: weights must sum to 100%"):
        sample_unit(
            rater_groups=[
                RaterGroup(group_id="A", label="a", planned=1, weight="1/3"),
                RaterGroup(group_id="B", label="b", planned=1, weight="1/3"),
            ]
        )
    thirds = [RaterGroup(group_id=g, label=g, planned=1, weight="1/3") for g in "ABC"]
    assert sample_unit(rater_groups=thirds).rater_groups == thirds


def test_shipped_policy_loads_and_round_trips() -> None:
    policy = load_policy(None, 2026)
    assert policy.flags.incompetent_more_than == Fraction(1, 3)
    assert policy.flags.min_participation == Fraction(4, 5)
    assert Policy.model_validate_json(policy.model_dump_json()) == policy
