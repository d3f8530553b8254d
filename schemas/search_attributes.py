"""The Kaohe* search attributes: the department's filters in the Temporal UI and CLI."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CAMPAIGN = SearchAttributeKey.for_keyword("KaoheCampaign")
YEAR = SearchAttributeKey.for_int("KaoheYear")
UNIT = SearchAttributeKey.for_keyword("KaoheUnit")
STAGE = SearchAttributeKey.for_keyword("KaoheStage")
STALLED = SearchAttributeKey.for_bool("KaoheStalled")
ESCALATION = SearchAttributeKey.for_int("KaoheEscalation")
DEADLINE = SearchAttributeKey.for_datetime("KaoheDeadline")
TEAM_GRADE = SearchAttributeKey.for_keyword("KaoheTeamGrade")

ALL: tuple[SearchAttributeKey, ...] = (
    CAMPAIGN,
    YEAR,
    UNIT,
    STAGE,
    STALLED,
    ESCALATION,
    DEADLINE,
    TEAM_GRADE,
)

# Names of the types as the `temporal` CLI spells them (`--search-attribute Name=Type`).
CLI_TYPES: dict[str, str] = {
    "KaoheCampaign": "Keyword",
    "KaoheYear": "Int",
    "KaoheUnit": "Keyword",
    "KaoheStage": "Keyword",
    "KaoheStalled": "Bool",
    "KaoheEscalation": "Int",
    "KaoheDeadline": "Datetime",
    "KaoheTeamGrade": "Keyword",
}
