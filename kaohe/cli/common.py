"""What every `kaohe` command group shares: consoles, running a coroutine, failing."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from kaohe.client import ConnectionSettingsError
from kaohe.serving import run_logged, until_sigterm
from schemas.common import Actor
from schemas.errors import format_validation_error

T = TypeVar("T")

console = Console()
# Errors are not wrapped: a script reading them gets each on one line.
err_console = Console(stderr=True, soft_wrap=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a command's coroutine with logging configured from the settings; settings that
    make no connection end the command with their message, not a traceback."""
    try:
        return run_logged(coro)
    except ConnectionSettingsError as err:
        raise fail(str(err)) from None


def serve(coro: Coroutine[Any, Any, None]) -> None:
    """`run` for a long-running command (worker, codec server): SIGTERM (Kubernetes, systemd,
    docker stop) cancels it, so it shuts down as on Ctrl-C and exits with 0."""
    run(until_sigterm(coro))


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
