"""Logs in production are JSON lines only, the SDK's standard-library records included."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, structlog
from kaohe.logs import configure_logging
configure_logging("auto", "INFO")
structlog.get_logger("kaohe.test").info("stage entered", workflow_id="kaohe-c-u1", stage="talks")
logging.getLogger("temporalio.worker").warning(
    "task failed", extra={"temporal_workflow": {"workflow_id": "kaohe-c-u1"}}
)
logging.getLogger("temporalio.worker").debug("below the level")
"""


def test_auto_writes_json_lines_off_a_terminal_for_structlog_and_the_sdk() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(r["event"], r["level"]) for r in lines] == [
        ("stage entered", "info"),
        ("task failed", "warning"),
    ]
    ours, sdk = lines
    assert ours["workflow_id"] == "kaohe-c-u1" and ours["stage"] == "talks"
    assert sdk["logger"] == "temporalio.worker"
    assert sdk["temporal_workflow"] == {"workflow_id": "kaohe-c-u1"}
    assert all("timestamp" in r for r in lines)
