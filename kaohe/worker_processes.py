"""`kaohe worker --processes N`: N worker processes on one task queue, kept running.

One Python process runs workflow code on one core; a large campaign wants more. Each child is
a whole worker (its own Temporal connection, sticky cache and database pool), so the task
queue spreads work across them as it would across machines. A child that dies is started
again (after a growing pause if it keeps dying at once); SIGTERM or Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import structlog

from kaohe.settings import get_settings

log = structlog.get_logger("kaohe.worker")

# The worker itself (worker.py's __main__), one per child.
WORKER_COMMAND = [sys.executable, "-m", "worker"]
QUICK_EXIT = 10.0  # seconds: a child that dies sooner is restarted after a growing pause
MAX_PAUSE = 30.0
STOP_GRACE = 30.0


class Child:
    def __init__(self, index: int, command: list[str], env: dict[str, str] | None = None) -> None:
        self.index = index
        self.command = command
        self.env = env
        self.pause = 0.0
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        process = subprocess.Popen(self.command, env=self.env)
        log.info("worker process started", index=self.index, pid=process.pid)
        return process

    def check(self) -> None:
        """Starts the child again if it exited, pausing first if it died quickly."""
        code = self.process.poll()
        if code is None:
            return
        quick = time.monotonic() - self.started < QUICK_EXIT
        self.pause = min(MAX_PAUSE, max(1.0, self.pause * 2)) if quick else 0.0
        log.warning(
            "worker process exited; starting it again",
            index=self.index,
            pid=self.process.pid,
            code=code,
            pause=self.pause,
        )
        time.sleep(self.pause)
        self.process = self._spawn()


def child_env(index: int, metrics_port: int) -> dict[str, str]:
    """Each child serves its metrics on a port of its own: metrics_port + index. The first
    alone anchors the audit chains (kaohe/anchors.py): the others would sign the same heads."""
    env = dict(os.environ)
    if metrics_port:
        env["KAOHE_METRICS_PORT"] = str(metrics_port + index)
    if index:
        env["KAOHE_AUDIT_ANCHOR_INTERVAL"] = "0"
    return env


def supervise(processes: int, command: list[str] | None = None, poll: float = 0.5) -> int:
    """Runs `processes` workers until SIGTERM or SIGINT; returns the exit code."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    metrics_port = get_settings().metrics_port
    children = [
        Child(i, command or WORKER_COMMAND, child_env(i, metrics_port)) for i in range(processes)
    ]
    while not stopping:
        for child in children:
            if not stopping:
                child.check()
        time.sleep(poll)
    log.info("stopping worker processes", processes=processes)
    for child in children:
        child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    return 0
