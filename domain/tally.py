"""Pure arithmetic of the tallies: rates per target weighted by rater group, and the flags the
policy raises. Counts come from SQL (`count_ballots`); everything here is exact (Fraction),
so a boundary such as 30 of 90 不称职 (exactly 1/3, not more) is decided without rounding.
"""

from __future__ import annotations

from fractions import Fraction

from domain.ballots import CADRE, NEW_CADRE, SELECTION, TEAM
from schemas.policy import FlagPolicy, RaterGroup
from schemas.status import Flag, GroupParticipation, TargetTally
from schemas.workflow_io import BallotCounts

Counts = dict[str, dict[str, int]]  # rater group -> option -> ballots


def weighted_share(
    counts: Counts, weights: dict[str, Fraction], options: tuple[str, ...]
) -> Fraction:
    """Σ_g w_g · n_g(options) / n_g, over the groups that returned ballots, their weights
    rescaled to sum to 1 (a group with no ballots cannot speak for the others).

    Rates count every returned ballot, 不了解 included (DOMAIN.md)."""
    present = {g: c for g, c in counts.items() if sum(c.values()) and weights.get(g, 0) > 0}
    total_weight = sum((weights[g] for g in present), Fraction(0))
    if not total_weight:
        return Fraction(0)
    share = Fraction(0)
    for group, c in present.items():
        share += weights[group] * Fraction(sum(c.get(o, 0) for o in options), sum(c.values()))
    return share / total_weight


def _target_tally(
    kind: str, target: str, counts: Counts, weights: dict[str, Fraction]
) -> TargetTally:
    merged: dict[str, int] = {}
    for c in counts.values():
        for option, n in c.items():
            merged[option] = merged.get(option, 0) + n

    def rate(*options: str) -> float:
        return float(weighted_share(counts, weights, options))

    tally = TargetTally(
        target_kind=kind,
        target_id=target or None,
        ballots=sum(merged.values()),
        counts=merged,
        by_group={g: dict(c) for g, c in sorted(counts.items())},
    )
    if kind == CADRE:
        tally.excellent_rate = rate("优秀")
        tally.competent_or_better_rate = rate("优秀", "称职")
        tally.incompetent_rate = rate("不称职")
    elif kind in (TEAM, SELECTION):
        tally.good_rate = rate("好", "较好")
    elif kind == NEW_CADRE:
        tally.approval_rate = rate("认同", "基本认同")
        tally.disapproval_rate = rate("不认同")
    return tally


def tally_ballots(
    counts: BallotCounts, groups: list[RaterGroup], flags: FlagPolicy
) -> tuple[list[TargetTally], list[GroupParticipation], list[Flag]]:
    weights = {g.group_id: g.weight for g in groups}
    by_target: dict[tuple[str, str], Counts] = {}
    for row in counts.overall:
        group = by_target.setdefault((row.kind, row.target_id), {}).setdefault(row.rater_group, {})
        group[row.option] = group.get(row.option, 0) + row.n
    order = {TEAM: 0, CADRE: 1, SELECTION: 2, NEW_CADRE: 3}
    tallies = [
        _target_tally(kind, target, c, weights)
        for (kind, target), c in sorted(
            by_target.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        )
    ]
    raised: list[Flag] = []
    for (kind, target), c in by_target.items():
        raised += target_flags(kind, target, c, weights, flags)
    participation = group_participation(groups, counts.sheets_by_group)
    raised += participation_flags(participation, flags)
    return tallies, participation, raised


def target_flags(
    kind: str, target: str, counts: Counts, weights: dict[str, Fraction], policy: FlagPolicy
) -> list[Flag]:
    out: list[Flag] = []

    def flag(code: str, message: str) -> None:
        out.append(Flag(code=code, target_kind=kind, target_id=target, message=message))

    if kind == CADRE:
        # DOMAIN.md: 不称职票率 more than 1/3 -> organizational determination of 不称职.
        incompetent = weighted_share(counts, weights, ("不称职",))
        if incompetent > policy.incompetent_more_than:
            flag(
                "incompetent_votes",
                f"不称职票率 {float(incompetent):.1%} is more than {policy.incompetent_more_than}",
            )
        # DOMAIN.md: 优秀率 + 称职率 below 2/3 -> 诫勉谈话 or adjustment review.
        competent = weighted_share(counts, weights, ("优秀", "称职"))
        if competent < policy.competent_or_better_below:
            flag(
                "low_competence",
                f"优秀+称职 {float(competent):.1%} is below {policy.competent_or_better_below}",
            )
    elif kind == NEW_CADRE:
        # DOMAIN.md: newly promoted cadre with 不认同 more than 1/3 -> the selection is reviewed.
        disapproval = weighted_share(counts, weights, ("不认同",))
        if disapproval > policy.new_cadre_disapproval_more_than:
            flag(
                "selection_review",
                f"不认同 {float(disapproval):.1%} is more than "
                f"{policy.new_cadre_disapproval_more_than}",
            )
    return out


def group_participation(
    groups: list[RaterGroup], sheets_by_group: dict[str, int]
) -> list[GroupParticipation]:
    return [
        GroupParticipation(
            group_id=g.group_id,
            label=g.label,
            planned=g.planned,
            returned=sheets_by_group.get(g.group_id, 0),
            weight=float(g.weight),
        )
        for g in groups
    ]


def participation_flags(groups: list[GroupParticipation], policy: FlagPolicy) -> list[Flag]:
    """Below the minimum participation a unit is flagged, not silently passed."""
    return [
        Flag(
            code="low_participation",
            target_kind="group",
            target_id=g.group_id,
            message=f"group {g.group_id} returned {g.returned} of {g.planned} planned, "
            f"below {policy.min_participation}",
        )
        for g in groups
        if Fraction(g.returned, g.planned) < policy.min_participation
    ]


def groups_complete(groups: list[RaterGroup], sheets_by_group: dict[str, int]) -> bool:
    """Every rater group has returned its planned number of sheets."""
    return all(sheets_by_group.get(g.group_id, 0) >= g.planned for g in groups)
