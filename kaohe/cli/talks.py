"""`kaohe talks show UNIT TALK_REF`: a talk's content, read through kaohe's API as the unit's
assessment group (KAOHE_API_TOKEN), which audits each read (a `talk_read` row naming who).
There is no direct path: a talk's content is in no workflow's history, and reading it is the
group's permission, not an operator's."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from kaohe.cli.api_client import api_errors, route, via_api
from kaohe.cli.common import console, fail

talks_app = typer.Typer(
    help="Individual talks (个别谈话): read one, as the unit's assessment group (audited).",
    no_args_is_help=True,
)


@talks_app.command("show")
def show(
    unit: Annotated[str, typer.Argument(help="A unit: its workflow id or CAMPAIGN/UNIT.")],
    talk_ref: Annotated[str, typer.Argument(help="The talk's reference (talk-…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a talk's content and metadata; the read is recorded in the audit table."""
    api = via_api(False, None)
    if api is None:
        raise fail(
            "kaohe talks show reads through kaohe's API as the unit's assessment group: set "
            "KAOHE_API_TOKEN (and KAOHE_API_URL)",
            code=2,
        )
    with api_errors():
        campaign, unit_id = api.unit(unit)
        path = route("/v1/campaigns/{}/units/{}/talks/{}", campaign, unit_id, talk_ref)
        talk = api.call("GET", path)
    if as_json:
        console.print_json(json.dumps(talk, ensure_ascii=False))
        return
    recorded = "counted by the unit" if talk["recorded"] else "stored, not counted by the unit"
    console.print(
        f"[bold]{escape(talk['talk_ref'])}[/] talk {escape(talk['talk_id'])} of "
        f"{escape(campaign)}/{escape(unit_id)} ({recorded})\n"
        f"{escape(talk['talk_date'])} · interviewer {escape(talk['interviewer'])} · "
        f"interviewee {escape(talk['interviewee_role'])} · stored by "
        f"{escape(talk['stored_by'])} · sha256 {escape(talk['digest'])}"
    )
    console.print(talk["content"], markup=False, highlight=False, soft_wrap=True)
