"""`kaohe report`: a campaign's results read from PostgreSQL into an xlsx workbook, on the
real servers. Approved grades show, a sealed proposal does not, and neither talk content
nor a ballot token ever reaches the workbook."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet
from temporalio.client import Client

from kaohe.report import SHEETS, CampaignReport, ReportError, build_report, write_xlsx
from kaohe.simulate import TokenSource, drive_unit, proposal_for
from schemas.common import CadreGrade, Stage, TeamGrade
from schemas.roster import UnitSpec
from schemas.status import UnitStatus
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
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
    client: Client, worker: str, tokens: TokenSource, pool: asyncpg.Pool
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
            drive_unit(client, c.wf(name), unit, tokens=tokens, stop_at=stops[name])
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
    # (kaohe.simulate's proposal). The pending unit's sealed 较差 / 不称职 count nowhere.
    assert s["team grades", "好"] == 2 and s["team grades", "较差"] == 0
    assert s["team grades", "not final yet"] == 1
    assert s["cadre grades", "优秀"] == 2 and s["cadre grades", "称职"] == 8
    assert s["cadre grades", "不称职"] == 0 and s["cadre grades", "not final yet"] == 2
    using_open = sum(1 for f in c.statuses["using"].follow_ups.items if not f.closed)
    done_closed = len(c.statuses["done"].follow_ups.items)
    assert using_open >= 1 and done_closed >= 1
    assert s["follow-ups", "open"] == using_open
    assert s["follow-ups", "closed"] == done_closed

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

    # Nothing secret: no token, no talk content, no report text, no sealed proposal.
    texts = list(every_text(path))
    assert c.tokens and len(c.tokens) == 3 * 7
    joined = "\n".join(texts)
    for secret in (*c.tokens, TALK_CONTENT, *REPORT_TEXTS, PROPOSAL_TEXT):
        assert secret not in joined, secret


async def test_unknown_campaign(pool: asyncpg.Pool) -> None:
    with pytest.raises(ReportError, match="not in the database"):
        await build_report(pool, f"none-{uuid.uuid4().hex[:6]}")


def check_written(out: Path) -> None:
    assert out.stat().st_mode & 0o077 == 0  # readable by its owner only
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

    missing = await run_kaohe(stack, "report", "--campaign", "no-such-campaign")
    assert missing.returncode == 1
    assert "not in the database" in missing.stderr
    wrong = await run_kaohe(stack, "report", "--campaign", campaign.id, "--format", "pdf")
    assert wrong.returncode == 2
