"""`kaohe report --campaign C [--format xlsx|html|all] [--out PATH]`: a campaign's results
out, as an XLSX workbook, an HTML page with charts for the leaders, or both.

kaohe/cli/main.py mounts it last: `app.command()(report)`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kaohe.cli.common import console, fail, run_on_database
from kaohe.reports.report import SHEETS, CampaignReport, ReportError, build_report, write_xlsx
from kaohe.settings import get_settings


class ReportFormat(StrEnum):
    XLSX = "xlsx"
    HTML = "html"
    ALL = "all"


SUFFIXES = {".xlsx": ReportFormat.XLSX, ".html": ReportFormat.HTML, ".htm": ReportFormat.HTML}
WHAT = {
    ReportFormat.XLSX: f"sheets {', '.join(SHEETS)}",
    ReportFormat.HTML: "charts of grades, stages and stalls; open it in any browser, offline",
}


def _write_html(result: CampaignReport, path: str | Path) -> Path:
    # matplotlib is imported only by the command that draws: every other command starts fast.
    from kaohe.reports.html import write_html

    return write_html(result, path)


WRITERS: dict[ReportFormat, Callable[[CampaignReport, str | Path], Path]] = {
    ReportFormat.XLSX: write_xlsx,
    ReportFormat.HTML: _write_html,
}


def report(
    campaign: Annotated[str, typer.Option("--campaign", help="The campaign id.")],
    fmt: Annotated[
        ReportFormat | None,
        typer.Option(
            "--format",
            help="xlsx, html or all; default: what --out's suffix names, else all.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="A file for one format, or a directory (created) for report-CAMPAIGN.xlsx "
            "and .html; default: those in the current directory (replaced).",
        ),
    ] = None,
) -> None:
    """Write a campaign's results: an XLSX workbook, an HTML page with charts, or both.

    Read from PostgreSQL in one consistent snapshot.
    The HTML page loads nothing: charts of grades, stages reached, stalled units per day.
    Grades show once approved: sealed proposals never do.
    Ballot figures are unweighted counts of the overall ballots.
    Talk content and ballot tokens are never included."""
    targets = _targets(campaign, fmt, out)
    try:
        result = run_on_database(get_settings(), lambda conn: build_report(conn, campaign))
    except ReportError as err:
        raise fail(str(err)) from err
    _print_summary(result)
    for kind, path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(WRITERS[kind], result, path)
        except OSError as err:
            raise fail(f"{path}: {err}") from err
        console.print(f"[green]wrote {path}[/] ({WHAT[kind]}; readable by you only)")


def _targets(
    campaign: str, fmt: ReportFormat | None, out: Path | None
) -> list[tuple[ReportFormat, Path]]:
    """Which files to write: --out is a file when one format is asked for (or named by its
    suffix) and it is not a directory; otherwise a directory, created when writing."""
    if fmt is None:
        named = out is not None and not out.is_dir() and SUFFIXES.get(out.suffix.lower())
        fmt = named or ReportFormat.ALL
    kinds = [ReportFormat.XLSX, ReportFormat.HTML] if fmt == ReportFormat.ALL else [fmt]
    if out is not None and len(kinds) == 1 and not out.is_dir():
        return [(kinds[0], out)]
    directory = out or Path()
    if directory.exists() and not directory.is_dir():
        raise fail(f"--out {out}: not a directory (both formats need one; or give --format)")
    return [(kind, directory / f"report-{campaign}.{kind.value}") for kind in kinds]


def _write_atomically(
    writer: Callable[[CampaignReport, str | Path], Path], result: CampaignReport, path: Path
) -> None:
    """A reader never sees half a file: written next to `path` (mode 0600, as mkstemp
    creates it), then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(result, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _print_summary(r: CampaignReport) -> None:
    table = Table(title=f"{r.title} ({r.campaign_id}, {r.year})", show_header=False)
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    table.add_row("units", str(len(r.units)))
    table.add_row("stages", ", ".join(f"{s}: {n}" for s, n in r.units_by_stage.items() if n))
    table.add_row("stalled", f"{r.stalled_now} now, {len(r.stalls)} stalls in all")
    table.add_row("cadres", str(len(r.cadres)))
    final = {g: n for g, n in r.team_grades.items() if n}
    table.add_row("team grades", ", ".join(f"{g} {n}" for g, n in final.items()) or "none final")
    final = {g: n for g, n in r.cadre_grades.items() if n}
    table.add_row("cadre grades", ", ".join(f"{g} {n}" for g, n in final.items()) or "none final")
    table.add_row("follow-ups", f"{r.follow_ups_open} open, {r.follow_ups_closed} closed")
    console.print(table)
