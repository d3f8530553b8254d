"""`kaohe keys list|new|rotate`: the payload, talk and assertion keyrings (kaohe/keys.py).
Prints key ids, never key material, except `new`, whose output is the entry to store.
kaohe/cli/main.py mounts it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from activities.keyring import KeyringError
from kaohe.cli.common import console, fail
from kaohe.keys import KINDS, KeyFileError, Kind, env_name, key_file, key_ids, new_entry, rotate
from kaohe.settings import Settings

keys_app = typer.Typer(
    help="The payload, talk and assertion keys: list their ids, make one, rotate.",
    no_args_is_help=True,
)

KindArg = Annotated[Kind, typer.Argument(help="payload, talk or assertion")]


@keys_app.command("list")
def list_keys() -> None:
    """Each keyring's ids, current first, and where it comes from."""
    settings = Settings()
    table = Table()
    for column in ("keyring", "from", "key ids (current first)"):
        table.add_column(column)
    for kind in KINDS:
        source = (
            env_name(kind)
            if getattr(settings, f"{kind}_keys") is not None
            else str(key_file(settings, kind))
        )
        try:
            ids = key_ids(settings, kind)
        except (KeyringError, ValueError) as err:
            raise fail(f"{kind}: {err}") from err
        table.add_row(kind, source, ", ".join(ids) if ids else "[red]none[/]")
    console.print(table)


@keys_app.command("new")
def new(kind: KindArg) -> None:
    """A new random key as `id:base64`, to put first in the keyring's setting (the old
    entries after it); nothing is written."""
    typer.echo(new_entry(kind))


@keys_app.command("rotate")
def rotate_keys(kind: KindArg) -> None:
    """A new random key first in the key file (older keys kept: they still open and verify
    what they made). Restart the workers and the API to use it."""
    settings = Settings()
    try:
        key_id = rotate(settings, kind)
    except (KeyFileError, KeyringError) as err:
        raise fail(str(err)) from err
    console.print(
        f"{kind} key {key_id} is now current in {key_file(settings, kind)}; restart the "
        "workers and kaohe's API to use it"
    )
