"""Rosters as tables: an XLSX workbook, or a folder of CSV files, one sheet per table.

Organization departments keep rosters in spreadsheets. The sheets (a CSV folder has one
`<sheet>.csv` per sheet) and their columns:

| sheet            | columns (* required)                                                   |
|------------------|------------------------------------------------------------------------|
| campaign         | campaign_id*, year*, title*, group_leader, department,                 |
|                  | assessment_group, approver (one row)                                   |
| units            | unit_id*, name*, category, contact, planned_talks, selection_review    |
| cadres           | unit_id*, cadre_id*, name*, position*, principal, newly_promoted,      |
|                  | leave_days, negative_list, ungraded_reason                             |
| rater_groups     | unit_id*, group_id*, label*, planned*, weight* (optional sheet)        |
| talk_plan        | unit_id*, role*, count* (optional sheet)                               |
| accountabilities | unit_id*, cadre_id*, level*, start*, end* (optional sheet)             |
| contacts         | recipient*, webhook, email (optional sheet)                            |

Empty cells take the default. Yes/no cells take 是/否, yes/no, true/false, 1/0. The tables are
assembled into the same `Roster` a YAML file gives and validated by the same model; every
problem is reported at its sheet, row and column, so a spreadsheet's author finds it.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kaohe.ingest.cells import csv_text, from_csv_text
from schemas.roster import Roster

SHEETS: dict[str, tuple[list[str], list[str]]] = {  # sheet -> (required, optional) columns
    "campaign": (
        ["campaign_id", "year", "title"],
        ["group_leader", "department", "assessment_group", "approver"],
    ),
    "units": (
        ["unit_id", "name"],
        ["category", "contact", "planned_talks", "selection_review"],
    ),
    "cadres": (
        ["unit_id", "cadre_id", "name", "position"],
        ["principal", "newly_promoted", "leave_days", "negative_list", "ungraded_reason"],
    ),
    "rater_groups": (["unit_id", "group_id", "label", "planned", "weight"], []),
    "talk_plan": (["unit_id", "role", "count"], []),
    "accountabilities": (["unit_id", "cadre_id", "level", "start", "end"], []),
    "contacts": (["recipient"], ["webhook", "email"]),
}
REQUIRED_SHEETS = ("campaign", "units", "cadres")
BOOLEAN_COLUMNS = {"principal", "newly_promoted", "negative_list", "selection_review"}
_YES = {"是", "yes", "y", "true", "1"}
_NO = {"否", "no", "n", "false", "0"}
TABLE_SUFFIXES = (".xlsx", ".csv")

Progress = Callable[[int], None]  # rows read so far


@dataclass(frozen=True, order=True)
class CellProblem:
    sheet: str
    row: int  # 0: the sheet as a whole
    column: str  # "": the row as a whole
    message: str
    # A sheet or column missing: the rows' problems would only echo it.
    structural: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        where = self.sheet
        if self.row:
            where += f", row {self.row}"
        if self.column:
            where += f", column {self.column}"
        return f"{where}: {self.message}"


class RosterTableError(Exception):
    def __init__(self, source: str, problems: list[CellProblem]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = sorted(problems)


Row = tuple[int, dict[str, Any]]  # (row number in its sheet, column -> cell value)


def _cell(column: str, value: Any) -> Any:
    """A cell as the model takes it: None for empty, booleans and dates as such."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if column in BOOLEAN_COLUMNS and value.lower() in _YES | _NO:
            return value.lower() in _YES
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, float) and value.is_integer() and column != "weight":
        return int(value)
    return value


def _rows(
    sheet: str,
    records: Iterator[tuple[Any, ...]],
    problems: list[CellProblem],
    tick: Callable[[], None],
) -> list[Row]:
    header = next(records, None)
    if header is None:
        problems.append(CellProblem(sheet, 0, "", "the sheet is empty (no header row)", True))
        return []
    names = [str(h).strip() if h is not None else "" for h in header]
    required, optional = SHEETS[sheet]
    known = set(required) | set(optional)
    for name in names:
        if name and name not in known:
            problems.append(
                CellProblem(
                    sheet, 1, name, f"unknown column; expected {', '.join(required + optional)}"
                )
            )
    missing = [c for c in required if c not in names]
    for name in missing:
        problems.append(CellProblem(sheet, 1, name, "required column missing", True))
    if missing:
        return []
    out = []
    for n, record in enumerate(records, start=2):
        cells = {
            name: _cell(name, value)
            for name, value in zip(names, record, strict=False)
            if name in known
        }
        if n % 1000 == 0:
            tick()
        if all(v is None for v in cells.values()):
            continue  # blank rows, as spreadsheets leave them
        out.append((n, cells))
    return out


def _xlsx_sheets(path: Path) -> Iterator[tuple[str, Iterator[tuple[Any, ...]]]]:
    import openpyxl  # only for workbooks

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        for ws in book.worksheets:
            yield ws.title.strip(), ws.iter_rows(values_only=True)
    finally:
        book.close()


def _csv_sheets(folder: Path) -> Iterator[tuple[str, Iterator[tuple[Any, ...]]]]:
    for file in sorted(folder.glob("*.csv")):
        with file.open(encoding="utf-8-sig", newline="") as f:
            yield file.stem, (tuple(from_csv_text(v) for v in r) for r in csv.reader(f))


def read_tables(
    path: Path, on_rows: Progress | None = None
) -> tuple[dict[str, list[Row]], list[CellProblem]]:
    """The known sheets of a workbook or CSV folder (a CSV file stands for its folder)."""
    problems: list[CellProblem] = []
    if path.suffix.lower() == ".xlsx":
        sheets = _xlsx_sheets(path)
    else:
        sheets = _csv_sheets(path if path.is_dir() else path.parent)
    tables: dict[str, list[Row]] = {}
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1000
        if on_rows is not None:
            on_rows(done)

    try:
        for name, records in sheets:
            if name not in SHEETS:
                continue  # notes, instructions: a workbook may carry more
            tables[name] = _rows(name, records, problems, tick)
    except UnicodeDecodeError:
        problems.append(CellProblem(path.name, 0, "", "not UTF-8 text (save as CSV UTF-8)"))
    for name in REQUIRED_SHEETS:
        if name not in tables and not any(p.sheet == name for p in problems):
            problems.append(CellProblem(name, 0, "", "required sheet missing", True))
    return tables, problems


@dataclass
class _Where:
    """Where each part of the assembled roster came from, to put errors back on cells."""

    campaign: int = 0  # the campaign row
    units: dict[int, int] = field(default_factory=dict)  # unit index -> its row
    cadres: dict[tuple[int, int], int] = field(default_factory=dict)  # (unit, cadre) -> row
    groups: dict[tuple[int, int], int] = field(default_factory=dict)
    talks: dict[tuple[int, str], int] = field(default_factory=dict)
    accountabilities: dict[tuple[int, int, int], int] = field(default_factory=dict)
    contacts: dict[str, int] = field(default_factory=dict)

    def locate(self, loc: tuple[int | str, ...], message: str) -> CellProblem:
        head = loc[0] if loc else ""
        if head == "units" and len(loc) > 1 and isinstance(loc[1], int):
            i, rest = loc[1], loc[2:]
            unit_row = self.units.get(i, 0)
            if rest[:1] == ("cadres",) and len(rest) > 1 and isinstance(rest[1], int):
                j, tail = rest[1], rest[2:]
                if tail[:1] == ("accountabilities",) and len(tail) > 1:
                    k = int(tail[1])
                    row = self.accountabilities.get((i, j, k), 0)
                    return CellProblem("accountabilities", row, _col(tail[2:]), message)
                row = self.cadres.get((i, j), 0)
                return CellProblem("cadres", row, _col(tail), message)
            if rest[:1] == ("rater_groups",) and len(rest) > 1 and isinstance(rest[1], int):
                row = self.groups.get((i, rest[1]), 0)
                return CellProblem("rater_groups", row, _col(rest[2:]), message)
            if rest[:1] == ("talk_plan",) and len(rest) > 1:
                row = self.talks.get((i, str(rest[1])), 0)
                return CellProblem("talk_plan", row, "count", message)
            if rest[:1] == ("cadres",):
                return CellProblem("units", unit_row, "", f"cadres: {message}")
            return CellProblem("units", unit_row, _col(rest), message)
        if head == "contacts" and len(loc) > 1:
            row = self.contacts.get(str(loc[1]), 0)
            return CellProblem("contacts", row, _col(loc[2:]), message)
        if head == "units":
            return CellProblem("units", 0, "", message)
        return CellProblem("campaign", self.campaign, _col(loc), message)


def _col(loc: tuple[int | str, ...]) -> str:
    return str(loc[0]) if loc and isinstance(loc[0], str) else ""


def _assemble(
    tables: dict[str, list[Row]], problems: list[CellProblem]
) -> tuple[dict[str, Any], _Where]:
    where = _Where()
    campaign = tables.get("campaign", [])
    if len(campaign) > 1:
        problems.append(CellProblem("campaign", campaign[1][0], "", "one campaign row only"))
    data: dict[str, Any] = {}
    if campaign:
        where.campaign, cells = campaign[0]
        data = {k: v for k, v in cells.items() if v is not None}

    units: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for row, cells in tables.get("units", []):
        unit = {k: v for k, v in cells.items() if v is not None}
        unit["cadres"] = []
        uid = str(cells.get("unit_id") or "")
        if uid in index:
            problems.append(CellProblem("units", row, "unit_id", f"unit {uid!r} appears twice"))
            continue
        index[uid] = len(units)
        where.units[len(units)] = row
        units.append(unit)

    def unit_of(sheet: str, row: int, cells: dict[str, Any]) -> int | None:
        uid = str(cells.get("unit_id") or "")
        i = index.get(uid)
        if i is None:
            problems.append(
                CellProblem(sheet, row, "unit_id", f"unit {uid!r} is not in the units sheet")
            )
        return i

    cadre_index: dict[tuple[int, str], int] = {}
    for row, cells in tables.get("cadres", []):
        i = unit_of("cadres", row, cells)
        if i is None:
            continue
        cadre = {k: v for k, v in cells.items() if v is not None and k != "unit_id"}
        j = len(units[i]["cadres"])
        cadre_index[(i, str(cells.get("cadre_id") or ""))] = j
        where.cadres[(i, j)] = row
        units[i]["cadres"].append(cadre)
    for row, cells in tables.get("rater_groups", []):
        i = unit_of("rater_groups", row, cells)
        if i is not None:
            groups = units[i].setdefault("rater_groups", [])
            where.groups[(i, len(groups))] = row
            groups.append({k: v for k, v in cells.items() if k != "unit_id"})
    for row, cells in tables.get("talk_plan", []):
        i = unit_of("talk_plan", row, cells)
        if i is not None:
            role = str(cells.get("role") or "")
            plan = units[i].setdefault("talk_plan", {})
            if role in plan:
                problems.append(
                    CellProblem("talk_plan", row, "role", f"role {role!r} appears twice")
                )
            where.talks[(i, role)] = row
            plan[role] = cells.get("count")
    for row, cells in tables.get("accountabilities", []):
        i = unit_of("accountabilities", row, cells)
        if i is None:
            continue
        cid = str(cells.get("cadre_id") or "")
        j = cadre_index.get((i, cid))
        if j is None:
            problems.append(
                CellProblem(
                    "accountabilities", row, "cadre_id", f"cadre {cid!r} is not in unit's cadres"
                )
            )
            continue
        found = units[i]["cadres"][j].setdefault("accountabilities", [])
        where.accountabilities[(i, j, len(found))] = row
        found.append({k: cells.get(k) for k in ("level", "start", "end")})
    contacts: dict[str, Any] = {}
    for row, cells in tables.get("contacts", []):
        rid = str(cells.get("recipient") or "")
        where.contacts[rid] = row
        contacts[rid] = {k: v for k, v in cells.items() if v is not None and k != "recipient"}
    data["units"] = units
    if contacts:
        data["contacts"] = contacts
    return data, where


def load_roster_tables(path: Path, on_rows: Progress | None = None) -> Roster:
    """A roster from a workbook or CSV folder; raises RosterTableError with every problem."""
    tables, problems = read_tables(path, on_rows)
    if any(p.structural for p in problems):
        raise RosterTableError(str(path), problems)
    data, where = _assemble(tables, problems)
    try:
        roster = Roster.model_validate(data)
    except ValidationError as err:
        for e in err.errors(include_input=False):
            problems.append(where.locate(tuple(e["loc"]), e["msg"]))
        roster = None
    if problems or roster is None:
        raise RosterTableError(str(path), problems)
    return roster


def count_rows(path: Path) -> int | None:
    """Rows in a workbook's sheets (from their dimensions), for a progress bar's total."""
    if path.suffix.lower() != ".xlsx":
        return None
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return sum(max(ws.max_row or 1, 1) - 1 for ws in book.worksheets if ws.title in SHEETS)
    finally:
        book.close()


def write_roster_tables(roster: Roster, path: Path) -> None:
    """A roster as a workbook (`.xlsx`) or a CSV folder: the inverse of load_roster_tables."""
    tables: dict[str, list[list[Any]]] = defaultdict(list)
    tables["campaign"].append(
        [
            roster.campaign_id,
            roster.year,
            roster.title,
            roster.group_leader,
            roster.department,
            roster.assessment_group,
            roster.approver,
        ]
    )
    for u in roster.units:
        tables["units"].append(
            [u.unit_id, u.name, u.category, u.contact, u.planned_talks, u.selection_review]
        )
        for c in u.cadres:
            tables["cadres"].append(
                [
                    u.unit_id,
                    c.cadre_id,
                    c.name,
                    c.position,
                    c.principal,
                    c.newly_promoted,
                    c.leave_days,
                    c.negative_list,
                    c.ungraded_reason,
                ]
            )
            for a in c.accountabilities:
                tables["accountabilities"].append(
                    [u.unit_id, c.cadre_id, a.level.value, a.start, a.end]
                )
        for g in u.rater_groups or []:
            weight = f"{g.weight.numerator}/{g.weight.denominator}"
            tables["rater_groups"].append([u.unit_id, g.group_id, g.label, g.planned, weight])
        for role, count in (u.talk_plan or {}).items():
            tables["talk_plan"].append([u.unit_id, role, count])
    for rid, contact in roster.contacts.items():
        tables["contacts"].append([rid, contact.webhook, contact.email])
    headers = {name: required + optional for name, (required, optional) in SHEETS.items()}
    if path.suffix.lower() == ".xlsx":
        import openpyxl

        book = openpyxl.Workbook(write_only=True)
        for name, header in headers.items():
            ws = book.create_sheet(name)
            ws.append(header)
            for row in tables[name]:
                ws.append([_xlsx_cell(ws, v) for v in row])
        book.save(path)
        return
    path.mkdir(parents=True, exist_ok=True)
    for name, header in headers.items():
        with (path / f"{name}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(
                ["" if v is None else csv_text(v) for v in row] for row in tables[name]
            )


def _xlsx_cell(ws: Any, value: Any) -> Any:
    """Text as a string cell: openpyxl would otherwise store `=...` as a formula."""
    from openpyxl.cell import WriteOnlyCell

    if not isinstance(value, str):
        return value
    cell = WriteOnlyCell(ws, value=value)
    cell.data_type = "s"
    return cell
