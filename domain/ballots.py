"""Pure rules of a ballot sheet (民主测评/民主评议): what a valid sheet holds, and the rows
(marks) it becomes in PostgreSQL. Shared by the workflow's validator, the bulk import and the
storage activities, so every path accepts exactly the same sheets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from schemas.messages import BallotSheet
from schemas.policy import BallotPolicy
from schemas.roster import UnitSpec

OVERALL = "overall"
TEAM, CADRE, SELECTION, NEW_CADRE = "team", "cadre", "selection_work", "new_cadre"
# A mark: (kind, target_id or "", item, option). The team's target and the selection
# work's target are "" and the question respectively.
Mark = tuple[str, str, str, str]
_FIELD, _ROW = "\x1f", "\x1e"


def _check_items(
    where: str, items: dict[str, str], allowed: list[str], options: list[str], mandatory: bool
) -> list[str]:
    out = [f"{where}.{k}: not an item of this ballot" for k in items if k not in allowed]
    out += [
        f"{where}.{k}: {v!r} is not one of {options}"
        for k, v in items.items()
        if k in allowed and v not in options
    ]
    if mandatory:
        missing = [k for k in allowed if k not in items]
        if missing:
            out.append(f"{where}: missing mandatory item(s) {', '.join(missing)}")
    return out


def sheet_problems(
    sheet: BallotSheet, unit: UnitSpec, policy: BallotPolicy, where: str
) -> list[str]:
    """Every problem of one sheet, each naming its field; [] if the sheet is valid."""
    out: list[str] = []
    mandatory = policy.items_mandatory
    if sheet.team is None:
        out.append(f"{where}.team: the team ballot is missing")
    else:
        if sheet.team.overall not in policy.team_options:
            out.append(
                f"{where}.team.overall: {sheet.team.overall!r} is not one of {policy.team_options}"
            )
        team_items = list(dict.fromkeys(policy.team_dimensions + policy.focus_items))
        out += _check_items(
            f"{where}.team.items", sheet.team.items, team_items, policy.dimension_options, mandatory
        )

    rated: set[str] = set()
    for i, rating in enumerate(sheet.cadres):
        at = f"{where}.cadres[{i}]"
        cadre = unit.cadre(rating.cadre_id)
        if cadre is None:
            out.append(f"{at}.cadre_id: unknown cadre {rating.cadre_id!r}")
            continue
        if rating.cadre_id in rated:
            out.append(f"{at}.cadre_id: {rating.cadre_id!r} is rated twice on this sheet")
        rated.add(rating.cadre_id)
        if rating.overall not in policy.cadre_options:
            out.append(f"{at}.overall: {rating.overall!r} is not one of {policy.cadre_options}")
        items = policy.cadre_dimensions + (policy.principal_items if cadre.principal else [])
        out += _check_items(f"{at}.items", rating.items, items, policy.dimension_options, mandatory)
    missing = [c.cadre_id for c in unit.cadres if c.cadre_id not in rated]
    if missing:
        out.append(f"{where}.cadres: no ballot for {', '.join(missing)}")

    if unit.selection_review:
        if sheet.selection_work is None:
            out.append(f"{where}.selection_work: the selection-work ballot is missing")
        else:
            out += _check_items(
                f"{where}.selection_work",
                sheet.selection_work,
                policy.selection_questions,
                policy.selection_options,
                True,
            )
        promoted = {c.cadre_id for c in unit.cadres if c.newly_promoted}
        seen: set[str] = set()
        for i, rating in enumerate(sheet.new_cadres):
            at = f"{where}.new_cadres[{i}]"
            if rating.cadre_id not in promoted:
                out.append(f"{at}.cadre_id: {rating.cadre_id!r} is not a newly promoted cadre")
            elif rating.cadre_id in seen:
                out.append(f"{at}.cadre_id: {rating.cadre_id!r} is rated twice on this sheet")
            seen.add(rating.cadre_id)
            if rating.opinion not in policy.new_cadre_options:
                out.append(
                    f"{at}.opinion: {rating.opinion!r} is not one of {policy.new_cadre_options}"
                )
        if promoted - seen:
            out.append(f"{where}.new_cadres: no ballot for {', '.join(sorted(promoted - seen))}")
    elif sheet.selection_work is not None or sheet.new_cadres:
        out.append(f"{where}.selection_work: unit {unit.unit_id} has no 民主评议 this year")
    return out


def batch_problems(sheets: list[BallotSheet], unit: UnitSpec, policy: BallotPolicy) -> list[str]:
    out: list[str] = []
    tokens: set[str] = set()
    for i, sheet in enumerate(sheets):
        if sheet.token in tokens:
            out.append(f"sheets[{i}].token: used twice in this batch")
        tokens.add(sheet.token)
        out += sheet_problems(sheet, unit, policy, f"sheets[{i}]")
    return out


def sheet_marks(sheet: BallotSheet) -> list[Mark]:
    """The rows a sheet becomes, without its token (ballots are anonymous)."""
    marks: list[Mark] = []
    if sheet.team is not None:
        marks.append((TEAM, "", OVERALL, sheet.team.overall))
        marks += [(TEAM, "", k, v) for k, v in sheet.team.items.items()]
    for rating in sheet.cadres:
        marks.append((CADRE, rating.cadre_id, OVERALL, rating.overall))
        marks += [(CADRE, rating.cadre_id, k, v) for k, v in rating.items.items()]
    if sheet.selection_work is not None:
        marks += [(SELECTION, q, OVERALL, v) for q, v in sheet.selection_work.items()]
    marks += [(NEW_CADRE, r.cadre_id, OVERALL, r.opinion) for r in sheet.new_cadres]
    return marks


def marks_checksum(sheets: Iterable[list[Mark]]) -> str:
    """sha256 over the batch's marks, sheet by sheet: the bulk import and the workflow agree on
    a batch without the workflow ever holding the ballots."""
    digest = hashlib.sha256()
    for n, marks in enumerate(sheets):
        # One update per sheet, joined in C: the same bytes as `prefix + mark + _ROW` per mark.
        if marks:
            prefix = f"{n}{_FIELD}"
            joined = (_ROW + prefix).join(map(_FIELD.join, marks))
            digest.update(f"{prefix}{joined}{_ROW}".encode())
    return digest.hexdigest()
