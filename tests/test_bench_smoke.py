"""The benchmarks run end to end and print their ratio last (figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_unit_bench_prints_its_ratio_last() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "unit",
            "--units",
            "2",
            "--warmup",
            "0",
            "--floor-workflows",
            "5",
            "--floor-updates",
            "5",
            "--floor-warmup",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio unit events/s / floor events/s = \d+\.\d\d", last.strip()), last


def _bench(*args: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return [line.strip() for line in run.stdout.strip().splitlines()]


def test_campaign_bench_prints_both_ratios_last() -> None:
    lines = _bench("campaign", "--units", "3", "--floor-workflows", "5", "--floor-warmup", "0")
    assert re.fullmatch(
        r"ratio campaign wall time / \(events / floor events/s\) = \d+\.\d\d", lines[-2]
    ), lines[-2]
    assert re.fullmatch(r"ratio unit events/s / floor events/s = \d+\.\d\d", lines[-1]), lines[-1]


def test_latency_bench_prints_p99_ratio_last() -> None:
    lines = _bench("latency", "--updates", "5", "--warmup", "1")
    assert re.fullmatch(r"ratio record_talk p99 / floor update p99 = \d+\.\d\d", lines[-1])


def test_idle_bench_lists_every_stalled_unit() -> None:
    lines = _bench("idle", "--units", "20", "--stall-after", "2")
    assert re.fullmatch(r"ratio list stalled units / list floor workflows = \d+\.\d\d", lines[-1])
    assert re.fullmatch(r"ratio kaohe worker peak RSS / 1 GiB = \d+\.\d\d", lines[-2])


def test_api_bench_prints_p99_ratio_last() -> None:
    lines = _bench("api", "--updates", "5", "--warmup", "1")
    assert re.fullmatch(r"ratio API p99 / direct p99 = \d+\.\d\d", lines[-1]), lines[-1]


def test_vote_bench_prints_its_figures_and_ratio_last() -> None:
    lines = _bench("vote", "--meetings", "2", "--raters", "10", "--cadres", "2", "--rounds", "2")
    assert re.fullmatch(r"vote accept p50 = \d+\.\d ms", lines[-4]), lines[-4]
    assert re.fullmatch(r"vote accept p99 = \d+\.\d ms", lines[-3]), lines[-3]
    assert re.fullmatch(r"ratio vote sheets/s / bare sheets/s = \d+\.\d\d", lines[-1]), lines[-1]
