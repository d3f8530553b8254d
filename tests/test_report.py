"""`kaohe report`: a campaign's results read from PostgreSQL into an xlsx workbook and an
HTML page with charts, on the real servers. Approved grades show, a sealed proposal does
not, and neither talk content nor a ballot token ever reaches either."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet
from temporalio.client import Client

from domain.calendar import SHANGHAI
from domain.stages import ORDER
from kaohe.reports.html import write_html
from kaohe.reports.report import (
    SHEETS,
    CampaignReport,
    ReportError,
    StallPeriod,
    build_report,
    stalled_by_day,
    write_xlsx,
)
from kaohe.sim.simulate import (
    DEPARTMENT,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
)
from schemas.common import CadreGrade, Stage, TeamGrade
from schemas.messages import AcknowledgeNotice, ExtendDeadline
from schemas.roster import UnitSpec
from schemas.status import UnitStatus
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_deadlines import clock_policy
from workflows.unit import UnitAssessment

KAOHE = str(Path(sys.executable).parent / "kaohe")

TALK_CONTENT = "谈话内容"  # what drive_unit records as every talk's (sealed) content
REPORT_TEXTS = ("一年来, 班子坚持", "本人认真履职")  # report bodies: not results either
PROPOSAL_TEXT = "此建议尚未批准"  # the pending proposal's evaluation


async def run_kaohe(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread, so the in-process worker on this event loop keeps running."""
    return await asyncio.to_thread(
        subprocess.run,
        [KAOHE, *args],
        env={**stack.env(), "COLUMNS": "300"},  # no wrapped lines to match across
        capture_output=True,
        text=True,
        timeout=60,
    )


class Campaign:
    """Three units: `done` completed, `using` in result use (grades approved, follow-ups
    open), `pending` in grading with a sealed proposal that differs from every approved
    grade (team 较差, cadres 不称职)."""

    def __init__(self, campaign_id: str, units: dict[str, UnitSpec]) -> None:
        self.id = campaign_id
        self.units = units
        self.statuses: dict[str, UnitStatus] = {}
        self.tokens: list[str] = []

    def wf(self, name: str) -> str:
        return f"kaohe-{self.id}-{self.units[name].unit_id}"


@pytest.fixture(scope="module")
async def campaign(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore, pool: asyncpg.Pool
) -> Campaign:
    c = Campaign(
        f"rep-{uuid.uuid4().hex[:8]}",
        {"done": sample_unit(cadres=5), "using": sample_unit(cadres=5), "pending": sample_unit()},
    )
    for unit in c.units.values():
        await start_unit(client, worker, unit, campaign_id=c.id)
    stops = {"done": None, "using": Stage.RESULT_USE, "pending": Stage.GRADING}
    statuses = await asyncio.gather(
        *(
            drive_unit(client, c.wf(name), unit, tokens=tokens, talks=talks, stop_at=stops[name])
            for name, unit in c.units.items()
        )
    )
    c.statuses = dict(zip(c.units, statuses, strict=True))
    pending = c.units["pending"]
    sealed = proposal_for(pending).model_copy(
        update={
            "evaluation": PROPOSAL_TEXT,
            "team_grade": TeamGrade.POOR,
            "cadre_grades": {x.cadre_id: CadreGrade.INCOMPETENT for x in pending.cadres},
        }
    )
    handle = client.get_workflow_handle_for(UnitAssessment.run, c.wf("pending"))
    await handle.execute_update(UnitAssessment.propose_grades, sealed)
    c.tokens = [t for name in c.units for ts in (await tokens(c.wf(name))).values() for t in ts]

    # The stage projection and the derived follow-ups are written by activities: wait for them.
    using = client.get_workflow_handle_for(UnitAssessment.run, c.wf("using"))
    for _ in range(200):
        c.statuses["using"] = await using.query(UnitAssessment.status)
        using_follow_ups = len(c.statuses["using"].follow_ups.items)
        async with pool.acquire() as conn:
            stages = dict(
                await conn.fetch(
                    "SELECT workflow_id, stage FROM units WHERE campaign_id = $1", c.id
                )
            )
            follow_ups = await conn.fetchval(
                "SELECT count(*) FROM follow_ups WHERE workflow_id = $1", c.wf("using")
            )
            proposals = await conn.fetchval(
                "SELECT count(*) FROM grade_proposals WHERE workflow_id = $1", c.wf("pending")
            )
        if (
            stages
            == {
                c.wf("done"): "completed",
                c.wf("using"): "result_use",
                c.wf("pending"): "grading",
            }
            and follow_ups == using_follow_ups > 0
            and proposals == 1
        ):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the database did not settle: {stages}, {follow_ups}, {proposals}")
    return c


def rows(ws: Worksheet) -> list[tuple[Any, ...]]:
    return list(ws.iter_rows(values_only=True))


def records(ws: Worksheet) -> list[dict[str, Any]]:
    """The data rows under the header (row 2) as dicts."""
    header, *data = rows(ws)[1:]
    return [dict(zip(header, row, strict=True)) for row in data]


def every_text(path: Path) -> Iterator[str]:
    wb = load_workbook(path)
    for ws in wb.worksheets:
        for row in ws.iter_rows(values_only=True):
            yield from (str(v) for v in row if v is not None)


async def test_report_workbook(campaign: Campaign, pool: asyncpg.Pool, tmp_path: Path) -> None:
    c = campaign
    report = await build_report(pool, c.id)
    assert isinstance(report, CampaignReport)
    async with pool.acquire() as conn, conn.transaction():  # within a caller's transaction
        same = await build_report(conn, c.id)
    assert same.model_dump(exclude={"generated_at"}) == report.model_dump(exclude={"generated_at"})
    path = write_xlsx(report, tmp_path / "report.xlsx")
    wb = load_workbook(path)
    assert wb.sheetnames == list(SHEETS)

    # Summary: (section, item) -> value.
    summary = wb["Summary"]
    assert rows(summary)[1] == ("section", "item", "value")
    assert summary["A2"].font.bold and summary.freeze_panes == "A3"
    s = {(r["section"], r["item"]): r["value"] for r in records(summary)}
    assert s["campaign", "campaign id"] == c.id
    assert s["campaign", "year"] == 2026 and s["campaign", "title"] == "测试考核"
    assert s["units", "total"] == 3 and s["cadres", "total"] == 12
    assert s["units per stage", "completed"] == 1
    assert s["units per stage", "result_use"] == 1
    assert s["units per stage", "grading"] == 1
    assert s["units per stage", "talks"] == 0
    # Approved: two teams 好, the principals 优秀 (5 cadres × 20%: one each), the others 称职
    # (kaohe.sim.simulate's proposal). The pending unit's sealed 较差 / 不称职 count nowhere.
    assert s["team grades", "好"] == 2 and s["team grades", "较差"] == 0
    assert s["team grades", "not final yet"] == 1
    assert s["cadre grades", "优秀"] == 2 and s["cadre grades", "称职"] == 8
    assert s["cadre grades", "不称职"] == 0 and s["cadre grades", "not final yet"] == 2
    using_open = sum(1 for f in c.statuses["using"].follow_ups.items if not f.closed)
    done_closed = len(c.statuses["done"].follow_ups.items)
    assert using_open >= 1 and done_closed >= 1
    assert s["follow-ups", "open"] == using_open
    assert s["follow-ups", "closed"] == done_closed
    # Stages reached: every unit passed grading, two result use, one completed it.
    reached = {stage: s["units that reached", stage] for stage in ORDER}
    assert reached == {
        Stage.NOTICE: 3,
        Stage.REPORT_BACK: 3,
        Stage.EVALUATION: 3,
        Stage.TALKS: 3,
        Stage.GRADING: 3,
        Stage.RESULT_USE: 2,
        Stage.COMPLETED: 1,
    }
    assert s["stalls", "units stalled now"] == 0 and s["stalls", "stall periods"] == 0

    # Units: one row each, ballots equal to the database and to the workflow's count.
    units_ws = wb["Units"]
    assert units_ws["A2"].value == "unit id" and units_ws["A2"].font.bold
    assert units_ws.freeze_panes == "B3"
    units = {r["unit id"]: r for r in records(units_ws)}
    assert set(units) == {u.unit_id for u in c.units.values()}
    async with pool.acquire() as conn:
        for name, unit in c.units.items():
            row = units[unit.unit_id]
            db = await conn.fetchrow(
                "SELECT sum(ballots) AS ballots, sum(sheets) AS sheets FROM ballot_batches "
                "WHERE workflow_id = $1",
                c.wf(name),
            )
            assert row["ballots"] == db["ballots"] == c.statuses[name].evaluation.ballots
            assert row["sheets"] == db["sheets"] == 7  # rater groups of 2, 2 and 3
            assert row["talks"] == unit.talks_planned
            assert row["reports"] == 1 + len(unit.cadres)
            assert row["workflow id"] == c.wf(name)
        proposals = await conn.fetchval(
            "SELECT count(*) FROM grade_proposals WHERE workflow_id = $1", c.wf("pending")
        )
    assert proposals == 1  # the sealed proposal is stored, just not reported
    assert units[c.units["done"].unit_id]["stage"] == "completed"
    assert units[c.units["done"].unit_id]["team grade"] == "好"
    assert units[c.units["using"].unit_id]["team grade"] == "好"
    assert units[c.units["using"].unit_id]["follow-ups open"] == using_open
    assert units[c.units["pending"].unit_id]["stage"] == "grading"
    assert units[c.units["pending"].unit_id]["team grade"] is None
    assert {row["stalled"] for row in units.values()} == {"no"}
    assert records(wb["Stalls"]) == []

    # Cadres: grades once final, unweighted overall tallies equal to the workflow's.
    cadres_ws = wb["Cadres"]
    assert "UNWEIGHTED" in cadres_ws["A1"].value
    header = rows(cadres_ws)[1]
    assert header[:9] == (
        "unit id",
        "unit",
        "cadre id",
        "name",
        "position",
        "principal",
        "newly promoted",
        "grade",
        "ballots",
    )
    assert header[9:] == ("优秀", "称职", "基本称职", "不称职", "不了解", "优秀+称职 share")
    assert all(cell.font.bold for cell in cadres_ws[2])
    cadres = {r["cadre id"]: r for r in records(cadres_ws)}
    assert len(cadres) == sum(len(u.cadres) for u in c.units.values())
    done = c.units["done"]
    principal = cadres[done.cadres[0].cadre_id]
    assert principal["grade"] == "优秀" and principal["principal"] == "yes"
    assert principal["name"] == done.cadres[0].name
    assert cadres[done.cadres[1].cadre_id]["grade"] == "称职"
    for x in c.units["pending"].cadres:
        assert cadres[x.cadre_id]["grade"] is None
    for name, unit in c.units.items():
        tallies = {
            t.target_id: t for t in c.statuses[name].evaluation.tallies if t.target_kind == "cadre"
        }
        for x in unit.cadres:
            row = cadres[x.cadre_id]
            tally = tallies[x.cadre_id]
            assert row["ballots"] == tally.ballots == 7
            counts = {o: row[o] for o in ("优秀", "称职", "基本称职", "不称职", "不了解")}
            assert {o: n for o, n in counts.items() if n} == tally.counts
            share = (counts["优秀"] + counts["称职"]) / 7
            assert row["优秀+称职 share"] == pytest.approx(share)

    # Follow-ups: every one, with its outcome once closed.
    follow_ws = wb["Follow-ups"]
    assert rows(follow_ws)[1][:4] == ("unit id", "unit", "follow-up id", "kind")
    follow_ups = records(follow_ws)
    assert len(follow_ups) == done_closed + len(c.statuses["using"].follow_ups.items)
    closed = [f for f in follow_ups if f["closed at"] is not None]
    assert len(closed) == done_closed
    assert {f["outcome"] for f in closed} == {"已签收", "已落实"}
    assert {f["unit id"] for f in closed} == {done.unit_id}
    signers = {f["follow-up id"]: f["closed / signed by"] for f in closed}
    assert all(signers[f"feedback-{x.cadre_id}"] == x.cadre_id for x in done.cadres)

    # Units: the team's overall ballots, unweighted, as the workflow tallied them.
    for name, unit in c.units.items():
        [team] = [t for t in c.statuses[name].evaluation.tallies if t.target_kind == "team"]
        row = units[unit.unit_id]
        assert row["team ballots"] == team.ballots == 7
        assert {o: row[o] for o in ("好", "较好", "一般", "较差") if row[o]} == team.counts
        good = (row["好"] + row["较好"]) / 7
        assert row["好+较好 share"] == pytest.approx(good)

    # Evaluations: the group's appraisal behind final grades only (team, then each cadre).
    evaluations = records(wb["Evaluations"])
    final = {c.units["done"].unit_id, c.units["using"].unit_id}
    assert {e["unit id"] for e in evaluations} == final
    assert len(evaluations) == sum(1 + len(c.units[n].cadres) for n in ("done", "using"))
    team_rows = [e for e in evaluations if e["cadre id"] == "(team)"]
    assert {(e["strengths"], e["shortcomings"]) for e in team_rows} == {
        ("班子团结, 实绩突出", "创新不够")
    }

    # Charts: the figures beside native bar charts (grades, stages reached, stalls per day).
    charts_ws = wb["Charts"]
    assert len(charts_ws._charts) == 4
    blocks = chart_blocks(charts_ws)
    assert blocks["team grade"] == report.team_grades
    assert blocks["cadre grade"] == report.cadre_grades
    assert blocks["stage reached"] == report.funnel
    days = blocks["day"]
    assert list(days.values()) == [0] * len(days) and len(days) >= 1

    # Nothing secret: no token, no talk content, no report text, no sealed proposal.
    texts = list(every_text(path))
    assert c.tokens and len(c.tokens) == 3 * 7
    joined = "\n".join(texts)
    for secret in (*c.tokens, TALK_CONTENT, *REPORT_TEXTS, PROPOSAL_TEXT):
        assert secret not in joined, secret


def chart_blocks(ws: Worksheet) -> dict[str, dict[Any, Any]]:
    """The Charts sheet's figures: each block's header names it, its rows map category to
    value, and an empty row ends it."""
    blocks: dict[str, dict[Any, Any]] = {}
    current: dict[Any, Any] | None = None
    for label, value, *_ in list(ws.iter_rows(values_only=True))[1:]:
        if label is None:
            current = None
        elif current is None:
            current = blocks.setdefault(str(label), {})
        else:
            current[label.date() if isinstance(label, dt.datetime) else label] = value
    return blocks


# ---- the HTML page -----------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def chart(html: str, label: str) -> ET.Element:
    """The inline SVG chart of that accessible label."""
    [svg] = re.findall(rf'<svg role="img" aria-label="{label}".*?</svg>', html, flags=re.S)
    return ET.fromstring(svg)


def drawn(svg: ET.Element, prefix: str, axis: str = "y") -> dict[str, float]:
    """Bar key -> its length in the drawing (height, or width for horizontal bars)."""
    out = {}
    for g in svg.iter(f"{SVG}g"):
        gid = g.get("id", "")
        if gid.startswith(prefix):
            path = g.find(f"{SVG}path")
            assert path is not None, gid
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path.get("d", ""))]
            values = numbers[1::2] if axis == "y" else numbers[0::2]
            out[gid.removeprefix(prefix)] = max(values) - min(values)
    return out


def figures(svg: ET.Element, prefix: str) -> dict[str, str]:
    """Bar key -> the figure written on it."""
    return {
        g.get("id", "").removeprefix(prefix): "".join(g.itertext()).strip()
        for g in svg.iter(f"{SVG}g")
        if g.get("id", "").startswith(prefix)
    }


def proportional(lengths: dict[str, float], counts: dict[str, int]) -> None:
    """Each bar as long as its count on one scale (a zero count: no bar)."""
    assert lengths.keys() == counts.keys()
    scale = max(lengths.values()) / max(max(counts.values()), 1)
    for key, n in counts.items():
        assert lengths[key] == pytest.approx(n * scale, abs=0.01), (key, lengths, counts)


async def final_grades(pool: asyncpg.Pool, campaign_id: str) -> tuple[dict, dict]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT g.cadre_id = '' AS team, g.grade, count(*) AS n FROM grades g "
            "JOIN units u USING (workflow_id) WHERE u.campaign_id = $1 AND g.final "
            "GROUP BY 1, 2",
            campaign_id,
        )
    team = {g.value: 0 for g in TeamGrade}
    cadre = {g.value: 0 for g in CadreGrade}
    for r in rows:
        (team if r["team"] else cadre)[r["grade"]] = r["n"]
    return team, cadre


async def reached_stages(pool: asyncpg.Pool, campaign_id: str) -> dict[str, int]:
    """Units that entered each stage, from their transition audit rows."""
    async with pool.acquire() as conn:
        rows = dict(
            await conn.fetch(
                "SELECT detail->>'to', count(DISTINCT workflow_id) FROM audit_log "
                "WHERE campaign_id = $1 AND kind = 'transition' GROUP BY 1",
                campaign_id,
            )
        )
    return {s.value: rows.get(s.value, 0) for s in ORDER}


async def test_report_page(campaign: Campaign, pool: asyncpg.Pool, tmp_path: Path) -> None:
    c = campaign
    report = await build_report(pool, c.id)
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<html lang="zh-CN">' in html
    assert "<title>测试考核 — 考核情况报告</title>" in html

    # Self-contained: no script, nothing fetched, links only inside the page.
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r'(?:src|href)="(?!#)', html) == []
    assert "url(http" not in html

    # Grades: one bar per grade, its figure and its length the count of final grades in the
    # database; the pending unit's sealed 较差 / 不称职 count nowhere.
    team, cadre = await final_grades(pool, c.id)
    assert team == {"好": 2, "较好": 0, "一般": 0, "较差": 0}
    assert cadre == {"优秀": 2, "称职": 8, "基本称职": 0, "不称职": 0, "不确定等次": 0}
    grades = chart(html, "等次分布")
    assert figures(grades, "grades-count-team-") == {g: str(n) for g, n in team.items()}
    assert figures(grades, "grades-count-cadre-") == {g: str(n) for g, n in cadre.items()}
    proportional(drawn(grades, "grades-bar-team-"), team)
    proportional(drawn(grades, "grades-bar-cadre-"), cadre)
    texts = {t.text for t in grades.iter(f"{SVG}text")}
    assert {"领导班子（个）", "领导干部（名）", *team, *cadre} <= texts  # text, not paths

    # Stages: units that entered each stage, as the audit table has it (bars top down).
    reached = await reached_stages(pool, c.id)
    assert reached == report.funnel
    assert list(reached.values()) == [3, 3, 3, 3, 3, 2, 1]
    funnel = chart(html, "各阶段到达单位数")
    shown = figures(funnel, "funnel-count-")
    assert {s: int(text.split("（")[0]) for s, text in shown.items()} == reached
    assert shown["completed"] == "1（33%）"
    proportional(drawn(funnel, "funnel-bar-", axis="x"), reached)
    assert {"考核通知", "个别谈话", "已完成", "单位数（共 3 个）"} <= {
        t.text for t in funnel.iter(f"{SVG}text")
    }

    # Stalls: none in this campaign, every day at zero, up to today.
    stalled = chart(html, "每日逾期单位数")
    days = drawn(stalled, "stalled-bar-")
    today = f"{report.generated_at.astimezone(SHANGHAI):%Y-%m-%d}"
    assert today in days and set(days.values()) == {0.0}
    assert "暂无逾期单位" in {t.text for t in stalled.iter(f"{SVG}text")}

    # The units' table: Chinese stage names, grades once final, no stall.
    for name in c.units:
        assert f"<td>{c.units[name].name}</td>" in html
    assert "<td>评定等次</td>" in html and "<td>结果运用</td>" in html and "<td>已完成</td>" in html
    assert "优秀 1、称职 4" in html
    assert 'class="stalled"' not in html and "逾期记录" not in html

    # Nothing secret.
    for secret in (*c.tokens, TALK_CONTENT, *REPORT_TEXTS, PROPOSAL_TEXT):
        assert secret not in html, secret


async def settled_report(
    pool: asyncpg.Pool, campaign_id: str, check: Callable[[CampaignReport], bool]
) -> CampaignReport:
    """The report once `check` holds: the audit rows are written by activities."""
    report = None
    for _ in range(200):
        try:
            report = await build_report(pool, campaign_id)
        except ReportError:  # the first unit not registered yet
            pass
        else:
            if check(report):
                return report
        await asyncio.sleep(0.1)
    pytest.fail(f"the report did not settle: {report}")


async def test_stalled_units_come_from_the_audit_table(
    client: Client, worker: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A unit past its deadline counts on the day it stalled, and stops being stalled when
    it moves on: by the next stage, or by a deadline extended ahead of it."""
    campaign_id = f"stall-{uuid.uuid4().hex[:8]}"
    calm = sample_unit()
    await start_unit(client, worker, calm, campaign_id=campaign_id)
    before = await settled_report(pool, campaign_id, lambda r: len(r.units) == 1)
    assert before.stalls == [] and {n for _, n in before.stalled_by_day()} == {0}

    # Notice due one (second-long) working day after the start; level 2 much later.
    moves_on, extended = sample_unit(), sample_unit()
    handles = {
        unit.unit_id: await start_unit(
            client, worker, unit, campaign_id=campaign_id, policy=clock_policy(1, 0, 60)
        )
        for unit in (moves_on, extended)
    }
    for handle in handles.values():
        status = await wait_for_status(handle, lambda s: s.escalation_level == 1, 30)
        assert status.stalled
    stalled = await settled_report(pool, campaign_id, lambda r: r.stalled_now == 2)
    assert {u.unit_id: u.stalled for u in stalled.units} == {
        calm.unit_id: False,
        moves_on.unit_id: True,
        extended.unit_id: True,
    }
    assert {(p.unit_id, p.stage, p.until, p.level) for p in stalled.stalls} == {
        (moves_on.unit_id, "notice", None, 1),
        (extended.unit_id, "notice", None, 1),
    }
    day = stalled.stalls[0].since.astimezone(SHANGHAI).date()
    assert dict(stalled.stalled_by_day())[day] == 2
    page = write_html(stalled, tmp_path / "stalled.html").read_text(encoding="utf-8")
    bars = chart(page, "每日逾期单位数")
    assert figures(bars, "stalled-count-")[f"{day:%Y-%m-%d}"] == "2"
    assert drawn(bars, "stalled-bar-")[f"{day:%Y-%m-%d}"] > 0
    assert page.count('<tr class="stalled">') == 2 and "逾期（督办1级）" in page
    assert "逾期记录" in page and "仍逾期" in page

    # One moves on to report-back, the other's deadline is extended far ahead.
    await handles[moves_on.unit_id].execute_update(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key="ack", actor=UNIT_CONTACT),
    )
    await handles[extended.unit_id].execute_update(
        UnitAssessment.extend_deadline,
        ExtendDeadline(idempotency_key="extend", actor=DEPARTMENT, days=60, reason="单位调整"),
    )
    after = await settled_report(
        pool, campaign_id, lambda r: r.stalled_now == 0 and all(p.until for p in r.stalls)
    )
    assert {p.unit_id for p in after.stalls} == {moves_on.unit_id, extended.unit_id}
    assert all(p.since < p.until for p in after.stalls if p.until)
    assert dict(after.stalled_by_day())[day] == 2  # they were stalled that day all the same
    assert after.funnel["notice"] == 3 and after.funnel["report_back"] == 1
    page = write_html(after, tmp_path / "after.html").read_text(encoding="utf-8")
    assert 'class="stalled"' not in page and "仍逾期" not in page and "逾期记录" in page

    # The workbook: each stall with its end, the day's count beside the chart.
    wb = load_workbook(write_xlsx(after, tmp_path / "after.xlsx"))
    rows_ = {r["unit id"]: r for r in records(wb["Stalls"])}
    assert rows_.keys() == {moves_on.unit_id, extended.unit_id}
    assert all(r["stage"] == "notice" and r["until"] is not None for r in rows_.values())
    assert {r["stalled"] for r in records(wb["Units"])} == {"no"}
    assert chart_blocks(wb["Charts"])["day"][day] == 2


def test_stalled_by_day_counts_each_unit_once_a_day() -> None:
    """Days of Asia/Shanghai: a stall from 23:00 to 01:00 counts on both days; a unit stalled
    twice in a day counts once; a stall still open counts to the last day."""

    def at(day: int, hour: int) -> dt.datetime:
        return dt.datetime(2026, 12, day, hour, tzinfo=SHANGHAI)

    def stall(unit: str, since: dt.datetime, until: dt.datetime | None) -> StallPeriod:
        return StallPeriod(unit_id=unit, unit_name=unit, stage="talks", since=since, until=until)

    periods = [
        stall("a", at(1, 23), at(2, 1)),
        stall("b", at(3, 9), at(3, 10)),
        stall("b", at(3, 15), None),
        stall("c", at(5, 0), at(5, 0).replace(minute=1)),
    ]
    series = stalled_by_day(periods, dt.date(2026, 11, 30), dt.date(2026, 12, 6))
    assert [n for _, n in series] == [0, 1, 1, 1, 1, 2, 1]
    assert series[0][0] == dt.date(2026, 11, 30) and series[-1][0] == dt.date(2026, 12, 6)
    # Days are Shanghai's: 16:30-17:00 UTC on the 1st is 00:30-01:00 on the 2nd there.
    utc = stall(
        "a",
        dt.datetime(2026, 12, 1, 16, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 1, 17, tzinfo=dt.UTC),
    )
    assert stalled_by_day([utc], dt.date(2026, 12, 1), dt.date(2026, 12, 2)) == [
        (dt.date(2026, 12, 1), 0),
        (dt.date(2026, 12, 2), 1),
    ]


def test_the_page_needs_no_chinese_font_to_be_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a CJK font matplotlib warns of every missing glyph: not here, and the labels
    stay text for the browser to draw."""
    import kaohe.reports.html as page

    monkeypatch.setitem(page._RC, "font.sans-serif", ["No Such Font", "DejaVu Sans"])
    now = dt.datetime(2026, 12, 20, 15, tzinfo=SHANGHAI)
    report = CampaignReport(
        campaign_id="c",
        year=2026,
        title="无字体",
        generated_at=now,
        team_grades={"好": 1},
        cadre_grades={"优秀": 1},
        stalls=[StallPeriod(unit_id="u", unit_name="甲", stage="talks", since=now)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = page.render_html(report)
    assert ">领导班子（个）</text>" in html and ">好</text>" in html


async def test_unknown_campaign(pool: asyncpg.Pool) -> None:
    with pytest.raises(ReportError, match="not in the database"):
        await build_report(pool, f"none-{uuid.uuid4().hex[:6]}")


def check_written(out: Path) -> None:
    assert out.stat().st_mode & 0o077 == 0  # readable by its owner only
    if out.suffix == ".html":
        page = out.read_text(encoding="utf-8")
        assert page.count("<svg") == 3 and page.rstrip().endswith("</html>")
    else:
        wb = load_workbook(out)
        assert wb.sheetnames == list(SHEETS)
        assert len(records(wb["Units"])) == 3
    assert not list(out.parent.glob("*.tmp"))  # the temporary file was renamed over it


async def test_report_from_the_cli(campaign: Campaign, stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "报告.xlsx"
    run = await run_kaohe(stack, "report", "--campaign", campaign.id, "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout
    assert "completed: 1" in run.stdout and "grading: 1" in run.stdout
    assert "好 2" in run.stdout
    check_written(out)

    assert "Stalls, Charts" in run.stdout
    assert not (tmp_path / "报告.html").exists()  # the suffix named one format

    # Both formats by default, into a directory (created).
    folder = tmp_path / "out"
    both = await run_kaohe(stack, "report", "--campaign", campaign.id, "--out", str(folder))
    assert both.returncode == 0, both.stderr
    written = sorted(folder.iterdir())
    assert [p.name for p in written] == [f"report-{campaign.id}.html", f"report-{campaign.id}.xlsx"]
    for path in written:
        assert f"wrote {path}" in both.stdout
        check_written(path)
    page = tmp_path / "page"  # one format, a file without suffix
    html = await run_kaohe(
        stack, "report", "--campaign", campaign.id, "--format", "html", "--out", str(page)
    )
    assert html.returncode == 0, html.stderr
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    not_a_dir = await run_kaohe(
        stack, "report", "--campaign", campaign.id, "--format", "all", "--out", str(out)
    )
    assert not_a_dir.returncode == 1 and "not a directory" in not_a_dir.stderr

    missing = await run_kaohe(stack, "report", "--campaign", "no-such-campaign")
    assert missing.returncode == 1
    assert "not in the database" in missing.stderr
    wrong = await run_kaohe(stack, "report", "--campaign", campaign.id, "--format", "pdf")
    assert wrong.returncode == 2
