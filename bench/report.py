"""What the benchmarks print: the console, tables of figures and task times, a summary of
what the servers and the worker logged, and the ratio line every benchmark ends with."""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from bench.measure import Phase, percentile, ratio

if TYPE_CHECKING:
    from bench.stack import BenchStack

# Wide enough for the tables when stdout is a pipe (rich assumes 80 columns then).
console = Console(width=max(Console().width, 110), highlight=False)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def figures_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def phases_table(title: str, phases: dict[str, Phase]) -> Table:
    """Queued = scheduled -> started, run = started -> closed; eager activities never queue."""
    table = Table(title=title, title_justify="left")
    for column in ("task", "count", "queued p50", "run p50", "run p99", "total p99"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for kind, phase in sorted(phases.items(), key=lambda kv: -sum(kv[1].total)):
        table.add_row(
            kind,
            str(len(phase.total)),
            ms(percentile(phase.queued, 50)),
            ms(percentile(phase.running, 50)),
            ms(percentile(phase.running, 99)),
            ms(percentile(phase.total, 99)),
        )
    return table


# ---- what the servers and the worker logged ------------------------------------------------


# Temporal's server logs logfmt: time=... level=WARN msg="..." key=value ...
_LOGFMT_LEVEL = re.compile(r"^time=\S+ level=(\w+) ")
_LOGFMT_MSG = re.compile(r' msg="((?:[^"\\]|\\.)*)"')


def _level(line: str) -> str | None:
    """warning/error for a line of any of our logs, else None."""
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            level = str(json.loads(text).get("level", "")).lower()
            if level in ("warn", "warning"):
                return "warning"
            if level in ("error", "critical", "fatal", "panic", "dpanic"):
                return "error"
            return None
    logfmt = _LOGFMT_LEVEL.search(text)
    if logfmt is not None:
        level = logfmt.group(1).lower()
        return {"warn": "warning", "warning": "warning"}.get(level) or (
            "error" if level in ("error", "fatal", "panic", "dpanic") else None
        )
    head = text.split(" ", 1)[0]
    if head in ("WARNING", "WARN"):
        return "warning"
    if head in ("ERROR", "CRITICAL"):
        return "error"
    for marker, level in (
        (" WARNING: ", "warning"),
        (" ERROR: ", "error"),
        (" FATAL: ", "error"),
        (" PANIC: ", "error"),
    ):
        if marker in text:
            return level
    return None


def _message(line: str) -> str:
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            return str(data.get("msg") or data.get("event") or text)
    logfmt = _LOGFMT_MSG.search(text)
    return logfmt.group(1) if logfmt is not None else text


def log_summary(stack: BenchStack) -> Table:
    """Warnings and errors logged by the worker, Temporal and PostgreSQL since start-up."""
    table = Table(title="logs (warnings / errors)", title_justify="left")
    table.add_column("log")
    table.add_column("warn", justify="right")
    table.add_column("error", justify="right")
    table.add_column("first distinct messages", overflow="fold")
    for name, path in stack.logs().items():
        counts = {"warning": 0, "error": 0}
        firsts: list[str] = []
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(stack.log_offsets.get(path, 0))
            for raw in f:
                line = raw.decode("utf-8", "replace")
                level = _level(line)
                if level is None:
                    continue
                counts[level] += 1
                message = _message(line)[:160]
                if len(firsts) < 3 and message not in firsts:
                    firsts.append(message)
        table.add_row(name, str(counts["warning"]), str(counts["error"]), "\n".join(firsts))
    return table


def print_ratio_line(label: str, value: float) -> None:
    """The last line of every benchmark: plain text, so a script can parse it."""
    sys.stdout.flush()
    print(f"ratio {label} = {value:.2f}", flush=True)


def print_percentile_ratios(
    name: str, samples: list[float], baseline_name: str, baseline: list[float]
) -> None:
    """The p50 and then the p99 of `samples` over those of `baseline`, as ratio lines."""
    for p in (50, 99):
        value = ratio(percentile(samples, p), percentile(baseline, p))
        print_ratio_line(f"{name} p{p} / {baseline_name} p{p}", value)
