"""The campaign report as one self-contained HTML page for the leaders (`kaohe report
--format html`): summary, three charts as inline SVG, the units and their stalls.

The page loads nothing (no CDN, no script, no web font): the machines and the leaders'
networks may be offline. Charts are drawn by matplotlib into SVG with `svg.fonttype: none`,
so Chinese labels stay <text> the browser renders with its own fonts; matplotlib only
measures them with whichever CJK font this machine has. It shows what the workbook shows
(kaohe/reports/report.py): final grades only, no talk content, no ballot token, no report text.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from domain.calendar import SHANGHAI
from kaohe.reports.report import CampaignReport, UnitRow
from schemas.common import Stage
from workflows.details import STAGE_LABELS

TEMPLATE = "templates/report.html.j2"

# Measured with the first one installed here; the browser picks from the same list.
CJK_FONTS = [
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "SimHei",
    "DejaVu Sans",
]
# The Chinese half of the UI's stage labels ("个别谈话 talks" -> "个别谈话").
STAGE_NAMES: dict[str, str] = {s.value: label.split(" ")[0] for s, label in STAGE_LABELS.items()}

# Favourable to unfavourable, whatever labels the policy gives the grades.
GRADE_COLOURS = ["#2e7d32", "#1565c0", "#f9a825", "#c62828", "#9e9e9e"]
FUNNEL_COLOUR = "#1565c0"
STALL_COLOUR = "#c62828"
INK = "#333333"

_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "kaohe",  # ids from the content alone: the same figures, the same SVG
    "font.family": "sans-serif",
    "font.sans-serif": CJK_FONTS,
    "font.size": 10,
    "axes.edgecolor": "#999999",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.color": INK,
    "axes.labelcolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
}


# ---- charts ----------------------------------------------------------------------------


@contextmanager
def _chart_style() -> Iterator[None]:
    """matplotlib's style for our charts, without the warnings of a machine that lacks a
    CJK font (the browser draws the text anyway): missing glyphs, fallback weights."""
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context(_RC), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from")
            yield
    finally:
        fonts.setLevel(level)


def _svg(fig: Figure, name: str, label: str) -> str:
    """The figure as an <svg> element to inline: no XML prolog, its ids prefixed with
    `name` (several charts share one page), an accessible label, fitted to its box by CSS."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = svg.replace(' id="', f' id="{name}-')
    svg = svg.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    escaped = Markup.escape(label)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escaped}" class="chart" ', 1)


def _label_bars(ax: Axes, bars: BarContainer, keys: list[str], texts: list[str]) -> None:
    """Names each bar `bar-KEY` and its figure `count-KEY` in the SVG (tests and scripts
    read them); an empty text draws no figure."""
    for bar, key in zip(bars, keys, strict=True):
        bar.set_gid(f"bar-{key}")
    for text, key in zip(ax.bar_label(bars, labels=texts, padding=3), keys, strict=True):
        text.set_gid(f"count-{key}")


def grade_chart(report: CampaignReport) -> str:
    """Final team grades (units) beside final cadre grades (cadres)."""
    with _chart_style():
        fig = Figure(figsize=(9, 2.8), layout="constrained")
        team_ax, cadre_ax = fig.subplots(
            1, 2, gridspec_kw={"width_ratios": [len(report.team_grades), len(report.cadre_grades)]}
        )
        for ax, kind, title, grades in (
            (team_ax, "team", "领导班子（个）", report.team_grades),
            (cadre_ax, "cadre", "领导干部（名）", report.cadre_grades),
        ):
            names, counts = list(grades), list(grades.values())
            bars = ax.bar(names, counts, color=GRADE_COLOURS[: len(names)], width=0.6)
            _label_bars(ax, bars, [f"{kind}-{n}" for n in names], [str(c) for c in counts])
            ax.set_title(title)
            ax.set_ylim(0, max([*counts, 1]) * 1.2)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        return _svg(fig, "grades", "等次分布")


def funnel_chart(report: CampaignReport) -> str:
    """Units that reached each stage, first stage on top, with their share of all units."""
    funnel = report.funnel
    total = len(report.units)
    with _chart_style():
        fig = Figure(figsize=(9, 2.8), layout="constrained")
        ax = fig.subplots()
        stages = list(funnel)
        counts = [funnel[s] for s in stages]
        bars = ax.barh([STAGE_NAMES[s] for s in stages], counts, color=FUNNEL_COLOUR, height=0.6)
        shares = [f"{n}（{n / total:.0%}）" if total else str(n) for n in counts]
        _label_bars(ax, bars, stages, shares)
        ax.invert_yaxis()
        ax.set_xlim(0, max(total, 1) * 1.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"单位数（共 {total} 个）")
        return _svg(fig, "funnel", "各阶段到达单位数")


def stalled_chart(report: CampaignReport) -> str:
    """Per day, the units stalled at some moment of it."""
    series = report.stalled_by_day()
    days = [d for d, _ in series]
    counts = [n for _, n in series]
    with _chart_style():
        fig = Figure(figsize=(9, 2.4), layout="constrained")
        ax = fig.subplots()
        x = mdates.date2num(days)
        # A few days' bars stay bars, not slabs across the chart.
        bars = ax.bar(x, counts, color=STALL_COLOUR, width=0.8 * min(len(days), 8) / 8)
        figures = [str(n) if n else "" for n in counts]
        _label_bars(ax, bars, [f"{d:%Y-%m-%d}" for d in days], figures)
        ax.set_xlim(x[0] - 0.6, x[-1] + 0.6)
        ax.xaxis_date()
        locator = mdates.DayLocator() if len(days) <= 14 else mdates.AutoDateLocator(maxticks=12)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
        ax.set_ylim(0, max([*counts, 1]) * 1.25)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("逾期单位数")
        if not any(counts):
            ax.text(0.5, 0.5, "暂无逾期单位", transform=ax.transAxes, ha="center", color="#777777")
        return _svg(fig, "stalled", "每日逾期单位数")


# ---- the page --------------------------------------------------------------------------


def _local(at: dt.datetime | None) -> str:
    return "" if at is None else f"{at.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"


def _cadre_grades(u: UnitRow) -> str:
    return "、".join(f"{g} {n}" for g, n in u.cadre_grades.items() if n)


def render_html(report: CampaignReport) -> str:
    """The page as a string."""
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True)
    env.filters["local"] = _local
    env.filters["stage"] = lambda s: STAGE_NAMES.get(s, s)
    env.filters["cadre_grades"] = _cadre_grades
    source = resources.files("kaohe.reports").joinpath(TEMPLATE).read_text(encoding="utf-8")
    team_final = sum(report.team_grades.values())
    cadres_final = sum(report.cadre_grades.values())
    return env.from_string(source).render(
        r=report,
        completed=report.units_by_stage.get(Stage.COMPLETED.value, 0),
        team_pending=len(report.units) - team_final,
        cadre_pending=len(report.cadres) - cadres_final,
        team_final=team_final,
        cadres_final=cadres_final,
        charts={
            "grades": Markup(grade_chart(report)),
            "funnel": Markup(funnel_chart(report)),
            "stalled": Markup(stalled_chart(report)),
        },
    )


def write_html(report: CampaignReport, path: str | Path) -> Path:
    out = Path(path)
    out.write_text(render_html(report), encoding="utf-8")
    return out
