"""Fault injection for the tests: `KAOHE_FAILPOINT=<name>` makes the worker process die at
that point as `kill -9` would (no cleanup, no reply to Temporal), so a test can put a crash
exactly between a committed write and the workflow recording it. Unset, it costs a lookup.
"""

from __future__ import annotations

import os

ENV = "KAOHE_FAILPOINT"
KILLED = 137  # the exit status of a process killed by SIGKILL


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(KILLED)
