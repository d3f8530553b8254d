"""The `kaohe` command line: run the stack, start campaigns, watch and drive units."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.progress import Progress
from rich.table import Table
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from domain.actions import ACTIONS
from domain.calendar import SHANGHAI, campaign_years, with_package_years
from kaohe.cli.access import access_app, token_app
from kaohe.cli.api_client import (
    FROM_TOKEN,
    DirectOption,
    api_errors,
    print_queued,
    route,
    via_api,
)
from kaohe.cli.audit import audit_app
from kaohe.cli.ballots import ballots_app, tokens_app
from kaohe.cli.calendar import calendar_app
from kaohe.cli.calibration import calibration_app
from kaohe.cli.common import (
    console,
    err_console,
    fail,
    parse_actor,
    run,
    run_update,
    serve,
)
from kaohe.cli.keys import keys_app
from kaohe.cli.report import report
from kaohe.cli.status import show_status, watch_status
from kaohe.cli.talks import talks_app
from kaohe.cli.tls import tls_app
from kaohe.client import connect
from kaohe.ingest.roster_io import (
    RosterError,
    is_table_roster,
    load_policy,
    load_roster,
    with_deadlines,
)
from kaohe.ingest.roster_tables import count_rows, write_roster_tables
from kaohe.serving import exit_flushed
from kaohe.settings import Settings, get_settings
from kaohe.starter import start_campaign
from schemas import search_attributes as sa
from schemas.common import Role, Stage
from schemas.errors import format_validation_error
from schemas.messages import ActionResult
from schemas.policy import Policy
from schemas.roster import Roster
from workflows.campaign import campaign_workflow_id, unit_workflow_id

T = TypeVar("T")

app = typer.Typer(
    help="kaohe: annual assessment (年度考核) workflows on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
schema_app = typer.Typer(help="JSON Schemas of the public messages.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(tokens_app, name="tokens")
app.add_typer(ballots_app, name="ballots")
app.add_typer(calibration_app, name="calibration")
app.add_typer(access_app, name="access")
app.add_typer(token_app, name="token")
app.add_typer(tls_app, name="tls")
app.add_typer(calendar_app, name="calendar")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(talks_app, name="talks")
roster_app = typer.Typer(
    help="Rosters as YAML, XLSX or a folder of CSV sheets.", no_args_is_help=True
)
app.add_typer(roster_app, name="roster")
app.command()(report)

SAMPLE_ROSTER = "samples/demo-roster.yaml"
UNIT_HELP = "A unit: its workflow id (kaohe-CAMPAIGN-UNIT) or CAMPAIGN/UNIT."


# ---- the stack -------------------------------------------------------------------------


@app.command()
def dev(
    demo: Annotated[bool, typer.Option(help="Also start the demo campaign and drive it.")] = False,
) -> None:
    """Run the embedded Temporal dev server, PostgreSQL and a worker until Ctrl-C."""
    from kaohe.devstack.stack import run_dev
    from worker import run_worker

    settings = get_settings()

    async def with_api(worker: Awaitable[None], database_url: str) -> None:
        """The worker, and kaohe's API beside it (unless KAOHE_API_PORT is 0)."""
        if not settings.api_port:
            await worker
            return
        from kaohe.api.server import serve_api

        tasks = [
            asyncio.ensure_future(worker),
            asyncio.ensure_future(serve_api(settings, database_url)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def worker_and_demo(database_url: str) -> None:
        if not demo:
            await with_api(run_worker(settings, database_url), database_url)
            return
        from kaohe.sim.demo import run_demo

        worker_task = asyncio.create_task(
            with_api(run_worker(settings, database_url), database_url)
        )
        try:
            try:
                await run_demo(settings, load_roster(_sample_roster()), pace=2.0)
            except Exception:  # a failed demo must not take the stack down with it
                err_console.print_exception()
                err_console.print("[red]the demo failed[/]; the stack keeps running")
            await worker_task
        finally:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)

    try:
        run(run_dev(settings, with_worker=worker_and_demo))
    except KeyboardInterrupt:
        pass


@app.command()
def worker(
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Worker processes on the task queue (one core each); a dead one is restarted.",
        ),
    ] = 1,
) -> None:
    """Run a worker against the configured Temporal and PostgreSQL."""
    if processes > 1:
        from kaohe.worker_processes import supervise

        raise typer.Exit(supervise(processes))
    from worker import run_worker

    settings = get_settings()
    try:
        serve(run_worker(settings, settings.effective_database_url))
    except KeyboardInterrupt:
        pass


@app.command()
def api() -> None:
    """Serve kaohe's API (people and integrating systems) on KAOHE_API_HOST:KAOHE_API_PORT."""
    from kaohe.api.server import serve_api

    settings = get_settings()
    try:
        serve(serve_api(settings, settings.effective_database_url))
    except KeyboardInterrupt:
        pass


@app.command()
def migrate() -> None:
    """Apply the database migrations not yet applied (idempotent), as the tables' owner
    (KAOHE_MIGRATION_DATABASE_URL), and make KAOHE_DATABASE_URL's user a member of kaohe_app."""
    from activities.db import migrate as migrate_database

    settings = get_settings()
    # As the tables' owner; then database_url's user is made a member of kaohe_app.
    applied, warnings = run(
        migrate_database(settings.effective_migration_database_url, settings.effective_database_url)
    )
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"applied: {', '.join(applied)}" if applied else "migrations up to date")


# ---- campaigns -------------------------------------------------------------------------


def _sample_roster() -> Path:
    return Path(str(resources.files("kaohe") / SAMPLE_ROSTER))


def _report_and_exit(err: RosterError) -> typer.Exit:
    err_console.print(f"[red]{err}[/]")
    for line in err.problems:
        err_console.print(f"  {line}")
    return typer.Exit(code=2)


def _load_or_exit(path: Path) -> Roster:
    """The roster, with a progress bar while a workbook or CSV folder is read."""
    try:
        if not is_table_roster(path):
            return load_roster(path)
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task(f"reading {path.name}", total=count_rows(path))
            return load_roster(path, lambda n: progress.update(task, completed=n))
    except RosterError as err:
        raise _report_and_exit(err) from err


def _policy_or_exit(path: Path | None, year: int) -> Policy:
    try:
        return load_policy(path, year)
    except RosterError as err:
        raise _report_and_exit(err) from err


@app.command()
def start(
    roster_file: Annotated[Path, typer.Argument(help="Roster: YAML, .xlsx or a CSV folder.")],
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Policy YAML; default: kaohe's for the year.")
    ] = None,
    deadline: Annotated[
        list[str] | None,
        typer.Option(
            "--deadline",
            help="This campaign's deadline of a stage in working days, e.g. talks=15 or "
            "result_use=none; repeat for more stages (the others keep the policy's).",
        ),
    ] = None,
) -> None:
    """Validate a roster and start its campaign (starting it twice starts nothing twice)."""
    roster = _load_or_exit(roster_file)
    policy = _policy_or_exit(policy_file, roster.year)
    if deadline:
        try:
            policy = with_deadlines(policy, deadline)
        except RosterError as err:
            raise _report_and_exit(err) from err
    settings = get_settings()

    async def go() -> tuple[str, bool]:
        return await start_campaign(
            await connect(settings),
            roster,
            settings.task_queue,
            policy,
            database_url=settings.effective_database_url,
        )

    for warning in with_package_years(policy, campaign_years(roster.year, dt.date.today()))[1]:
        err_console.print(f"[yellow]warning:[/] calendar {warning}")
    workflow_id, new = run(go())
    verb = "started" if new else "already exists, nothing started again:"
    console.print(f"campaign {roster.campaign_id} {verb} {workflow_id} ({len(roster.units)} units)")


@app.command()
def validate(roster_file: Path) -> None:
    """Validate a roster (YAML, .xlsx or a CSV folder) without starting anything; every
    problem is listed with its place (path, or sheet, row and column)."""
    roster = _load_or_exit(roster_file)
    cadres = sum(len(u.cadres) for u in roster.units)
    console.print(f"[green]ok[/]: {len(roster.units)} units, {cadres} cadres")


@roster_app.command("convert")
def roster_convert(
    source: Annotated[Path, typer.Argument(help="Roster: YAML, .xlsx or a CSV folder.")],
    target: Annotated[Path, typer.Argument(help="Where: .xlsx, .yaml, or a folder for CSV.")],
) -> None:
    """Write a roster in another form (e.g. the demo's YAML as a workbook to fill in)."""
    roster = _load_or_exit(source)
    if target.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = roster.model_dump(mode="json", exclude_defaults=True)
        target.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
    else:
        write_roster_tables(roster, target)
    console.print(f"wrote {target} ({len(roster.units)} units)")


@app.command()
def demo(
    pace: Annotated[float, typer.Option(help="Seconds between simulated actions.")] = 2.0,
    roster_file: Annotated[Path | None, typer.Option("--roster")] = None,
) -> None:
    """Start the sample campaign and let simulated integrators drive every unit."""
    from kaohe.sim.demo import run_demo

    roster = _load_or_exit(roster_file or _sample_roster())
    run(run_demo(get_settings(), roster, pace=pace))


# ---- watching --------------------------------------------------------------------------


@app.command()
def status(
    workflow_id: Annotated[str | None, typer.Argument(help=UNIT_HELP)] = None,
    campaign: Annotated[str | None, typer.Option(help="A campaign id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep the table live until Ctrl-C or the end.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two refreshes of --watch.")
    ] = 5.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop --watch after this many refreshes.")
    ] = None,
    direct: DirectOption = False,
) -> None:
    """Show a unit's progress, or a campaign's units per stage; --watch keeps it live (a
    refresh that fails is shown and the next one tries again). With KAOHE_API_TOKEN through
    kaohe's API (a campaign: its progress, without the units' list)."""
    if (workflow_id is None) == (campaign is None):
        raise fail("give either a WORKFLOW_ID or --campaign ID")
    if watch and as_json:
        raise fail("--watch draws a live table; --json prints once")
    settings = get_settings()
    api = via_api(direct, None, settings)
    target = workflow_id if api else workflow_id and _workflow_id(workflow_id)
    if watch:
        try:
            with api_errors():
                ok = run(
                    watch_status(
                        settings, target, campaign, interval=interval, count=count, api=api
                    )
                )
        except KeyboardInterrupt:
            return  # Ctrl-C is how a watch ends
        if not ok:
            raise typer.Exit(1)  # the last refresh failed: its error is on the screen
        return
    try:
        with api_errors():
            run(show_status(settings, target, campaign, as_json, api=api))
    except RPCError as err:
        raise fail(str(err)) from err


@app.command("request")
def request_state(request_id: str) -> None:
    """A request queued through kaohe's API (`kaohe signal` with KAOHE_API_TOKEN): queued,
    accepted with the unit's answer, or rejected with why (exit 1)."""
    api = via_api(False, None)
    if api is None:
        raise fail("needs KAOHE_API_TOKEN: queued requests are kaohe's API's")
    with api_errors():
        found = api.call("GET", route("/v1/requests/{}", request_id))
    console.print_json(data=found)
    if found["state"] == "rejected":
        raise typer.Exit(1)


# ---- acting on a unit ------------------------------------------------------------------


def _workflow_id(target: str) -> str:
    """A unit's workflow id, from itself or from CAMPAIGN/UNIT."""
    campaign, slash, unit = target.partition("/")
    return unit_workflow_id(campaign, unit) if slash else target


def _action_payload(name: str, body: str, actor: str | None, api: bool) -> dict[str, Any]:
    if name not in ACTIONS:
        raise fail(f"unknown action {name!r}; actions: {', '.join(ACTIONS)}")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as err:
        raise fail(f"JSON: {err}") from err
    if not isinstance(payload, dict):
        raise fail("JSON: the payload must be an object")
    payload.setdefault("idempotency_key", str(uuid.uuid4()))
    if actor is not None:
        payload.setdefault("actor", parse_actor(actor).model_dump(mode="json"))
    # Checked here too, so the error names the field before anything is sent; the API puts
    # in the actor itself (and refuses one in the JSON).
    checked = {"actor": FROM_TOKEN.model_dump(mode="json"), **payload} if api else payload
    try:
        ACTIONS[name].model.model_validate(checked)
    except ValidationError as err:
        raise fail(format_validation_error(err)) from err
    return payload


def act(
    target: str,
    name: str,
    body: str,
    actor: str | None,
    direct: bool,
    *,
    default_actor: str | None = None,
    as_role: Role | None = None,
    fire_and_forget: bool = False,
) -> None:
    """Sends action NAME to a unit and prints the answer: through kaohe's API, as the API
    token's principal (fire and forget: queued, 202), or straight to Temporal as --actor
    (default_actor if none; fire and forget: a signal). Every acting command comes here."""
    settings = get_settings()
    api = via_api(direct, actor, settings)
    direct_actor = None if api else (actor or default_actor)
    payload = _action_payload(name, body, direct_actor, api is not None)
    if api is not None:
        params = {"as": as_role.value} if as_role else None
        with api_errors():
            answer = api.act(target, name, payload, params=params, queue=fire_and_forget)
        if fire_and_forget:
            print_queued(api, answer)
        else:
            console.print_json(data=answer)
        return
    if as_role is not None:
        raise fail("--as: only through kaohe's API; straight to Temporal --actor ID:ROLE says it")
    handle = _workflow_id(target)
    if fire_and_forget:
        run(_to_unit(settings, handle, lambda h: h.signal(name, payload)))
        console.print(f"signal {name} sent (idempotency_key {payload['idempotency_key']})")
        return
    send = _to_unit(
        settings,
        handle,
        lambda h: h.execute_update(
            name, payload, result_type=ActionResult, id=payload["idempotency_key"]
        ),
    )
    console.print_json(run_update(send, name).model_dump_json())


async def _to_unit(
    settings: Settings, workflow_id: str, send: Callable[[WorkflowHandle[Any, Any]], Awaitable[T]]
) -> T:
    """send(handle of the unit's workflow), on a new connection to Temporal."""
    return await send((await connect(settings)).get_workflow_handle(workflow_id))


ActorOption = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="ID:ROLE, used when the JSON has no actor (straight to Temporal only: through "
        "kaohe's API the actor is your token's).",
    ),
]
AsOption = Annotated[
    Role | None,
    typer.Option("--as", help="Through kaohe's API: which of your roles on the unit acts."),
]
Target = Annotated[str, typer.Argument(help=UNIT_HELP)]
DEPARTMENT = "department:department"  # the shortcuts' --actor straight to Temporal


@app.command()
def update(
    workflow_id: Target,
    name: str,
    body: Annotated[str, typer.Argument()] = "{}",
    actor: ActorOption = None,
    as_role: AsOption = None,
    direct: DirectOption = False,
) -> None:
    """Send an action and print its result (or the rejection): through kaohe's API with
    KAOHE_API_TOKEN, else straight to Temporal as a Workflow Update."""
    act(workflow_id, name, body, actor, direct, as_role=as_role)


@app.command()
def signal(
    workflow_id: Target,
    name: str,
    body: Annotated[str, typer.Argument()] = "{}",
    actor: ActorOption = None,
    as_role: AsOption = None,
    direct: DirectOption = False,
) -> None:
    """Send an action fire-and-forget: queued by kaohe's API (202; `kaohe request ID` reads
    the answer) with KAOHE_API_TOKEN, else a Signal (rejections show in `status`)."""
    act(workflow_id, name, body, actor, direct, as_role=as_role, fire_and_forget=True)


@app.command("close-stage")
def close_stage(
    workflow_id: Target,
    stage: Stage,
    reason: Annotated[str, typer.Option(help="Why the stage closes early.")],
    actor: ActorOption = None,
    direct: DirectOption = False,
) -> None:
    """Close the unit's current stage early, with a reason."""
    body = json.dumps({"stage": stage.value, "reason": reason})
    act(workflow_id, "close_stage", body, actor, direct, default_actor=DEPARTMENT)


@app.command()
def extend(
    workflow_id: Target,
    days: Annotated[int, typer.Option("--days", help="Working days to add.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit table).")],
    actor: ActorOption = None,
    direct: DirectOption = False,
) -> None:
    """Move the current stage's deadline by working days (clears a stalled unit)."""
    body = json.dumps({"days": days, "reason": reason})
    act(workflow_id, "extend_deadline", body, actor, direct, default_actor=DEPARTMENT)


@app.command()
def pause(
    workflow_id: Target,
    reason: Annotated[str, typer.Option(help="Why the unit's clock stops.")],
    actor: ActorOption = None,
    direct: DirectOption = False,
) -> None:
    """Stop the unit's deadline clock until `kaohe resume`."""
    act(
        workflow_id,
        "pause",
        json.dumps({"reason": reason}),
        actor,
        direct,
        default_actor=DEPARTMENT,
    )


@app.command()
def resume(
    workflow_id: Target,
    reason: Annotated[str | None, typer.Option(help="Why the clock restarts.")] = None,
    actor: ActorOption = None,
    direct: DirectOption = False,
) -> None:
    """Restart a paused unit's clock; its deadline moves by the time it was paused."""
    body = json.dumps({"reason": reason} if reason else {})
    act(workflow_id, "resume", body, actor, direct, default_actor=DEPARTMENT)


@app.command()
def cancel(
    workflow_id: Annotated[str | None, typer.Argument(help="A unit's workflow id.")] = None,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="The campaign, with every unit it runs.")
    ] = None,
) -> None:
    """Cancel a unit, or a campaign and its running units; each records `cancelled`."""
    if (workflow_id is None) == (campaign is None):
        raise fail("give a unit's WORKFLOW_ID or --campaign C (one of them)")
    target = workflow_id or campaign_workflow_id(campaign or "")
    settings = get_settings()

    async def go() -> None:
        client = await connect(settings)
        await client.get_workflow_handle(target).cancel()

    try:
        run(go())
    except RPCError as err:
        raise fail(f"{target}: {err}") from err
    console.print(f"cancellation requested: {target}")


@app.command()
def stalled(
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
) -> None:
    """Units past a stage deadline (KaoheStalled=true), from Temporal's visibility store."""
    query = "KaoheStalled = true AND WorkflowType = 'UnitAssessment'"
    if campaign:
        query += f" AND KaoheCampaign = {json.dumps(campaign)}"
    settings = get_settings()

    async def go() -> list[Any]:
        client = await connect(settings)
        return [wf async for wf in client.list_workflows(query)]

    try:
        found = run(go())
    except RPCError as err:
        raise fail(str(err)) from err
    table = Table(title=f"stalled units ({len(found)})")
    for column in ("workflow id", "unit", "stage", "escalation", "deadline"):
        table.add_column(column)
    for wf in found:
        attrs = wf.typed_search_attributes
        deadline = attrs.get(sa.DEADLINE)
        table.add_row(
            wf.id,
            attrs.get(sa.UNIT) or "",
            attrs.get(sa.STAGE) or "",
            str(attrs.get(sa.ESCALATION) or 0),
            deadline.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if deadline else "-",
        )
    console.print(table)


@app.command()
def acknowledge(
    workflow_id: Target, actor: ActorOption = None, direct: DirectOption = False
) -> None:
    """Acknowledge the notice on behalf of the unit."""
    act(workflow_id, "acknowledge_notice", "{}", actor, direct, default_actor="unit-office:unit")


# ---- schemas ---------------------------------------------------------------------------


def public_schemas() -> dict[str, dict[str, Any]]:
    from schemas.ballots import SheetsSubmission, SheetsTaken
    from schemas.calibration import CategoryCalibration, DecideCalibration
    from schemas.status import CampaignProgress, UnitStatus
    from schemas.talks import Talk, TalkRecorded, TalkView

    out = {name: rule.model.model_json_schema() for name, rule in ACTIONS.items()}
    out["action_result"] = ActionResult.model_json_schema()
    out["status"] = UnitStatus.model_json_schema()
    out["campaign_progress"] = CampaignProgress.model_json_schema()
    out["decide_calibration"] = DecideCalibration.model_json_schema()
    out["calibration"] = TypeAdapter(list[CategoryCalibration]).json_schema()
    out["roster"] = Roster.model_json_schema()
    out["stage"] = TypeAdapter(Stage).json_schema()
    out["policy"] = Policy.model_json_schema()
    # A talk at kaohe's API (POST .../talks, GET .../talks/{ref}): its content never reaches
    # the unit, whose record_talk carries the reference.
    out["talk"] = Talk.model_json_schema()
    out["talk_recorded"] = TalkRecorded.model_json_schema()
    out["talk_view"] = TalkView.model_json_schema()
    # Ballot sheets at kaohe's API (POST .../ballots): they never reach the unit either.
    out["sheets_submission"] = SheetsSubmission.model_json_schema()
    out["sheets_taken"] = SheetsTaken.model_json_schema()
    return out


@schema_app.command("export")
def schema_export(directory: Path) -> None:
    """Write the JSON Schema of every update/signal, query result, the roster and the policy."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in public_schemas().items():
        (directory / f"{name}.json").write_text(
            json.dumps(schema, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    console.print(f"wrote {len(public_schemas())} schemas to {directory}")


# ---- results out: `kaohe report` (kaohe/cli/report.py) ---------------------------------


def main() -> None:
    """The `kaohe` console script; it leaves through exit_flushed (os._exit)."""
    try:
        app()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    exit_flushed(code)
