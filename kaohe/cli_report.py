"""`kaohe report --campaign C [--format xlsx] [--out FILE]`: a campaign's results out.

kaohe/cli.py mounts it last: `app.command()(report)`.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.table import Table

from kaohe.cli_common import console, fail, run
from kaohe.report import CampaignReport, ReportError, build_report, write_xlsx
from kaohe.settings import get_settings


class ReportFormat(StrEnum):
    XLSX = "xlsx"


def report(
    campaign: Annotated[str, typer.Option("--campaign", help="The campaign id.")],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="Output format.")
    ] = ReportFormat.XLSX,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File to write; default report-CAMPAIGN.xlsx (replaced)."),
    ] = None,
) -> None:
    """Write a campaign's results: units, cadres, tallies, final grades and follow-ups.

    Read from PostgreSQL in one consistent snapshot.
    Grades show once approved: sealed proposals never do.
    Ballot figures are unweighted counts of the overall ballots.
    Talk content and ballot tokens are never included."""
    path = out or Path(f"report-{campaign}.{fmt.value}")
    settings = get_settings()

    async def go() -> CampaignReport:
        conn = await asyncpg.connect(settings.effective_database_url)
        try:
            return await build_report(conn, campaign)
        finally:
            await conn.close()

    try:
        result = run(go())
    except ReportError as err:
        raise fail(str(err)) from err
    except (OSError, asyncpg.PostgresError) as err:
        raise fail(f"database: {err}") from err
    try:
        _write_atomically(result, path)
    except OSError as err:
        raise fail(f"{path}: {err}") from err
    _print_summary(result, path)


def _write_atomically(result: CampaignReport, path: Path) -> None:
    """A reader never sees half a workbook: written next to `path`, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_xlsx(result, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _print_summary(r: CampaignReport, path: Path) -> None:
    table = Table(title=f"{r.title} ({r.campaign_id}, {r.year})", show_header=False)
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    table.add_row("units", str(len(r.units)))
    table.add_row("stages", ", ".join(f"{s}: {n}" for s, n in r.units_by_stage.items() if n))
    table.add_row("cadres", str(len(r.cadres)))
    final = {g: n for g, n in r.team_grades.items() if n}
    table.add_row("team grades", ", ".join(f"{g} {n}" for g, n in final.items()) or "none final")
    final = {g: n for g, n in r.cadre_grades.items() if n}
    table.add_row("cadre grades", ", ".join(f"{g} {n}" for g, n in final.items()) or "none final")
    table.add_row("follow-ups", f"{r.follow_ups_open} open, {r.follow_ups_closed} closed")
    console.print(table)
    console.print(
        f"[green]wrote {path}[/] (sheets Summary, Units, Cadres, Follow-ups; readable by you only)"
    )
