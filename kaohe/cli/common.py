"""What every `kaohe` command group shares: consoles, running a coroutine (on the database,
or sending an update), failing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.keyring import KeyringError
from kaohe.client import ConnectionSettingsError
from kaohe.serving import run_logged, until_sigterm
from kaohe.settings import Settings
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
    except (ConnectionSettingsError, KeyringError) as err:  # each names its setting
        raise fail(str(err)) from None


def run_update(coro: Coroutine[Any, Any, T], name: str) -> T:
    """`run` for a coroutine that sends the Workflow Update `name`: its rejection, or an error
    from Temporal, ends the command with the message."""
    try:
        return run(coro)
    except WorkflowUpdateFailedError as err:
        raise fail(f"{name} rejected: {err.cause}") from err
    except RPCError as err:
        raise fail(str(err)) from err


async def on_database(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """work(conn) on a connection of its own to kaohe's database, closed afterwards."""
    conn = await asyncpg.connect(settings.effective_database_url)
    try:
        return await work(conn)
    finally:
        await conn.close()


def run_on_database(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`run(on_database(...))`; a database that cannot be reached, or fails, ends the command
    with `database: ...`."""
    try:
        return run(on_database(settings, work))
    except (OSError, asyncpg.PostgresError) as err:
        raise fail(f"database: {err}") from err


def serve(coro: Coroutine[Any, Any, None]) -> None:
    """`run` for a long-running command (worker, API): SIGTERM (Kubernetes, systemd,
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
