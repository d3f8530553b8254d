"""What every `kaohe` command group shares: consoles, running a coroutine, failing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from kaohe.client import ConnectionSettingsError
from kaohe.logs import configure_logging
from kaohe.settings import get_settings
from schemas.common import Actor
from schemas.errors import format_validation_error

T = TypeVar("T")

console = Console()
# Errors are not wrapped: a script reading them gets each on one line.
err_console = Console(stderr=True, soft_wrap=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a command's coroutine with logging configured from the settings; settings that
    make no connection end the command with their message, not a traceback."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(coro)
    except ConnectionSettingsError as err:
        raise fail(str(err)) from None


def serve(coro: Coroutine[Any, Any, None]) -> None:
    """`run` for a long-running command (worker, codec server): SIGTERM (Kubernetes, systemd,
    docker stop) cancels it, so it shuts down as on Ctrl-C and exits with 0. Python's default
    dies at once, and a container's PID 1 ignores SIGTERM altogether."""
    run(_until_sigterm(coro))


async def _until_sigterm(coro: Coroutine[Any, Any, None]) -> None:
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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Prints the error; the caller raises what this returns."""
    err_console.print(f"[red]error:[/] {message}")
    return typer.Exit(code=code)


def parse_actor(actor: str) -> Actor:
    """`ID:ROLE` -> Actor, or fail naming the option."""
    ident, _, role = actor.partition(":")
    try:
        return Actor.model_validate({"id": ident, "role": role})
    except ValidationError as err:
        raise fail(f"--actor: {format_validation_error(err)} (use ID:ROLE)") from err
