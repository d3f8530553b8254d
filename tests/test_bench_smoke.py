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
