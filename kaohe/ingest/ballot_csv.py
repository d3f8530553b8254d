"""The bulk ballot CSV: one row per mark, `sheet,token,kind,target_id,item,option`.

Rows of a sheet are consecutive and share `sheet` (any label) and `token`. A row is a mark
as `domain.ballots.sheet_marks` makes it, values taken as they are (no trimming):

| kind             | target_id      | item                      | option                      |
|------------------|----------------|---------------------------|-----------------------------|
| `team`           | empty          | `overall` or a dimension  | 好/较好/一般/较差           |
| `cadre`          | the cadre id   | `overall` or a dimension  | 优秀/称职/…/不了解, 好/…    |
| `selection_work` | the question   | `overall`                 | 好/较好/一般/差             |
| `new_cadre`      | the cadre id   | `overall`                 | 认同/基本认同/不认同/不了解 |

(a `selection_work` row may also give the question as `item` with an empty `target_id`).

Every sheet is checked as kaohe's API checks it (kaohe/ballot_intake.py): built into a
BallotSheet and checked with `domain.ballots.batch_problems`, every problem reported with its
CSV line.
A fast path spares that for sheets in the standard layout (the marks in exactly the order
`sheet_marks` gives them, as `kaohe` writes them): their rows only need each option to be
one the policy allows for that mark. The layout and its allowed options are derived from a
prototype sheet and checked against `batch_problems` option by option when the reader is
made (a sheet's validity depends on which marks it has and on each mark's own option; no
rule relates two options), and if any check disagrees every sheet takes the full path.

The reader streams: it yields sheet after sheet, so the import can COPY while it reads.
`read_standard` is the import's first try: a file whose every sheet is in the standard layout
is checked column-wise (C-level zips and comparisons per sheet, no line tracking); anything
else raises NotStandard and the file is read again with `read`, which names each line.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from domain.ballots import (
    CADRE,
    NEW_CADRE,
    OVERALL,
    SELECTION,
    TEAM,
    batch_problems,
    sheet_marks,
)
from schemas.errors import error_lines
from schemas.limits import text_problem
from schemas.messages import BallotSheet, CadreRating, NewCadreRating, TeamRating, Token
from schemas.policy import BallotPolicy
from schemas.roster import UnitSpec

COLUMNS = ("sheet", "token", "kind", "target_id", "item", "option")


def cell_problem(row: list[str]) -> str | None:
    """The first cell no field may hold (a NUL, text over the limit), named by its column."""
    for name, cell in zip(COLUMNS, row, strict=False):
        problem = text_problem(cell)
        if problem is not None:
            return f"{name}: {problem}"
    return None


KINDS = (TEAM, CADRE, SELECTION, NEW_CADRE)
LINE = 6  # rows are read as [sheet, token, kind, target_id, item, option, line]
_SHEET_REF = re.compile(r"sheets\[(\d+)\]")
_INDEXED = re.compile(r"^(cadres|new_cadres)\[(\d+)\]$")
_TOKEN = TypeAdapter(Token)
# read_standard's text: a cell without quoting, the header line, how much it reads at once
# and the most a sheet in the standard layout could take (beyond it, the full path reads).
_CELL = '[^,"\r\n]*'
_NEEDS_QUOTES = re.compile('[,"\r\n]')
_HEADER = re.compile(re.escape(",".join(COLUMNS)) + "\r?\n")
_CHUNK = 1 << 22
_MAX_SHEET_CHARS = 1 << 24

Key = tuple[str, str, str]  # (kind, target_id, item)
Row = list[Any]
Layout = list[tuple[str, str, str, frozenset[str]]]


@dataclass(order=True)
class Problem:
    line: int  # 0: not tied to a line
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(slots=True)
class ReadSheet:
    """A valid sheet: its rows hold its marks (fields 2..5) in `sheet_marks` order."""

    label: str
    line: int
    token: str
    ballots: int
    rows: list[Row]


class MarksDigest:
    """`domain.ballots.marks_checksum`, fed sheet by sheet from rows (marks at 2..5):
    the same bytes, so the same hex digest (tests/test_ballots_storage.py checks it)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._n = 0

    def add(self, rows: list[Row]) -> None:
        prefix = f"{self._n}\x1f"
        self._digest.update(
            "".join([f"{prefix}{r[2]}\x1f{r[3]}\x1f{r[4]}\x1f{r[5]}\x1e" for r in rows]).encode()
        )
        self._n += 1

    def add_standard(self, heads: list[str], options: tuple[str, ...]) -> None:
        """`add` for a sheet in the standard layout: `heads` are its marks' `kind\x1ftarget\x1f
        item\x1f`, `options` the options in their order (joined in C, not row by row)."""
        prefix = f"{self._n}\x1f"
        joined = f"\x1e{prefix}".join(map(operator.add, heads, options))
        self._digest.update(f"{prefix}{joined}\x1e".encode())
        self._n += 1

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class NotStandard(Exception):
    """The file is not standard throughout (or has a problem): read it with `read`."""


@dataclass(slots=True)
class StandardSheet:
    """A valid sheet in the standard layout: its options in `layout` order."""

    label: str
    token: str
    options: tuple[str, ...]


@dataclass
class _Sheet:
    """The marks of one sheet on the full path: (kind, target, item) -> (line, option)."""

    label: str
    token: str
    line: int
    marks: dict[Key, tuple[int, str]] = field(default_factory=dict)

    def payload(self) -> tuple[dict[str, Any], list[Problem]]:
        team: dict[str, Any] | None = None
        cadres: dict[str, dict[str, Any]] = {}
        selection: dict[str, str] | None = None
        new_cadres: list[dict[str, str]] = []
        for (kind, target, item), (_, option) in self.marks.items():
            if kind == TEAM:
                team = team or {"items": {}}
                if item == OVERALL:
                    team["overall"] = option
                else:
                    team["items"][item] = option
            elif kind == CADRE:
                rating = cadres.setdefault(target, {"cadre_id": target, "items": {}})
                if item == OVERALL:
                    rating["overall"] = option
                else:
                    rating["items"][item] = option
            elif kind == SELECTION:
                selection = selection or {}
                selection[target] = option
            else:
                new_cadres.append({"cadre_id": target, "opinion": option})
        problems = []
        if team is not None and "overall" not in team:
            problems.append(self._problem(self.line_of_kind(TEAM), "team: no overall row"))
        for cadre_id, rating in cadres.items():
            if "overall" not in rating:
                line = self.line_of_kind(CADRE, cadre_id)
                problems.append(self._problem(line, f"cadre {cadre_id}: no overall row"))
        data = {
            "token": self.token,
            "team": team,
            "cadres": list(cadres.values()),
            "selection_work": selection,
            "new_cadres": new_cadres,
        }
        return data, problems

    def _problem(self, line: int, message: str) -> Problem:
        return Problem(line, f"sheet {self.label}: {message}")

    def line_of_kind(self, kind: str, target: str | None = None) -> int:
        for (k, t, _), (line, _) in self.marks.items():
            if k == kind and (target is None or t == target):
                return line
        return self.line

    def line_of(self, path: str, cadres: list[str], new_cadres: list[str]) -> int:
        """The line of a problem's path, e.g. `cadres[1].items.德` or `team.overall`, given
        the cadre ids in the order of the sheet's cadres and new_cadres lists."""
        head, _, tail = path.partition(".")
        item = tail[len("items.") :] if tail.startswith("items.") else OVERALL
        if head == "team":
            return self.marks.get((TEAM, "", item), (self.line_of_kind(TEAM), ""))[0]
        if head == "selection_work":
            key = (SELECTION, tail, OVERALL)
            return self.marks.get(key, (self.line_of_kind(SELECTION), ""))[0]
        m = _INDEXED.match(head)
        if m is not None:
            kind, ids = (CADRE, cadres) if m.group(1) == "cadres" else (NEW_CADRE, new_cadres)
            j = int(m.group(2))
            if j < len(ids):
                key = (kind, ids[j], item)
                return self.marks.get(key, (self.line_of_kind(kind, ids[j]), ""))[0]
        return self.line


def _add(sheet: _Sheet, line: int, kind: str, target: str, item: str, option: str) -> str | None:
    """Adds one row; a problem (without line) if it cannot be a mark of this sheet."""
    if kind not in KINDS:
        return f"kind: {kind!r} is not one of {', '.join(KINDS)}"
    if not option:
        return "option: empty"
    if not item:
        return "item: empty"
    if kind == TEAM and target:
        return "target_id: must be empty for kind team"
    if kind == SELECTION and item != OVERALL:
        if target:
            return "item: a selection_work row gives the question as target_id and item overall"
        target, item = item, OVERALL
    if kind in (CADRE, NEW_CADRE, SELECTION) and not target:
        return f"target_id: required for kind {kind}"
    if kind == NEW_CADRE and item != OVERALL:
        return "item: a new_cadre ballot has only item overall"
    key = (kind, target, item)
    first = sheet.marks.get(key)
    if first is not None:
        return f"{' '.join(x for x in key if x)}: given twice (first on line {first[0]})"
    sheet.marks[key] = (line, option)
    return None


def _build(sheet: _Sheet, unit: UnitSpec, policy: BallotPolicy) -> BallotSheet | list[Problem]:
    """The full path: a BallotSheet checked by batch_problems, or its problems with lines."""
    data, problems = sheet.payload()
    if problems:
        return problems
    try:
        built = BallotSheet.model_validate(data)
    except ValidationError as err:
        cadres = [c["cadre_id"] for c in data["cadres"]]
        new = [c["cadre_id"] for c in data["new_cadres"]]
        return [
            Problem(
                sheet.line_of(text.partition(": ")[0], cadres, new), f"sheet {sheet.label}: {text}"
            )
            for text in error_lines(err)
        ]
    found = batch_problems([built], unit, policy)
    if not found:
        return built
    cadres = [c.cadre_id for c in built.cadres]
    new = [c.cadre_id for c in built.new_cadres]
    out = []
    for text in found:
        rest = text.removeprefix("sheets[0]").lstrip(".")
        line = sheet.line_of(rest.partition(": ")[0], cadres, new)
        out.append(Problem(line, f"sheet {sheet.label}: {rest}"))
    return out


def standard_layout(unit: UnitSpec, policy: BallotPolicy) -> tuple[Layout, int] | None:
    """The marks of a complete sheet in `sheet_marks` order, each with the options it may
    take, and the ballots on such a sheet; None if batch_problems disagrees anywhere."""

    def first(options: list[str]) -> str:
        return options[0] if options else ""

    dims = first(policy.dimension_options)
    team_items = list(dict.fromkeys(policy.team_dimensions + policy.focus_items))
    try:
        proto = BallotSheet(
            token="0" * 16,
            team=TeamRating(
                overall=first(policy.team_options), items=dict.fromkeys(team_items, dims)
            ),
            cadres=[
                CadreRating(
                    cadre_id=c.cadre_id,
                    overall=first(policy.cadre_options),
                    items=dict.fromkeys(
                        policy.cadre_dimensions + (policy.principal_items if c.principal else []),
                        dims,
                    ),
                )
                for c in unit.cadres
            ],
        )
        if unit.selection_review:
            proto.selection_work = dict.fromkeys(
                policy.selection_questions, first(policy.selection_options)
            )
            proto.new_cadres = [
                NewCadreRating(cadre_id=c.cadre_id, opinion=first(policy.new_cadre_options))
                for c in unit.cadres
                if c.newly_promoted
            ]
    except ValidationError:
        return None
    if batch_problems([proto], unit, policy):
        return None
    options = {
        (TEAM, True): policy.team_options,
        (TEAM, False): policy.dimension_options,
        (CADRE, True): policy.cadre_options,
        (CADRE, False): policy.dimension_options,
        (SELECTION, True): policy.selection_options,
        (NEW_CADRE, True): policy.new_cadre_options,
    }
    marks = sheet_marks(proto)
    layout: Layout = []
    for kind, target, item, _ in marks:
        allowed = options.get((kind, item == OVERALL))
        if allowed is None:
            return None
        layout.append((kind, target, item, frozenset(allowed)))
    # Each mark with each allowed option (and one outside them) against the real rules.
    for j, (_, _, _, allowed) in enumerate(layout):
        for option in [*allowed, "\x00not an option"]:
            sheet = _Sheet("layout", proto.token, 0)
            for n, mark in enumerate(marks):
                _add(sheet, n, mark[0], mark[1], mark[2], option if n == j else mark[3])
            valid = isinstance(_build(sheet, unit, policy), BallotSheet)
            if valid != (option in allowed):
                return None
    return layout, proto.ballot_count()


class BallotCsvReader:
    """Reads a ballot CSV sheet by sheet. `read` yields the valid sheets; `problems` collects
    every problem (with its line) found so far, and a sheet with a problem is not yielded."""

    def __init__(self, unit: UnitSpec, policy: BallotPolicy) -> None:
        self.unit = unit
        self.policy = policy
        self.problems: list[Problem] = []
        self._line_of: Callable[[], int] = lambda: 0  # the CSV reader's line, once reading
        standard = standard_layout(unit, policy)
        self.fast_path = standard is not None
        self._layout, self._layout_ballots = standard or ([], 0)
        # The standard layout by column, for read_standard.
        columns = list(zip(*self._layout, strict=True)) or [(), (), (), ()]
        self.kinds, self.targets, self.items = columns[0], columns[1], columns[2]
        self._allowed: tuple[frozenset[str], ...] = columns[3]
        self.heads = [f"{k}\x1f{t}\x1f{i}\x1f" for k, t, i, _ in self._layout]

    @property
    def sheet_ballots(self) -> int:
        """The ballots on a sheet in the standard layout."""
        return self._layout_ballots

    def read_standard(
        self, path: Path, on_progress: Callable[[int], None] | None = None
    ) -> Iterator[StandardSheet]:
        """The sheets of a file in the standard layout throughout, checked as `read` checks
        them; raises NotStandard (perhaps after some sheets) at the first thing that is not
        so: another layout, a problem of any kind, quoted cells, blank or malformed rows.

        A sheet is matched whole by one regular expression (`_sheet_pattern`) rather than
        parsed row by row: with no quote in it, CSV is its commas and line ends, so the
        match reads what csv.reader would (tests/test_ballots_storage.py holds it to that)."""
        pattern = self._sheet_pattern
        if pattern is None:
            raise NotStandard
        labels: set[str] = set()
        tokens: set[str] = set()
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                text, eof = f.read(_CHUNK), False
                header = _HEADER.match(text)
                if header is None:
                    raise NotStandard
                pos = header.end()
                while True:
                    m = pattern.match(text, pos)
                    if m is None:
                        # A sheet cut by the chunk's end: read on. No match in more text than
                        # a sheet could hold, or at the file's end: not standard.
                        if eof or len(text) - pos > _MAX_SHEET_CHARS:
                            break
                        chunk = f.read(_CHUNK)
                        eof = not chunk
                        text = text[pos:] + (chunk or ("" if text.endswith("\n") else "\n"))
                        pos = 0
                        if on_progress is not None:
                            on_progress(f.buffer.tell())
                        continue
                    pos = m.end()
                    label, token, *options = m.groups()
                    if (
                        not label
                        or text_problem(label) is not None
                        or text_problem(token) is not None
                        or label in labels
                        or token in tokens
                        or not all(map(operator.contains, self._allowed, options))
                    ):
                        raise NotStandard
                    try:
                        _TOKEN.validate_python(token)
                    except ValidationError:
                        raise NotStandard from None
                    labels.add(label)
                    tokens.add(token)
                    yield StandardSheet(label, token, tuple(options))
                if text[pos:].strip("\r\n"):
                    raise NotStandard
                if on_progress is not None:
                    on_progress(f.buffer.tell())
        except UnicodeDecodeError:
            raise NotStandard from None
        if not labels:
            raise NotStandard

    @functools.cached_property
    def _sheet_pattern(self) -> re.Pattern[str] | None:
        """One sheet of the standard layout as CSV text without quotes: on every row the same
        label and token (back-references), the layout's kind, target and item, and an option;
        None if a fixed cell would need quoting (its commas would not be CSV's)."""
        if not self.fast_path:
            return None
        fixed = list(zip(self.kinds, self.targets, self.items, strict=True))
        if any(_NEEDS_QUOTES.search(cell) for row in fixed for cell in row):
            return None
        rows = [
            (f"(?P<label>{_CELL}),(?P<token>{_CELL})" if j == 0 else "(?P=label),(?P=token)")
            + re.escape(f",{kind},{target},{item},")
            + f"({_CELL})\r?\n"
            for j, (kind, target, item) in enumerate(fixed)
        ]
        return re.compile("".join(rows))

    def read(
        self, path: Path, on_progress: Callable[[int], None] | None = None
    ) -> Iterator[ReadSheet]:
        """`on_progress` gets the bytes read so far, now and then."""
        try:
            yield from self._read(path, on_progress)
        except UnicodeDecodeError:
            self.problems.append(Problem(0, "the file is not UTF-8 text (save it as CSV UTF-8)"))
        except csv.Error as err:
            self.problems.append(Problem(self._line_of(), f"not CSV: {err}"))

    def _read(self, path: Path, on_progress: Callable[[int], None] | None) -> Iterator[ReadSheet]:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            self._line_of = lambda: reader.line_num
            header = next(reader, None)
            names = [h.strip() for h in header or []]
            if sorted(names) != sorted(COLUMNS):
                expected, got = ",".join(COLUMNS), ",".join(names)
                self.problems.append(
                    Problem(1, f"header: expected the columns {expected}; got {got}")
                )
                return
            remap = None if names == list(COLUMNS) else [names.index(c) for c in COLUMNS]
            first_line: dict[str, int] = {}  # sheet label -> its first line
            token_line: dict[str, int] = {}  # token -> the first line of its sheet
            label: str | None = None
            rows: list[Row] = []
            bad = False
            width = len(COLUMNS)
            for row in reader:
                if len(row) != width or not row[0]:
                    if not any(cell.strip() for cell in row):
                        continue  # a blank line, or one of empty cells (spreadsheets add them)
                if len(row) != width:
                    bad = True
                    self.problems.append(
                        Problem(
                            reader.line_num,
                            f"{len(row)} fields; expected {width}: {','.join(COLUMNS)}",
                        )
                    )
                    continue
                if remap is not None:
                    row = [row[i] for i in remap]
                if row[0] != label:
                    if rows:
                        sheet = self._finish(label or "", rows, bad)
                        if sheet is not None:
                            yield sheet
                    label, rows, bad = row[0], [], False
                    line = reader.line_num
                    if not label:
                        bad = True
                        self.problems.append(Problem(line, "sheet: empty"))
                    elif label in first_line:
                        bad = True
                        self.problems.append(
                            Problem(
                                line,
                                f"sheet {label}: its rows must be consecutive "
                                f"(it also starts on line {first_line[label]})",
                            )
                        )
                    else:
                        first_line[label] = line
                    seen = token_line.get(row[1])
                    if seen is not None:
                        bad = True
                        self.problems.append(
                            Problem(
                                line, f"sheet {label}: token: used twice in this file (line {seen})"
                            )
                        )
                    else:
                        token_line[row[1]] = line
                    if on_progress is not None and len(first_line) % 256 == 0:
                        on_progress(f.buffer.tell())
                refused = cell_problem(row)
                if refused is not None:
                    bad = True
                    self.problems.append(Problem(reader.line_num, refused))
                row.append(reader.line_num)
                rows.append(row)
            if rows:
                sheet = self._finish(label or "", rows, bad)
                if sheet is not None:
                    yield sheet
            if on_progress is not None:
                on_progress(f.buffer.tell())
        if not first_line and not self.problems:
            self.problems.append(Problem(0, "the file holds no ballot sheet"))

    def _finish(self, label: str, rows: list[Row], bad: bool) -> ReadSheet | None:
        if bad:
            return None
        token = rows[0][1]
        if self.fast_path and len(rows) == len(self._layout):
            for r, (kind, target, item, allowed) in zip(rows, self._layout, strict=True):
                if (
                    r[1] != token
                    or r[2] != kind
                    or r[3] != target
                    or r[4] != item
                    or r[5] not in allowed
                ):
                    break
            else:
                try:
                    _TOKEN.validate_python(token)
                except ValidationError:
                    pass
                else:
                    return ReadSheet(label, rows[0][LINE], token, self._layout_ballots, rows)
        return self._full(label, rows)

    def _full(self, label: str, rows: list[Row]) -> ReadSheet | None:
        token = rows[0][1]
        sheet = _Sheet(label, token, rows[0][LINE])
        problems = []
        for r in rows:
            if r[1] != token:
                problems.append(
                    Problem(
                        r[LINE],
                        f"sheet {label}: token: differs from the sheet's first row "
                        f"(line {sheet.line})",
                    )
                )
                continue
            problem = _add(sheet, r[LINE], r[2], r[3], r[4], r[5])
            if problem is not None:
                problems.append(Problem(r[LINE], f"sheet {label}: {problem}"))
        if problems:
            self.problems.extend(problems)
            return None
        built = _build(sheet, self.unit, self.policy)
        if not isinstance(built, BallotSheet):
            self.problems.extend(built)
            return None
        marks = [[label, token, *m] for m in sheet_marks(built)]
        return ReadSheet(label, sheet.line, token, built.ballot_count(), marks)


@dataclass
class ParsedCsv:
    """A whole file read at once (small files, re-runs): its sheets, or its problems."""

    sheets: list[ReadSheet] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    checksum: str = ""

    @property
    def ballots(self) -> int:
        return sum(s.ballots for s in self.sheets)

    @property
    def rows(self) -> int:
        return sum(len(s.rows) for s in self.sheets)


def parse_ballot_csv(
    path: Path,
    unit: UnitSpec,
    policy: BallotPolicy,
    on_progress: Callable[[int], None] | None = None,
) -> ParsedCsv:
    reader = BallotCsvReader(unit, policy)
    digest = MarksDigest()
    out = ParsedCsv()
    for sheet in reader.read(path, on_progress):
        out.sheets.append(sheet)
        digest.add(sheet.rows)
    out.problems = sorted(reader.problems)
    out.checksum = digest.hexdigest()
    return out


def locate(problems: Iterable[str], labels: list[str], lines: list[int]) -> list[Problem]:
    """Problems naming sheets[i] (as the token checks do) at their sheets' lines."""
    out = []
    for text in problems:
        m = _SHEET_REF.match(text)
        if m is None:
            out.append(Problem(0, text))
            continue
        i = int(m.group(1))
        rest = _SHEET_REF.sub(
            lambda r: f"sheet {labels[int(r.group(1))]}", text[m.end() :].lstrip(".")
        )
        out.append(Problem(lines[i], f"sheet {labels[i]}: {rest}"))
    return sorted(out)


def csv_rows(sheets: Iterable[tuple[str, BallotSheet]]) -> Iterator[tuple[str, ...]]:
    """The CSV rows of (label, sheet) pairs, in the standard layout."""
    yield COLUMNS
    for label, sheet in sheets:
        for kind, target, item, option in sheet_marks(sheet):
            yield (label, sheet.token, kind, target, item, option)


def write_ballot_csv(path: Path, sheets: Iterable[tuple[str, BallotSheet]]) -> int:
    """Writes the sheets as a ballot CSV; returns the number of mark rows."""
    n = -1  # the header
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        for row in csv_rows(sheets):
            writer.writerow(row)
            n += 1
    return n
