"""A campaign's results out of PostgreSQL (`kaohe report`): one consistent read of its units,
cadres, tallies, final grades and follow-ups, and an xlsx workbook of them.

Only what may leave the system is read: talks are counted, never their content; ballot
tokens are not touched; grades come from the `grades` table, which holds approved grades
only, so a sealed proposal (`grade_proposals`) never shows: the group's evaluation is read
only from the approved proposal of a unit whose grades are final. Stalls (a stage past its
deadline) and the furthest stage each unit reached come from the audit table's transition,
escalation and deadline-extension rows. kaohe/reports/html.py renders the same report as
HTML with charts.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from pydantic import BaseModel, Field

from domain.calendar import SHANGHAI
from domain.stages import ORDER, TERMINAL
from schemas.common import CadreGrade, CadreOverall, Stage, TeamGrade
from schemas.messages import Appraisal, GroupEvaluation

TEAM = ""  # grades.cadre_id of a team's own grade
STAGES: tuple[Stage, ...] = (*ORDER, Stage.CANCELLED)
CADRE_OPTIONS: tuple[str, ...] = tuple(o.value for o in CadreOverall)
TEAM_OPTIONS: tuple[str, ...] = tuple(o.value for o in TeamGrade)
NOT_FINAL = "not final yet"

# New sheets go last: a reader of an older workbook finds the first five where they were.
SHEETS = ("Summary", "Units", "Cadres", "Follow-ups", "Evaluations", "Stalls", "Charts")


class ReportError(Exception):
    """The report cannot be built (e.g. the campaign is unknown)."""


class UnitRow(BaseModel):
    workflow_id: str
    unit_id: str
    name: str
    category: str
    stage: str
    team_grade: str | None  # only once final (approved and through publicity)
    ballots: int
    sheets: int
    talks: int
    reports: int
    follow_ups_open: int
    follow_ups_closed: int
    team_ballots: int = 0  # every overall team ballot
    team_counts: dict[str, int] = Field(default_factory=dict)  # option -> ballots, unweighted
    # The furthest stage of ORDER reached: the current one, or a cancelled unit's last.
    reached: str = ""
    stalled: bool = False  # past the current stage's deadline now (audit: escalated, not moved)
    escalation: int = 0  # the current stall's highest escalation level
    cadre_grades: dict[str, int] = Field(default_factory=dict)  # final grade -> cadres

    @property
    def good_or_better_share(self) -> float | None:
        """(好 + 较好) / team ballots, unweighted; None without ballots."""
        return _share(self.team_counts, self.team_ballots, "好", "较好")


def _share(counts: dict[str, int], ballots: int, *options: str) -> float | None:
    """The options' ballots / all ballots; None without ballots."""
    if not ballots:
        return None
    return sum(counts.get(option, 0) for option in options) / ballots


class CadreRow(BaseModel):
    unit_id: str
    unit_name: str
    cadre_id: str
    name: str
    position: str
    principal: bool
    newly_promoted: bool
    grade: str | None  # only once final (approved and through publicity)
    ballots: int  # every overall cadre ballot, 不了解 included
    counts: dict[str, int]  # option -> ballots, unweighted, all rater groups

    @property
    def competent_or_better_share(self) -> float | None:
        """(优秀 + 称职) / ballots, unweighted; None without ballots."""
        return _share(self.counts, self.ballots, "优秀", "称职")


class FollowUpRow(BaseModel):
    unit_id: str
    unit_name: str
    follow_up_id: str
    kind: str
    cadre_id: str | None
    cadre_name: str | None
    owner: str
    due_date: dt.date | None
    closed_at: dt.datetime | None
    outcome: str | None
    closed_by: str | None = None  # a feedback's signer


class EvaluationRow(BaseModel):
    """The group's 综合分析研判 of an approved proposal, for a unit whose grades are final."""

    unit_id: str
    unit_name: str
    cadre_id: str | None  # None: the team
    cadre_name: str | None
    strengths: str
    shortcomings: str


class StallPeriod(BaseModel):
    """A unit past its stage's deadline: from escalation level 1 until it moved on (the next
    stage, or a deadline extended beyond that moment, which is when the workflow clears it)."""

    unit_id: str
    unit_name: str
    stage: str
    since: dt.datetime
    until: dt.datetime | None = None  # None: still stalled
    level: int = 1  # the highest escalation level reached

    def overlaps(self, start: dt.datetime, end: dt.datetime) -> bool:
        """Stalled at some moment of [start, end)."""
        return self.since < end and (self.until is None or self.until >= start)


class CampaignReport(BaseModel):
    campaign_id: str
    year: int
    title: str
    generated_at: dt.datetime
    created_at: dt.datetime | None = None  # the campaign's first record
    finished_at: dt.datetime | None = None  # when its last unit ended, once every one has
    units: list[UnitRow] = Field(default_factory=list)
    cadres: list[CadreRow] = Field(default_factory=list)
    follow_ups: list[FollowUpRow] = Field(default_factory=list)
    evaluations: list[EvaluationRow] = Field(default_factory=list)
    team_grades: dict[str, int] = Field(default_factory=dict)  # grade -> units (final only)
    cadre_grades: dict[str, int] = Field(default_factory=dict)  # grade -> cadres (final only)
    stalls: list[StallPeriod] = Field(default_factory=list)  # by unit, then time

    @property
    def units_by_stage(self) -> dict[str, int]:
        """Every stage in workflow order (zeros included), then any unknown stage."""
        out = {s.value: 0 for s in STAGES}
        for u in self.units:
            out[u.stage] = out.get(u.stage, 0) + 1
        return out

    @property
    def funnel(self) -> dict[str, int]:
        """Units that reached each stage of ORDER (notice ... completed): the stages run in
        order, so a unit further on passed every earlier one."""
        index = {s.value: i for i, s in enumerate(ORDER)}
        out = {s.value: 0 for s in ORDER}
        for u in self.units:
            for s in ORDER[: index.get(u.reached, -1) + 1]:
                out[s.value] += 1
        return out

    @property
    def stalled_now(self) -> int:
        return sum(1 for u in self.units if u.stalled)

    def stalled_by_day(self) -> list[tuple[dt.date, int]]:
        """Units stalled at some moment of each day (Asia/Shanghai), from the campaign's
        first day to today, or to the day its last unit ended."""
        moments = [p.since for p in self.stalls]
        if self.created_at is not None:
            moments.append(self.created_at)
        end = self.finished_at or self.generated_at
        first = min(moments, default=end).astimezone(SHANGHAI).date()
        return stalled_by_day(self.stalls, first, max(first, end.astimezone(SHANGHAI).date()))

    @property
    def follow_ups_open(self) -> int:
        return sum(1 for f in self.follow_ups if f.closed_at is None)

    @property
    def follow_ups_closed(self) -> int:
        return sum(1 for f in self.follow_ups if f.closed_at is not None)


def stalled_by_day(
    stalls: Iterable[StallPeriod], first: dt.date, last: dt.date
) -> list[tuple[dt.date, int]]:
    """(day, units stalled at some moment of it) for each day from `first` to `last`, days
    of Asia/Shanghai. A unit counts once a day however often it stalled."""
    periods = list(stalls)
    out: list[tuple[dt.date, int]] = []
    day = first
    while day <= last:
        start = dt.datetime.combine(day, dt.time(), SHANGHAI)
        end = start + dt.timedelta(days=1)
        out.append((day, len({p.unit_id for p in periods if p.overlaps(start, end)})))
        day += dt.timedelta(days=1)
    return out


# ---- reading ---------------------------------------------------------------------------

_CAMPAIGN = (
    "SELECT campaign_id, year, title, grade_labels::text, created_at FROM campaigns "
    "WHERE campaign_id = $1"
)

# Ballots and sheets of registered batches only: an imported batch counts once the workflow
# has verified it (as the tallies do). Reports are documents, a revision not counted twice.
_UNITS = """
SELECT u.workflow_id, u.unit_id, u.name, u.category, u.stage,
       g.grade AS team_grade,
       coalesce(b.ballots, 0) AS ballots, coalesce(b.sheets, 0) AS sheets,
       coalesce(t.n, 0) AS talks, coalesce(r.n, 0) AS reports,
       coalesce(f.open, 0) AS follow_ups_open, coalesce(f.closed, 0) AS follow_ups_closed
FROM units u
LEFT JOIN grades g ON g.workflow_id = u.workflow_id AND g.cadre_id = $2 AND g.final
LEFT JOIN LATERAL (
    SELECT sum(ballots)::bigint AS ballots, sum(sheets)::bigint AS sheets FROM ballot_batches
    WHERE workflow_id = u.workflow_id AND registered_at IS NOT NULL) b ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM talks WHERE workflow_id = u.workflow_id) t ON true
LEFT JOIN LATERAL (
    SELECT count(DISTINCT (kind, coalesce(cadre_id, ''))) AS n FROM reports
    WHERE workflow_id = u.workflow_id) r ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE closed_at IS NULL) AS open,
           count(*) FILTER (WHERE closed_at IS NOT NULL) AS closed
    FROM follow_ups WHERE workflow_id = u.workflow_id) f ON true
WHERE u.campaign_id = $1
ORDER BY u.unit_id
"""

_CADRES = """
SELECT c.workflow_id, u.unit_id, u.name AS unit_name, c.cadre_id, c.name, c.position,
       c.principal, c.newly_promoted, g.grade
FROM cadres c
JOIN units u USING (workflow_id)
LEFT JOIN grades g ON g.workflow_id = c.workflow_id AND g.cadre_id = c.cadre_id AND g.final
WHERE u.campaign_id = $1
ORDER BY u.unit_id, c.principal DESC, c.cadre_id
"""

# Tallies only of units whose evaluation is closed (the pool closed with it): none while
# sheets are still coming in.
_TEAM_TALLIES = """
SELECT t.workflow_id, t.option, sum(t.n)::bigint AS n
FROM ballot_tallies t
JOIN units u USING (workflow_id)
JOIN ballot_pool_closed USING (workflow_id)
WHERE u.campaign_id = $1 AND t.kind = 'team' AND t.item = 'overall'
GROUP BY t.workflow_id, t.option
"""

# The last approved proposal of each unit whose team grade is final: its appraisal.
_APPRAISALS = """
SELECT DISTINCT ON (p.workflow_id) u.unit_id, u.name AS unit_name, p.appraisal::text
FROM grade_proposals p
JOIN units u USING (workflow_id)
JOIN grades g ON g.workflow_id = p.workflow_id AND g.cadre_id = $2 AND g.final
WHERE u.campaign_id = $1 AND p.decision = 'approve' AND p.appraisal IS NOT NULL
ORDER BY p.workflow_id, p.proposal_no DESC
"""

_CADRE_TALLIES = """
SELECT t.workflow_id, t.target_id, t.option, sum(t.n)::bigint AS n
FROM ballot_tallies t
JOIN units u USING (workflow_id)
JOIN ballot_pool_closed USING (workflow_id)
WHERE u.campaign_id = $1 AND t.kind = 'cadre' AND t.item = 'overall'
GROUP BY t.workflow_id, t.target_id, t.option
"""

_GRADES = """
SELECT g.cadre_id = $2 AS team, g.grade, count(*) AS n
FROM grades g
JOIN units u USING (workflow_id)
WHERE u.campaign_id = $1 AND g.final
GROUP BY 1, 2
"""

# What stalls and stage history are made of, in the order each unit wrote them.
_EVENTS = """
SELECT a.workflow_id, a.kind, a.stage, a.at, a.detail->>'to' AS moved_to,
       (a.detail->>'level')::int AS level
FROM units u
JOIN audit_log a ON a.workflow_id = u.workflow_id
WHERE u.campaign_id = $1 AND a.kind IN ('transition', 'escalation', 'deadline_extended')
ORDER BY a.workflow_id, a.id
"""

_FOLLOW_UPS = """
SELECT u.unit_id, u.name AS unit_name, f.follow_up_id, f.kind, f.cadre_id,
       c.name AS cadre_name, f.owner, f.due_date, f.closed_at, f.outcome, f.closed_by
FROM follow_ups f
JOIN units u USING (workflow_id)
LEFT JOIN cadres c ON c.workflow_id = f.workflow_id AND c.cadre_id = f.cadre_id
WHERE u.campaign_id = $1
ORDER BY u.unit_id, f.created_at, f.follow_up_id
"""


async def build_report(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool, campaign_id: str
) -> CampaignReport:
    """Reads the campaign's report in one read-only, repeatable-read transaction."""
    if isinstance(conn_or_pool, asyncpg.Pool):
        async with conn_or_pool.acquire() as conn:
            return await _read(conn, campaign_id)
    return await _read(conn_or_pool, campaign_id)


async def _read(conn: asyncpg.Connection, campaign_id: str) -> CampaignReport:
    # One snapshot; inside a caller's transaction, that transaction's (a savepoint: the
    # isolation level of a nested transaction cannot be chosen).
    snapshot = (
        conn.transaction()
        if conn.is_in_transaction()
        else conn.transaction(isolation="repeatable_read", readonly=True)
    )
    async with snapshot:
        campaign = await conn.fetchrow(_CAMPAIGN, campaign_id)
        if campaign is None:
            raise ReportError(f"campaign {campaign_id!r} is not in the database")
        units = await conn.fetch(_UNITS, campaign_id, TEAM)
        cadres = await conn.fetch(_CADRES, campaign_id)
        tallies = await conn.fetch(_CADRE_TALLIES, campaign_id)
        team_tallies = await conn.fetch(_TEAM_TALLIES, campaign_id)
        appraisals = await conn.fetch(_APPRAISALS, campaign_id, TEAM)
        grades = await conn.fetch(_GRADES, campaign_id, TEAM)
        follow_ups = await conn.fetch(_FOLLOW_UPS, campaign_id)
        events = await conn.fetch(_EVENTS, campaign_id)
        generated_at = await conn.fetchval("SELECT now()")

    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in tallies:
        counts.setdefault((r["workflow_id"], r["target_id"]), {})[r["option"]] = r["n"]
    team_counts: dict[str, dict[str, int]] = {}
    for r in team_tallies:
        team_counts.setdefault(r["workflow_id"], {})[r["option"]] = r["n"]
    names = {(r["unit_id"], r["cadre_id"]): r["name"] for r in cadres}
    # Grades as the campaign's policy shows them (grading.team_labels / cadre_labels).
    labels = json.loads(campaign["grade_labels"])
    team_label = _labeller(labels.get("team", {}))
    cadre_label = _labeller(labels.get("cadre", {}))
    team_grades = {team_label(g.value): 0 for g in TeamGrade}
    cadre_grades = {cadre_label(g.value): 0 for g in CadreGrade}
    for r in grades:
        into, label = (team_grades, team_label) if r["team"] else (cadre_grades, cadre_label)
        into[label(r["grade"])] = into.get(label(r["grade"]), 0) + r["n"]
    by_unit: dict[str, list[asyncpg.Record]] = {}
    for r in events:
        by_unit.setdefault(r["workflow_id"], []).append(r)
    histories = {r["workflow_id"]: _history(r, by_unit.get(r["workflow_id"], [])) for r in units}
    graded: dict[str, dict[str, int]] = {}  # workflow id -> final cadre grade -> cadres
    for r in cadres:
        if r["grade"] is not None:
            unit_grades = graded.setdefault(r["workflow_id"], {})
            grade = cadre_label(r["grade"]) or r["grade"]
            unit_grades[grade] = unit_grades.get(grade, 0) + 1
    ends = [h.ended_at for h in histories.values()]
    finished_at = max(e for e in ends if e) if ends and all(ends) else None
    return CampaignReport(
        campaign_id=campaign["campaign_id"],
        year=campaign["year"],
        title=campaign["title"],
        generated_at=generated_at,
        created_at=campaign["created_at"],
        finished_at=finished_at,
        units=[
            UnitRow(
                **{**dict(r), "team_grade": team_label(r["team_grade"])},
                team_ballots=sum(team_counts.get(r["workflow_id"], {}).values()),
                team_counts=team_counts.get(r["workflow_id"], {}),
                reached=histories[r["workflow_id"]].reached,
                stalled=histories[r["workflow_id"]].stalled,
                escalation=histories[r["workflow_id"]].escalation,
                cadre_grades=graded.get(r["workflow_id"], {}),
            )
            for r in units
        ],
        cadres=[
            _cadre_row(r, counts.get((r["workflow_id"], r["cadre_id"]), {}), cadre_label)
            for r in cadres
        ],
        follow_ups=[FollowUpRow(**dict(r)) for r in follow_ups],
        evaluations=[row for r in appraisals for row in _evaluation_rows(r, names)],
        team_grades=team_grades,
        cadre_grades=cadre_grades,
        stalls=[p for h in histories.values() for p in h.stalls],
    )


class _History(BaseModel):
    reached: str
    stalled: bool
    escalation: int
    stalls: list[StallPeriod]
    ended_at: dt.datetime | None  # entered completed or cancelled


def _history(unit: asyncpg.Record, events: list[asyncpg.Record]) -> _History:
    """A unit's stalls and furthest stage from its audit rows, as the workflow decides them:
    escalation level 1 marks the deadline passed; the next stage clears it, and so does a
    deadline extended beyond the moment of the extension."""
    index = {s.value: i for i, s in enumerate(ORDER)}
    furthest = index.get(unit["stage"], -1)
    stalls: list[StallPeriod] = []
    open_: StallPeriod | None = None
    ended_at: dt.datetime | None = None
    for e in events:
        if e["kind"] == "escalation":
            if open_ is None:
                open_ = StallPeriod(
                    unit_id=unit["unit_id"], unit_name=unit["name"], stage=e["stage"], since=e["at"]
                )
                stalls.append(open_)
            open_.level = max(open_.level, e["level"] or 1)
            continue
        if e["kind"] == "transition":
            furthest = max(furthest, index.get(e["moved_to"], -1))
            if e["moved_to"] in TERMINAL:
                ended_at = e["at"]
        elif e["moved_to"] is None or dt.datetime.fromisoformat(e["moved_to"]) <= e["at"]:
            continue  # an extension that leaves the deadline behind: still stalled
        if open_ is not None:
            open_.until = e["at"]
            open_ = None
    return _History(
        reached=ORDER[furthest].value if furthest >= 0 else unit["stage"],
        stalled=open_ is not None and unit["stage"] not in TERMINAL,
        escalation=open_.level if open_ is not None else 0,
        stalls=stalls,
        ended_at=ended_at if unit["stage"] in TERMINAL else None,
    )


def _evaluation_rows(r: asyncpg.Record, names: dict[tuple[str, str], str]) -> list[EvaluationRow]:
    doc = GroupEvaluation.model_validate_json(r["appraisal"])
    unit = {"unit_id": r["unit_id"], "unit_name": r["unit_name"]}
    out = [EvaluationRow(**unit, cadre_id=None, cadre_name=None, **_appraisal(doc))]
    for cadre_id, a in doc.cadres.items():
        name = names.get((r["unit_id"], cadre_id))
        out.append(EvaluationRow(**unit, cadre_id=cadre_id, cadre_name=name, **_appraisal(a)))
    return out


def _appraisal(a: Appraisal) -> dict[str, str]:
    return {"strengths": a.strengths, "shortcomings": a.shortcomings}


def _labeller(labels: dict[str, str]) -> Callable[[str | None], str | None]:
    return lambda grade: None if grade is None else labels.get(grade, grade)


def _cadre_row(
    r: asyncpg.Record, counts: dict[str, int], label: Callable[[str | None], str | None]
) -> CadreRow:
    fields = {k: v for k, v in dict(r).items() if k not in ("workflow_id", "grade")}
    return CadreRow(**fields, grade=label(r["grade"]), ballots=sum(counts.values()), counts=counts)


# ---- the workbook ----------------------------------------------------------------------

BOLD = Font(bold=True)
NOTE = Font(italic=True, color="666666")
MAX_WIDTH = 60


def write_xlsx(report: CampaignReport, path: str | Path) -> Path:
    """Writes the workbook (sheets Summary, Units, Cadres, Follow-ups, Evaluations, Stalls,
    Charts); returns its path.

    Each sheet has a caption in row 1, a bold header in row 2 and its panes frozen below
    the header (and right of the id columns)."""
    wb = Workbook()
    summary = wb.active
    assert summary is not None
    summary.title = SHEETS[0]
    caption = f"{report.title} ({report.campaign_id}, {report.year})"

    _table(
        summary,
        f"{caption} — generated {_local(report.generated_at):%Y-%m-%d %H:%M}",
        ["section", "item", "value"],
        _summary_rows(report),
        freeze="A3",
    )
    _table(
        wb.create_sheet(SHEETS[1]),
        f"{caption} — units. Grades show once final; ballots and sheets of registered "
        "batches; reports: team summary and duty reports received (revisions once).",
        [
            "unit id",
            "name",
            "category",
            "stage",
            "stalled",
            "team grade",
            "team ballots",
            *TEAM_OPTIONS,
            "好+较好 share",
            "ballots",
            "sheets",
            "talks",
            "reports",
            "follow-ups open",
            "follow-ups closed",
            "workflow id",
        ],
        (
            [
                u.unit_id,
                u.name,
                u.category,
                u.stage,
                "yes" if u.stalled else "no",
                u.team_grade,
                u.team_ballots,
                *(u.team_counts.get(o, 0) for o in TEAM_OPTIONS),
                u.good_or_better_share,
                u.ballots,
                u.sheets,
                u.talks,
                u.reports,
                u.follow_ups_open,
                u.follow_ups_closed,
                u.workflow_id,
            ]
            for u in report.units
        ),
        freeze="B3",
        formats={len(TEAM_OPTIONS) + 8: "0.0%"},
    )
    cadres = wb.create_sheet(SHEETS[2])
    _table(
        cadres,
        f"{caption} — cadres. Ballot figures are UNWEIGHTED counts of the overall cadre "
        "ballots of all rater groups (不了解 included in ballots and in the share); the "
        "weighted rates the rules use are in each unit's status. Grades show once final.",
        [
            "unit id",
            "unit",
            "cadre id",
            "name",
            "position",
            "principal",
            "newly promoted",
            "grade",
            "ballots",
            *CADRE_OPTIONS,
            "优秀+称职 share",
        ],
        (
            [
                c.unit_id,
                c.unit_name,
                c.cadre_id,
                c.name,
                c.position,
                "yes" if c.principal else "no",
                "yes" if c.newly_promoted else "no",
                c.grade,
                c.ballots,
                *(c.counts.get(o, 0) for o in CADRE_OPTIONS),
                c.competent_or_better_share,
            ]
            for c in report.cadres
        ),
        freeze="D3",
        formats={len(CADRE_OPTIONS) + 10: "0.0%"},
    )
    _table(
        wb.create_sheet(SHEETS[3]),
        f"{caption} — follow-ups (结果运用). Times are local.",
        [
            "unit id",
            "unit",
            "follow-up id",
            "kind",
            "cadre id",
            "cadre",
            "owner",
            "due date",
            "closed at",
            "outcome",
            "closed / signed by",
        ],
        (
            [
                f.unit_id,
                f.unit_name,
                f.follow_up_id,
                f.kind,
                f.cadre_id,
                f.cadre_name,
                f.owner,
                f.due_date,
                _local(f.closed_at) if f.closed_at else None,
                f.outcome,
                f.closed_by,
            ]
            for f in report.follow_ups
        ),
        freeze="D3",
        formats={8: "yyyy-mm-dd", 9: "yyyy-mm-dd hh:mm"},
    )
    _table(
        wb.create_sheet(SHEETS[4]),
        f"{caption} — the assessment group's evaluation (综合分析研判) behind final grades; "
        "a unit not final yet shows nothing.",
        ["unit id", "unit", "cadre id", "cadre", "strengths", "shortcomings"],
        (
            [
                e.unit_id,
                e.unit_name,
                e.cadre_id or "(team)",
                e.cadre_name,
                e.strengths,
                e.shortcomings,
            ]
            for e in report.evaluations
        ),
        freeze="C3",
    )
    _table(
        wb.create_sheet(SHEETS[5]),
        f"{caption} — stalls: a stage past its deadline (escalation level 1) until the unit "
        "moved on (next stage, or a deadline extended ahead). Times are local.",
        ["unit id", "unit", "stage", "since", "until", "escalation level"],
        (
            [
                p.unit_id,
                p.unit_name,
                p.stage,
                _local(p.since),
                _local(p.until) if p.until else None,
                p.level,
            ]
            for p in report.stalls
        ),
        freeze="C3",
        formats={4: "yyyy-mm-dd hh:mm", 5: "yyyy-mm-dd hh:mm"},
    )
    _charts(wb.create_sheet(SHEETS[6]), report, caption)
    out = Path(path)
    wb.save(out)
    return out


def _summary_rows(report: CampaignReport) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["campaign", "campaign id", report.campaign_id],
        ["campaign", "year", report.year],
        ["campaign", "title", report.title],
        ["units", "total", len(report.units)],
        ["cadres", "total", len(report.cadres)],
    ]
    rows += [["units per stage", stage, n] for stage, n in report.units_by_stage.items()]
    rows += [["units that reached", stage, n] for stage, n in report.funnel.items()]
    rows += [
        ["stalls", "units stalled now", report.stalled_now],
        ["stalls", "stall periods", len(report.stalls)],
    ]
    rows += [["team grades", grade, n] for grade, n in report.team_grades.items()]
    rows.append(["team grades", NOT_FINAL, len(report.units) - sum(report.team_grades.values())])
    rows += [["cadre grades", grade, n] for grade, n in report.cadre_grades.items()]
    rows.append(["cadre grades", NOT_FINAL, len(report.cadres) - sum(report.cadre_grades.values())])
    rows += [
        ["follow-ups", "open", report.follow_ups_open],
        ["follow-ups", "closed", report.follow_ups_closed],
    ]
    return rows


def _charts(ws: Worksheet, report: CampaignReport, caption: str) -> None:
    """Each chart's figures in columns A-B and a native bar chart beside them, so the
    workbook shows what the HTML report draws without any image."""
    ws.cell(row=1, column=1, value=_text(f"{caption} — charts (figures left of each)")).font = NOTE
    blocks: list[tuple[str, str, list[tuple[Any, int]], str | None]] = [
        ("team grade", "units (final)", list(report.team_grades.items()), None),
        ("cadre grade", "cadres (final)", list(report.cadre_grades.items()), None),
        ("stage reached", "units", list(report.funnel.items()), None),
        ("day", "units stalled", list(report.stalled_by_day()), "yyyy-mm-dd"),
    ]
    row = 2
    for label, value, data, number_format in blocks:
        for col, title in enumerate((label, value), start=1):
            ws.cell(row=row, column=col, value=title).font = BOLD
        for r, (category, n) in enumerate(data, start=row + 1):
            cell = ws.cell(row=r, column=1, value=category)
            if number_format:
                cell.number_format = number_format
            ws.cell(row=r, column=2, value=n)
        chart = BarChart()
        chart.title = f"{value} by {label}"
        chart.legend = None
        chart.y_axis.majorGridlines = None
        chart.x_axis.delete = chart.y_axis.delete = False  # openpyxl hides both by default
        chart.add_data(Reference(ws, min_col=2, min_row=row, max_row=row + len(data)), True)
        chart.set_categories(Reference(ws, min_col=1, min_row=row + 1, max_row=row + len(data)))
        ws.add_chart(chart, f"D{row}")
        row += max(len(data), 15) + 2  # a chart is about 15 rows high
    ws.column_dimensions["A"].width = 16
    ws.column_dimensions["B"].width = 16


def _table(
    ws: Worksheet,
    caption: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    freeze: str,
    formats: dict[int, str] | None = None,
) -> None:
    """Caption in row 1, bold header in row 2, data below; widths fitted to the content.
    `formats` maps 1-based column numbers to number formats."""
    ws.cell(row=1, column=1, value=_text(caption)).font = NOTE
    widths = [_width(h) for h in header]
    for col, title in enumerate(header, start=1):
        cell = ws.cell(row=2, column=col, value=_text(title))
        cell.font = BOLD
        cell.alignment = Alignment(vertical="center")
    formats = formats or {}
    for r, row in enumerate(rows, start=3):
        for col, value in enumerate(row, start=1):
            cell = ws.cell(row=r, column=col)
            if isinstance(value, str):
                cell.value = _text(value)
                cell.data_type = "s"  # never a formula, whatever the text starts with
            else:
                cell.value = value
            if col in formats:
                cell.number_format = formats[col]
            widths[col - 1] = max(widths[col - 1], _width(value, formats.get(col)))
    for col, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(col)].width = min(MAX_WIDTH, width + 2)
    ws.freeze_panes = freeze
    if ws.max_row >= 2:
        ws.auto_filter.ref = f"A2:{get_column_letter(len(header))}{ws.max_row}"


def _text(value: str) -> str:
    """Strips the control characters an xlsx cannot hold."""
    return ILLEGAL_CHARACTERS_RE.sub("", value)


def _width(value: Any, number_format: str | None = None) -> int:
    """Display width: CJK characters count double."""
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        return 16
    if isinstance(value, dt.date):
        return 10
    if isinstance(value, float) and number_format and "%" in number_format:
        return 6
    text = str(value)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _local(at: dt.datetime) -> dt.datetime:
    """Excel holds no time zones: the local wall-clock time."""
    return at.astimezone().replace(tzinfo=None)
