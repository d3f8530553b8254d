"""`kaohe access ...` and `kaohe token mint`: role bindings, systems' API keys, and tokens of
the dev stack's own issuer. kaohe/cli/main.py mounts them.

The CLI reaches PostgreSQL with the operator's own database credentials; every change is in
the access log under `cli:<os user>`."""

from __future__ import annotations

import getpass
from typing import Annotated

import asyncpg
import typer
from rich.table import Table

from kaohe.access import api_keys
from kaohe.access.bindings import (
    ALL_UNITS,
    CODEC_ROLES,
    EVERY_CAMPAIGN,
    Binding,
    grant,
    list_bindings,
    revoke,
)
from kaohe.access.issuer import DevIssuer
from kaohe.cli.common import console, fail, run_on_database
from kaohe.settings import get_settings
from schemas.common import Role

access_app = typer.Typer(
    help="Who may act on a campaign and its units (role bindings) and systems' API keys.",
    no_args_is_help=True,
)
key_app = typer.Typer(help="API keys of integrating systems.", no_args_is_help=True)
access_app.add_typer(key_app, name="key")
token_app = typer.Typer(help="Bearer tokens of the dev stack's own issuer.", no_args_is_help=True)

Campaign = Annotated[
    str | None,
    typer.Option(
        "--campaign",
        help="Campaign id; required, except for codec_decode and codec_encode, which are for "
        "every payload (a payload names no campaign) and take none.",
    ),
]
Unit = Annotated[str, typer.Option("--unit", help="Unit id; left out: every unit.")]
Cadre = Annotated[str, typer.Option("--cadre", help="Role cadre: the cadre id this person is.")]


def _operator() -> str:
    return f"cli:{getpass.getuser()}"


def _binding(principal: str, role: Role, campaign: str | None, unit: str, cadre: str) -> Binding:
    if role in CODEC_ROLES:
        if campaign is not None or unit or cadre:
            raise fail(
                f"{role.value} is for every payload of the namespace: a payload names neither "
                "its campaign nor its unit, so leave out --campaign, --unit and --cadre"
            )
        return Binding(EVERY_CAMPAIGN, principal, role)
    if campaign is None:
        raise fail(f"{role.value}: --campaign is required")
    return Binding(campaign, principal, role, unit, cadre)


@access_app.command("grant")
def grant_cmd(
    principal: str,
    role: Role,
    campaign: Campaign = None,
    unit: Unit = ALL_UNITS,
    cadre: Cadre = "",
) -> None:
    """Give PRINCIPAL (a token subject or a system id) ROLE on a campaign, or on one unit
    (codec_decode, codec_encode: on every payload, through POST /v1/codec/decode, /encode)."""
    b = _binding(principal, role, campaign, unit, cadre)

    async def go(conn: asyncpg.Connection) -> bool:
        return await grant(conn, b, _operator())

    try:
        new = run_on_database(get_settings(), go)
    except ValueError as err:
        raise fail(str(err)) from err
    console.print(f"{principal}: {b.where()}" + ("" if new else " (already)"))


@access_app.command("revoke")
def revoke_cmd(
    principal: str,
    role: Role,
    campaign: Campaign = None,
    unit: Unit = ALL_UNITS,
    cadre: Cadre = "",
) -> None:
    """Take a binding back."""
    b = _binding(principal, role, campaign, unit, cadre)

    async def go(conn: asyncpg.Connection) -> bool:
        return await revoke(conn, b, _operator())

    if not run_on_database(get_settings(), go):
        raise fail(f"{principal} is not {b.where()}")
    console.print(f"{principal}: no longer {b.where()}")


@access_app.command("list")
def list_cmd(
    campaign: Annotated[str | None, typer.Option("--campaign")] = None,
    unit: Annotated[str | None, typer.Option("--unit")] = None,
    principal: Annotated[str | None, typer.Option("--principal")] = None,
) -> None:
    """The bindings, by campaign, unit and role."""

    async def go(conn: asyncpg.Connection) -> list[Binding]:
        return await list_bindings(conn, campaign, unit, principal)

    table = Table("campaign", "unit", "role", "principal", "cadre")
    for b in run_on_database(get_settings(), go):
        codec = b.role in CODEC_ROLES
        table.add_row(
            "(every payload)" if codec else b.campaign_id,
            "" if codec else b.unit_id or "(every unit)",
            b.role.value,
            b.principal,
            b.cadre_id,
        )
    console.print(table)


@key_app.command("create")
def key_create(system: str) -> None:
    """A new API key for SYSTEM, printed once (only its hash is kept)."""

    async def go(conn: asyncpg.Connection) -> str:
        return await api_keys.create_key(conn, system, _operator())

    print(run_on_database(get_settings(), go))


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke the key whose id is KEY_ID (the part after kh_)."""

    async def go(conn: asyncpg.Connection) -> bool:
        return await api_keys.revoke_key(conn, key_id, _operator())

    if not run_on_database(get_settings(), go):
        raise fail(f"no live API key {key_id!r}")
    console.print(f"API key {key_id} revoked")


@token_app.command("mint")
def mint(
    subject: str,
    ttl: Annotated[int, typer.Option("--ttl", min=60, max=86_400, help="Seconds.")] = 3600,
    name: Annotated[str | None, typer.Option("--name", help="The person's name.")] = None,
) -> None:
    """A bearer token for SUBJECT from the dev stack's issuer (what it may do comes from its
    bindings: `kaohe access grant`)."""
    settings = get_settings()
    try:
        issuer = DevIssuer.in_dir(settings.data_dir)
    except FileNotFoundError as err:
        raise fail(str(err)) from err
    print(issuer.mint(subject, ttl=ttl, name=name, audience=settings.oidc_audience))


@token_app.command("codec-login")
def codec_login(subject: str) -> None:
    """A one-time link that logs SUBJECT's browser into the dev UI's codec (kaohe's API sets
    an HttpOnly cookie; the UI then decodes what SUBJECT's codec_decode binding allows)."""
    from kaohe.api.codec import login_link

    settings = get_settings()
    try:
        issuer = DevIssuer.in_dir(settings.data_dir)
    except FileNotFoundError as err:
        raise fail(str(err)) from err
    print(login_link(settings.effective_api_url, issuer, subject, settings.oidc_audience))
