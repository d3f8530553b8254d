"""Cross-unit calibration of a pooled 优秀 quota (DOMAIN.md: the share is per category;
quota = headcount × ratio, rounded down). Pure: the campaign workflow keeps the entries and
asks these functions what a new or held proposal comes to."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from domain.rules import excellent_quota
from schemas.calibration import CalibrationEntry, CalibrationRequest

# States of an entry whose 优秀 count against the category's pooled quota.
RESERVING = ("cleared", "allowed")


def reserved(entries: Mapping[str, CalibrationEntry], category: str, but: str | None = None) -> int:
    """优秀 the category's cleared and allowed proposals hold (but one unit's)."""
    return sum(
        e.request.excellent
        for unit_id, e in entries.items()
        if e.request.category == category and e.state in RESERVING and unit_id != but
    )


def held(entries: Mapping[str, CalibrationEntry], category: str | None = None) -> list[str]:
    """Units whose proposal is on hold (in one category), in the order they came."""
    return [
        unit_id
        for unit_id, e in entries.items()
        if e.state == "held" and (category is None or e.request.category == category)
    ]


def judge(
    entries: Mapping[str, CalibrationEntry],
    request: CalibrationRequest,
    graded: int,
    ratio: Fraction,
) -> CalibrationEntry:
    """A unit's new proposal against its category's pool (`graded` cadres × `ratio`): cleared
    if what the other units hold leaves room for it, otherwise held for the department.

    The reason goes to the unit's status, where the proposal is sealed: it names the pool,
    never how many 优秀 this or another unit proposed."""
    category, quota = request.category, excellent_quota(graded, ratio)
    taken = reserved(entries, category, but=request.unit_id)
    pool = f"pooled quota of {quota} 优秀 ({graded} graded cadres × {ratio}, rounded down)"
    if taken + request.excellent <= quota:
        reason = f"category {category}: within its {pool}"
        return CalibrationEntry(request=request, state="cleared", reason=reason)
    reason = f"category {category}: beyond its {pool}; the department decides"
    return CalibrationEntry(request=request, state="held", reason=reason)
