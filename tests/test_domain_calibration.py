"""Cross-unit calibration as pure functions: no server."""

from __future__ import annotations

from fractions import Fraction

from domain import calibration as pool
from schemas.calibration import CalibrationEntry, CalibrationRequest


def _request(unit: str, excellent: int, category: str = "county") -> CalibrationRequest:
    return CalibrationRequest(
        unit_id=unit, category=category, proposal_no=1, excellent=excellent, graded=5
    )


def test_a_proposal_within_the_pool_is_cleared_and_one_beyond_it_held() -> None:
    entries: dict[str, CalibrationEntry] = {}
    # 10 graded × 20% = a pool of 2.
    entries["a"] = pool.judge(entries, _request("a", 2), graded=10, ratio=Fraction(1, 5))
    assert entries["a"].state == "cleared"
    entries["b"] = pool.judge(entries, _request("b", 1), graded=10, ratio=Fraction(1, 5))
    assert entries["b"].state == "held"
    assert "pooled quota of 2" in entries["b"].reason
    # The reason never says how many 优秀 a unit proposed.
    assert "1 优秀" not in entries["b"].reason
    assert pool.held(entries) == ["b"]
    assert pool.reserved(entries, "county") == 2


def test_a_units_new_proposal_replaces_its_own_reservation() -> None:
    entries = {"a": pool.judge({}, _request("a", 2), graded=10, ratio=Fraction(1, 5))}
    again = pool.judge(entries, _request("a", 2), graded=10, ratio=Fraction(1, 5))
    assert again.state == "cleared"  # its own earlier 2 do not count against it


def test_categories_have_pools_of_their_own() -> None:
    entries = {"a": pool.judge({}, _request("a", 2), graded=10, ratio=Fraction(1, 5))}
    other = pool.judge(entries, _request("c", 2, "city"), graded=10, ratio=Fraction(1, 5))
    assert other.state == "cleared"
    assert pool.reserved(entries, "city") == 0
    assert pool.held(entries, "city") == []
