"""`kaohe tokens ...` and `kaohe ballots ...`: ballot tokens, the bulk ballot import and the
receipts of a closed evaluation.

kaohe/cli/main.py mounts these: `app.add_typer(tokens_app, name="tokens")` and
`app.add_typer(ballots_app, name="ballots")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.ballot_pool import counted_receipts
from kaohe.cli.common import console, err_console, fail, on_database, run, run_on_database
from kaohe.client import connect
from kaohe.ingest.ballot_io import (
    BallotImportError,
    ImportResult,
    IssuedTokens,
    TokensError,
    import_ballots,
    issue_tokens,
    write_tokens_csv,
)
from kaohe.ingest.ballot_slips import write_tokens_pdf
from kaohe.settings import get_settings
from workflows.campaign import unit_workflow_id

tokens_app = typer.Typer(
    help="One-time anonymous ballot tokens (only their hashes are stored).", no_args_is_help=True
)
ballots_app = typer.Typer(
    help="Ballot sheets: the bulk import, and the receipts once the evaluation closes.",
    no_args_is_help=True,
)


# Callbacks make both apps command groups even with one command each (`... tokens issue`).
@tokens_app.callback()
def _tokens() -> None:
    pass


@ballots_app.callback()
def _ballots() -> None:
    pass


CampaignOption = Annotated[str, typer.Option("--campaign", help="The campaign id.")]
UnitOption = Annotated[str, typer.Option("--unit", help="The unit id.")]


@tokens_app.command("issue")
def tokens_issue(
    campaign: CampaignOption,
    unit: UnitOption,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="CSV to write (rater_group,token); default tokens-C-U.csv unless --pdf is given.",
        ),
    ] = None,
    pdf: Annotated[
        Path | None,
        typer.Option(
            "--pdf",
            help="PDF of QR slips to cut out, ten to an A4 page, each rater group on pages of "
            "its own; each code opens the voting page (vote_url) with its token.",
        ),
    ] = None,
    reissue: Annotated[
        bool, typer.Option("--reissue", help="Delete the unused tokens and issue them anew.")
    ] = False,
) -> None:
    """Issue a unit's one-time ballot tokens into a new CSV (rater_group,token) and/or a PDF
    of QR slips (--pdf).

    `planned` tokens per rater group; only their sha256 is stored, so the files are the one
    place they exist. --reissue deletes the unused tokens and issues as many as each group
    has not used yet."""
    settings = get_settings()
    csv_path = out or (None if pdf else Path(f"tokens-{campaign}-{unit}.csv"))
    written = [p for p in (csv_path, pdf) if p is not None]
    for path in written:
        if path.exists():
            raise fail(f"{path} exists; tokens are written to a new file (choose another)")
    workflow_id = unit_workflow_id(campaign, unit)

    async def issue(conn: asyncpg.Connection) -> IssuedTokens:
        row = await conn.fetchrow(
            "SELECT u.name, c.title FROM units u JOIN campaigns c USING (campaign_id) "
            "WHERE u.workflow_id = $1",
            workflow_id,
        )
        unit_name, title = (row["name"], row["title"]) if row else (unit, campaign)

        def write(issued: IssuedTokens) -> None:
            # Inside the transaction: a file that cannot be written issues nothing, and
            # leaves no other file behind.
            try:
                if pdf is not None:
                    write_tokens_pdf(
                        pdf,
                        issued,
                        vote_url=settings.effective_vote_url,
                        unit_name=unit_name,
                        title=title,
                    )
                if csv_path is not None:
                    write_tokens_csv(csv_path, issued)
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise

        return await issue_tokens(conn, workflow_id, reissue=reissue, before_commit=write)

    try:
        issued = run(on_database(settings, issue))
    except TokensError as err:
        raise fail(str(err)) from err
    table = Table(title=f"ballot tokens of {workflow_id}", title_justify="left")
    for column in ("group", "label", "planned", "used", "issued now"):
        table.add_column(column, justify="left" if column in ("group", "label") else "right")
    for g in issued.groups:
        table.add_row(g.group_id, g.label, str(g.planned), str(g.used), str(g.issued))
    console.print(table)
    if issued.deleted_unused:
        console.print(f"{issued.deleted_unused} unused tokens issued before were deleted")
    console.print(
        f"[green]{sum(g.issued for g in issued.groups)} tokens written to "
        f"{' and '.join(map(str, written))}[/] (readable by you only): hand one to each "
        "participant of its group; they are not stored anywhere else."
    )
    if pdf is not None:
        console.print(f"the slips' codes open {settings.effective_vote_url} (vote_url)")


@ballots_app.command("import")
def ballots_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV with header sheet,token,kind,target_id,item,option (one row per mark).",
        ),
    ],
    campaign: CampaignOption,
    unit: UnitOption,
    batch_id: Annotated[
        str | None,
        typer.Option("--batch-id", help="Batch id; default import-<sha256 prefix of the file>."),
    ] = None,
) -> None:
    """Import a ballot CSV in one transaction and register it with the unit's workflow.

    Sheets are checked as kaohe's API checks them, and every problem is shown
    with its line; then the tokens are used, the marks COPYed and the batch announced with
    the register_ballot_batch update. Running it again with the same file changes nothing
    and prints the first result."""
    settings = get_settings()
    progress = Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )

    async def go() -> ImportResult:
        client = await connect(settings)
        conn = await asyncpg.connect(settings.effective_database_url)
        try:
            with progress:
                return await import_ballots(
                    client, conn, file, campaign, unit, batch_id=batch_id, progress=progress
                )
        finally:
            await conn.close()

    try:
        result = run(go())
    except BallotImportError as err:
        err_console.print(
            f"[red]{file}: {len(err.problems)} problem(s); nothing imported[/]", soft_wrap=True
        )
        for problem in err.problems:  # one line each, never wrapped: scripts grep them
            err_console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from err
    except WorkflowUpdateFailedError as err:
        raise fail(
            f"register_ballot_batch rejected: {err.cause}; the batch is stored but not counted"
        ) from err
    except RPCError as err:
        raise fail(str(err)) from err
    table = Table(title=f"ballot import into {result.workflow_id}", show_header=False)
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    table.add_row("batch", result.batch_id)
    table.add_row("stored", "now" if result.stored else "already (a re-run: nothing stored)")
    table.add_row("sheets", str(result.sheets))
    table.add_row("ballots", str(result.ballots))
    table.add_row("marks", str(result.rows))
    table.add_row(
        "sheets per group", ", ".join(f"{g} {n}" for g, n in result.sheets_by_group.items())
    )
    table.add_row("checksum", result.checksum)
    console.print(table)
    console.print_json(data=result.update)


@ballots_app.command("receipts")
def ballots_receipts(
    campaign: Annotated[str, typer.Argument(help="The campaign id.")],
    unit: Annotated[str, typer.Argument(help="The unit id.")],
) -> None:
    """The receipt codes of a unit's counted sheets, one a line, sorted, once its evaluation
    is closed (before: 测评尚未结束, exit code 3).

    Each rater got one code with their sheet (the voting page, or a ballot system); a code
    in this list says that sheet was counted, and nothing of what it chose. Read straight
    from kaohe's database (ballot_receipts), like the other ballot commands; the same list
    is public at GET /v1/campaigns/CAMPAIGN/units/UNIT/receipts."""
    settings = get_settings()
    workflow_id = unit_workflow_id(campaign, unit)

    async def read(conn: asyncpg.Connection) -> tuple[bool, list[str] | None]:
        known = await conn.fetchval("SELECT true FROM units WHERE workflow_id = $1", workflow_id)
        return bool(known), await counted_receipts(conn, workflow_id) if known else None

    known, receipts = run_on_database(settings, read)
    if not known:
        raise fail(f"no unit {unit} in campaign {campaign} ({workflow_id})")
    if receipts is None:
        raise fail(
            f"测评尚未结束: the evaluation of {workflow_id} is not closed yet; its receipts "
            "are listed once it closes",
            code=3,
        )
    for receipt in receipts:
        typer.echo(receipt)
    err_console.print(f"{len(receipts)} counted receipts of {workflow_id}")
