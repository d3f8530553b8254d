"""`kaohe tls certs DIR`: the private CA and certificates that lock Temporal down to kaohe's
own services in deploy/ (kaohe/certs.py). kaohe/cli/main.py mounts it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaohe.certs import CLIENTS, SERVER, SERVER_NAMES, make_deploy_certs
from kaohe.cli.common import console

tls_app = typer.Typer(help="mTLS between Temporal and kaohe's services.", no_args_is_help=True)


@tls_app.command("certs")
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write them, e.g. deploy/certs.")],
    server_name: Annotated[
        list[str] | None,
        typer.Option(
            "--server-name",
            help="A DNS name or IP the Temporal frontend is reached by (repeat it); "
            f"default: {', '.join(SERVER_NAMES)}.",
        ),
    ] = None,
    renew: Annotated[
        bool, typer.Option("--renew", help="Reissue every leaf (same CA); then restart.")
    ] = False,
) -> None:
    """Make the CA (kept if there), Temporal's server certificate and one client certificate
    per service (kaohe-worker, kaohe-api, kaohe-cli, temporal-ui, temporal-admin)."""
    written = make_deploy_certs(
        directory, server_names=server_name or SERVER_NAMES, clients=CLIENTS, renew=renew
    )
    if not written:
        console.print(f"{directory}: every certificate is there (--renew reissues them)")
        return
    for name in written:
        what = (
            "CA (its key stays here)"
            if name == "ca"
            else ("Temporal's server" if name == SERVER else "client")
        )
        console.print(f"{directory / name}.crt  {what}")
