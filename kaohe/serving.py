"""Running a coroutine as a process's job: logging configured from the settings, SIGTERM as a
clean stop, and the way out. What the CLI (kaohe/cli/) and `python worker.py` share; it knows
nothing of the CLI, so worker.py can use it without importing the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from activities.keyring import KeyringError
from kaohe.client import ConnectionSettingsError
from kaohe.logs import configure_logging
from kaohe.settings import Settings, get_settings

T = TypeVar("T")


def run_logged(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with logging configured from the settings."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(coro)


async def until_sigterm(coro: Coroutine[Any, Any, None]) -> None:
    """Runs coro; SIGTERM (Kubernetes, systemd, docker stop) cancels it, and it returns as if
    it had ended. Python's default dies at once, and a container's PID 1 ignores SIGTERM."""
    main = asyncio.ensure_future(coro)
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        main.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await main
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def exit_flushed(code: int) -> NoReturn:
    """Leaves with os._exit once output is flushed: the Temporal client's Rust threads can
    otherwise abort CPython's finalization of a short process ("PyGILState_Release ...
    finalizing", temporalio/sdk-python#300)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve_main(service: Callable[[Settings], Coroutine[Any, Any, None]]) -> NoReturn:
    """A long-running service's `__main__` (`python worker.py`), as its `kaohe` command runs
    it: until Ctrl-C or SIGTERM, exit code 0; settings that make no connection end it with
    their message and 1."""
    settings = get_settings()
    code = 0
    try:
        run_logged(until_sigterm(service(settings)))
    except KeyboardInterrupt:
        pass
    except (ConnectionSettingsError, KeyringError) as err:  # each names its setting
        print(f"error: {err}", file=sys.stderr)
        code = 1
    exit_flushed(code)
