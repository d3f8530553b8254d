"""The roster a campaign starts from: units (leadership teams) and their cadres."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from schemas.common import AccountabilityLevel, Identifier, Model, ShortText
from schemas.policy import RaterGroup, check_weights


class Accountability(Model):
    """A 问责 whose influence period (影响期) runs from `start` to `end`."""

    level: AccountabilityLevel
    start: dt.date
    end: dt.date


class CadreSpec(Model):
    cadre_id: Identifier
    name: ShortText
    position: ShortText
    principal: bool = Field(default=False, description="主要负责人: rated on extra items.")
    newly_promoted: bool = Field(default=False, description="新提拔任用干部 this year.")
    accountabilities: list[Accountability] = Field(default_factory=list, max_length=50)
    leave_days: int = Field(default=0, ge=0, le=366, description="Days of leave this year.")
    negative_list: bool = Field(default=False, description="On the 负面清单 this year.")
    ungraded_reason: ShortText | None = Field(
        default=None, description="Not graded this year (e.g. newly appointed): 不确定等次."
    )


class UnitSpec(Model):
    unit_id: Identifier
    name: ShortText
    category: Identifier = Field(default="municipal", description="优秀 quotas are per category.")
    contact: ShortText | None = Field(default=None, description="Who acknowledges the notice.")
    cadres: Annotated[list[CadreSpec], Field(min_length=1, max_length=200)]
    planned_talks: int | None = Field(
        default=None, ge=1, le=1000, description="个别谈话 planned; default one per cadre."
    )
    talk_plan: dict[ShortText, Annotated[int, Field(ge=1, le=1000)]] | None = Field(
        default=None,
        description="个别谈话 planned per interviewee role, e.g. {班子成员: 5, 中层干部: 8}; "
        "talks complete when every role's count is met.",
    )
    rater_groups: list[RaterGroup] | None = Field(
        default=None, description="票类 with planned counts and weights; default from the policy."
    )
    selection_review: bool = Field(
        default=False,
        description="民主评议 in scope: the selection-work ballot and newly promoted cadres.",
    )

    @model_validator(mode="after")
    def _unique_cadres(self) -> UnitSpec:
        seen: set[str] = set()
        for cadre in self.cadres:
            if cadre.cadre_id in seen:
                raise ValueError(
                    f"cadre_id {cadre.cadre_id!r} appears twice in unit {self.unit_id}"
                )
            seen.add(cadre.cadre_id)
        if sum(c.principal for c in self.cadres) > 1:
            raise ValueError(f"unit {self.unit_id} has more than one principal leader")
        if self.rater_groups is not None:
            check_weights(self.rater_groups, "rater_groups")
        if self.talk_plan is not None and self.planned_talks is not None:
            raise ValueError("give talk_plan or planned_talks, not both")
        return self

    @property
    def talks_planned(self) -> int:
        if self.talk_plan is not None:
            return sum(self.talk_plan.values())
        return self.planned_talks or len(self.cadres)

    def cadre(self, cadre_id: str) -> CadreSpec | None:
        return next((c for c in self.cadres if c.cadre_id == cadre_id), None)


class Contact(Model):
    """Where a recipient's notifications go: a webhook (JSON, HMAC-signed), an email address,
    both, or neither (the structured log only)."""

    webhook: (
        Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)] | None
    ) = None
    email: (
        Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)] | None
    ) = None


class RosterHeader(Model):
    """What every unit of a roster shares: the roster without its units and contacts."""

    campaign_id: Identifier
    year: int = Field(ge=2000, le=2100)
    title: ShortText
    group_leader: ShortText = "assessment-group-leader"
    department: ShortText = "organization-department"
    assessment_group: ShortText = "assessment-group"
    approver: ShortText = "approver"


class Roster(Model):
    campaign_id: Identifier
    year: int = Field(ge=2000, le=2100)
    title: ShortText
    units: Annotated[list[UnitSpec], Field(min_length=1, max_length=10_000)]
    contacts: dict[ShortText, Contact] = Field(
        default_factory=dict,
        description="Recipients by id (unit contacts, the group leader, the department, "
        "cadres). When given, every unit's contact, group_leader, department, "
        "assessment_group and approver must be among them; recipients not listed (e.g. "
        "cadres) get the structured log only.",
    )
    group_leader: ShortText = Field(
        default="assessment-group-leader", description="Escalation level 1 goes here."
    )
    department: ShortText = Field(
        default="organization-department", description="Escalation level 2 goes here."
    )
    assessment_group: ShortText = Field(
        default="assessment-group", description="Reminders of the talks (and of proposals)."
    )
    approver: ShortText = Field(
        default="approver", description="Reminders while a proposal awaits approval."
    )

    @model_validator(mode="after")
    def _recipients_known(self) -> Roster:
        if not self.contacts:
            return self
        missing = [
            f"{field}: {name!r} is not in contacts"
            for field, name in (
                ("group_leader", self.group_leader),
                ("department", self.department),
                ("assessment_group", self.assessment_group),
                ("approver", self.approver),
            )
            if name not in self.contacts
        ]
        missing += [
            f"units[{i}].contact: {u.contact!r} is not in contacts"
            for i, u in enumerate(self.units)
            if (u.contact or u.unit_id) not in self.contacts
        ]
        if missing:
            raise ValueError("; ".join(missing))
        return self

    @model_validator(mode="after")
    def _unique_units(self) -> Roster:
        seen: set[str] = set()
        for unit in self.units:
            if unit.unit_id in seen:
                raise ValueError(f"unit_id {unit.unit_id!r} appears twice")
            seen.add(unit.unit_id)
        return self

    def header(self) -> RosterHeader:
        return RosterHeader(
            campaign_id=self.campaign_id,
            year=self.year,
            title=self.title,
            group_leader=self.group_leader,
            department=self.department,
            assessment_group=self.assessment_group,
            approver=self.approver,
        )

    def contacts_of(self, unit: UnitSpec) -> dict[str, Contact]:
        """The contacts a unit's notifications can go to (its contact, its cadres, the group
        leader, department, assessment group and approver): all a unit workflow needs."""
        recipients = [
            unit.contact or unit.unit_id,
            *(c.cadre_id for c in unit.cadres),
            self.group_leader,
            self.department,
            self.assessment_group,
            self.approver,
        ]
        return {r: self.contacts[r] for r in recipients if r in self.contacts}
