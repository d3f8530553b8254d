"""`kaohe audit`: verify the audit chains (kaohe/audit.py) and anchor their heads outside the
database (kaohe/anchors.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaohe.anchors import (
    Anchorer,
    AnchorKeyError,
    AnchorKeys,
    anchor_file,
    anchor_keys,
    read_anchors,
)
from kaohe.audit import verify_audit
from kaohe.cli.common import console, err_console, fail, run_on_database
from kaohe.settings import get_settings

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

CampaignOption = Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")]


def _keys() -> AnchorKeys:
    try:
        return anchor_keys(get_settings())
    except AnchorKeyError as err:
        raise fail(str(err)) from None


@audit_app.command("verify")
def audit_verify(
    campaign: CampaignOption = None,
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="A file of signed chain heads (kaohe audit anchor, the worker's anchors file or "
            "its JSON log): each must still be in its chain with the hash it was signed with.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Recompute every unit's audit hash chain here (not in the database); exit 1 naming each
    edited, deleted or rewritten row."""
    problems: list[str] = []
    held = None
    if anchors is not None:
        keys = _keys()
        if not keys.public:
            raise fail(
                "no anchor keys to check the anchors' signatures with: set "
                "KAOHE_AUDIT_ANCHOR_KEYS or KAOHE_AUDIT_ANCHOR_PUBLIC_KEYS"
            )
        held, problems = read_anchors(anchors, keys)
    checked, found = run_on_database(get_settings(), lambda c: verify_audit(c, campaign, held))
    problems += found
    for problem in problems:
        err_console.print(f"[red]tampered:[/] {problem}")
    if problems:
        raise typer.Exit(code=1)
    anchored = "" if held is None else f", {len(held)} signed anchors hold"
    console.print(f"audit log intact: {checked} chained rows verified{anchored}")


@audit_app.command("anchor")
def audit_anchor(
    campaign: CampaignOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The anchors file to append to (default: KAOHE_AUDIT_ANCHOR_FILE, or "
            "audit-anchors.jsonl in the data dir).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Sign every unit's audit chain head and append it to the anchors file, after checking
    the rows since the unit's last anchor extend it; exit 1 naming a chain that does not."""
    keys = _keys()
    if not keys.can_sign:
        raise fail(
            "no audit anchor key: set KAOHE_AUDIT_ANCHOR_KEYS (`kaohe dev` makes one in the "
            "data dir)"
        )
    path = out or anchor_file(get_settings())
    anchorer = Anchorer(keys, path)
    written, problems = run_on_database(get_settings(), lambda c: anchorer.anchor(c, campaign))
    for problem in problems:
        err_console.print(f"[red]tampered:[/] {problem}")
    console.print(f"{len(written)} chain heads anchored in {path}")
    if problems:
        raise typer.Exit(code=1)


@audit_app.command("anchor-key")
def audit_anchor_key() -> None:
    """Print the anchors' public keys (KAOHE_AUDIT_ANCHOR_PUBLIC_KEYS), for an auditor who
    verifies anchors without being able to make them."""
    keys = _keys()
    if not keys.public:
        raise fail("no audit anchor key: set KAOHE_AUDIT_ANCHOR_KEYS")
    console.print(keys.public_text(), soft_wrap=True)
