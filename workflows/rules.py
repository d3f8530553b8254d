"""Pure rules of result use (结果运用): which follow-ups the final grades call for.

Defaults from DOMAIN.md ("Result use defaults", local practice); issue 5 moves them into
the yearly policy file.
"""

from __future__ import annotations

import datetime as dt

from schemas.common import CadreGrade, TeamGrade
from schemas.messages import FollowUpKind
from schemas.roster import UnitSpec
from schemas.workflow_io import FollowUpSpec

FOLLOW_UP_DAYS = 30

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
) -> list[FollowUpSpec]:
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
