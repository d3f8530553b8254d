"""Cross-unit calibration of 优秀 (DOMAIN.md: the share is per category; quota = headcount ×
ratio, rounded down), for campaigns whose policy pools the quota over a category
(grading.excellent_quota_scope = "category").

A unit's proposal is sent to its campaign (counts only: the grades stay sealed); the campaign
clears it if the category's pooled quota still holds it, or puts it on hold until the
department decides (allow or return) with the campaign's `decide_calibration` update.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Action, Actor, Identifier, Model, Reason

Outcome = Literal["cleared", "held", "allowed", "returned"]


class CalibrationRequest(Model):
    """Signal `calibrate` from a unit to its campaign, at every proposal."""

    unit_id: str
    category: str
    proposal_no: int
    excellent: int = Field(ge=0, description="Cadres proposed 优秀.")
    graded: int = Field(ge=0, description="Cadres graded (not 不确定等次).")


class CalibrationResult(Model):
    """Signal `calibration_result` from the campaign to the unit."""

    proposal_no: int
    outcome: Outcome
    reason: str
    actor: Actor | None = None  # the department, for allowed / returned


class CalibrationEntry(Model):
    """The campaign's record of a unit's latest proposal."""

    request: CalibrationRequest
    state: Outcome
    reason: str


class DecideCalibration(Action):
    """The department's decision on a held proposal: allow it beyond the pooled quota, or
    return it to the unit's assessment group."""

    unit_id: Identifier
    decision: Literal["allow", "return"]
    reason: Reason


class CategoryCalibration(Model):
    category: str
    ratio: str
    graded: int  # graded cadres of the category's units (the roster, 不确定等次 excluded)
    quota: int
    reserved: int  # 优秀 of cleared and allowed proposals
    held: list[str] = Field(default_factory=list)  # unit ids on hold


class CalibrationView(Model):
    """A unit's calibration, in its status (no grade: counts stay with the campaign)."""

    proposal_no: int
    state: Literal["pending", "cleared", "held", "allowed", "returned", "unavailable"]
    reason: str = ""
