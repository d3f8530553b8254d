"""`kaohe status`: a unit's or a campaign's progress as rich tables, printed once or kept
live (`--watch`) until Ctrl-C or until the unit or campaign is finished.

kaohe/cli/main.py's `status` command parses the options and calls show_status / watch_status,
with the client of kaohe's API when the CLI goes through it (kaohe/cli/api_client.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowExecution

from domain.calendar import SHANGHAI
from domain.stages import TERMINAL
from kaohe.cli.api_client import ApiClient, ApiRefused, route
from kaohe.cli.common import console
from kaohe.client import ConnectionSettingsError, connect
from kaohe.settings import Settings
from schemas.status import CampaignProgress, UnitStatus
from workflows.campaign import AssessmentCampaign, campaign_workflow_id
from workflows.unit import UnitAssessment

T = TypeVar("T")

MIN_REFRESH_SECONDS = 10.0  # what a refresh may take at least, however short the interval
# What no later refresh can mend: settings that make no connection, the API saying no.
FATAL: tuple[type[Exception], ...] = (ConnectionSettingsError, ApiRefused)


@dataclass
class CampaignSnapshot:
    progress: CampaignProgress
    # From visibility: the units' search attributes; None through kaohe's API, which
    # answers a campaign's progress only.
    units: list[WorkflowExecution] | None


# ---- reading ---------------------------------------------------------------------------


async def fetch_unit(client: Client, workflow_id: str) -> UnitStatus:
    handle = client.get_workflow_handle(workflow_id)
    return await handle.query(UnitAssessment.status, result_type=UnitStatus)


async def fetch_campaign(client: Client, campaign: str) -> CampaignSnapshot:
    handle = client.get_workflow_handle(campaign_workflow_id(campaign))
    progress = await handle.query(AssessmentCampaign.progress, result_type=CampaignProgress)
    query = f'KaoheCampaign="{campaign}" AND WorkflowType="UnitAssessment"'
    return CampaignSnapshot(progress, [wf async for wf in client.list_workflows(query)])


class Reader:
    """Reads a unit's status and a campaign's progress through kaohe's API (`api`), or from
    Temporal on one connection, made at the first read (a watch retries it like a read)."""

    def __init__(self, settings: Settings, api: ApiClient | None = None) -> None:
        self.settings, self.api = settings, api
        self._client: Client | None = None

    async def _connected(self) -> Client:
        if self._client is None:
            self._client = await connect(self.settings)
        return self._client

    async def unit(self, target: str) -> UnitStatus:
        if self.api is not None:
            found = await asyncio.to_thread(self.api.status, target)
            return UnitStatus.model_validate(found)
        return await fetch_unit(await self._connected(), target)

    async def campaign(self, campaign: str) -> CampaignSnapshot:
        if self.api is not None:
            path = route("/v1/campaigns/{}/progress", campaign)
            found = await asyncio.to_thread(self.api.call, "GET", path)
            return CampaignSnapshot(CampaignProgress.model_validate(found), None)
        return await fetch_campaign(await self._connected(), campaign)


def unit_finished(s: UnitStatus) -> bool:
    return s.stage in TERMINAL


def campaign_finished(s: CampaignSnapshot) -> bool:
    return s.progress.completed


# ---- rendering -------------------------------------------------------------------------


def unit_table(s: UnitStatus) -> Table:
    table = Table(title=f"{s.unit_name} ({s.workflow_id})", show_header=False)
    table.add_row("stage", f"[bold]{s.stage.value}[/]")
    if s.deadline is not None or s.stalled:
        deadline = f"{s.deadline.astimezone(SHANGHAI):%Y-%m-%d %H:%M}" if s.deadline else "-"
        stalled = f" [red]stalled, escalation level {s.escalation_level}[/]" if s.stalled else ""
        table.add_row("deadline", f"{deadline} (Asia/Shanghai){stalled}")
    table.add_row(
        "reports",
        f"team {'yes' if s.reports.team_summary else 'no'}, cadres "
        f"{s.reports.cadres_submitted}/{s.reports.cadres_total}",
    )
    e = s.evaluation
    table.add_row("ballots", f"{e.ballots} on {e.sheets} sheets in {e.batches} batches")
    if e.participation:
        table.add_row(
            "participation",
            ", ".join(f"{g.group_id} {g.returned}/{g.planned}" for g in e.participation),
        )
    if e.flags:
        table.add_row("flags", "\n".join(f.message for f in e.flags))
    if s.reports.late:
        table.add_row("late reports", ", ".join(s.reports.late))
    table.add_row("talks", f"{s.talks.recorded}/{s.talks.planned}")
    g = s.grading
    table.add_row(
        "grades",
        f"published: team {g.team_grade}"
        if g.published
        else ("sealed proposal pending" if g.pending_proposal else f"{g.proposals} proposals"),
    )
    table.add_row("follow-ups", f"{s.follow_ups.closed} closed, {s.follow_ups.open} open")
    if s.rejected_signals:
        table.add_row("rejected signals", str(len(s.rejected_signals)))
    return table


def campaign_view(s: CampaignSnapshot) -> Group:
    p = s.progress
    head = Text.from_markup(
        f"[bold]{p.title}[/] — {p.units_started}/{p.units_total} units started"
        + (" — [green]completed[/]" if p.completed else "")
    )
    counts = Text(", ".join(f"{stage.value}: {n}" for stage, n in p.by_stage.items()))
    if s.units is None:
        return Group(head, counts)
    table = Table("unit", "workflow id", "stage", "status")
    for wf in sorted(s.units, key=lambda w: w.id):
        attrs = wf.search_attributes
        table.add_row(
            str(attrs.get("KaoheUnit", [""])[0]),
            wf.id,
            str(attrs.get("KaoheStage", [""])[0]),
            wf.status.name if wf.status else "",
        )
    return Group(head, table, counts)


# ---- once, or live ---------------------------------------------------------------------


async def show_status(
    settings: Settings,
    workflow_id: str | None,
    campaign: str | None,
    as_json: bool,
    api: ApiClient | None = None,
) -> None:
    read = Reader(settings, api)
    if workflow_id is not None:
        unit = await read.unit(workflow_id)
        if as_json:
            console.print_json(unit.model_dump_json())
        else:
            console.print(unit_table(unit))
        return
    assert campaign is not None
    snapshot = await read.campaign(campaign)
    if as_json:
        console.print_json(snapshot.progress.model_dump_json())
    else:
        console.print(campaign_view(snapshot))


async def watch_status(
    settings: Settings,
    workflow_id: str | None,
    campaign: str | None,
    *,
    interval: float,
    count: int | None = None,
    api: ApiClient | None = None,
) -> bool:
    """The live table of a unit or a campaign; True if the last refresh succeeded."""
    read = Reader(settings, api)
    if workflow_id is not None:
        target = workflow_id

        async def unit() -> UnitStatus:
            return await read.unit(target)

        return await watch(
            unit, unit_table, unit_finished, interval=interval, count=count, fatal=FATAL
        )
    assert campaign is not None
    name = campaign

    async def whole() -> CampaignSnapshot:
        return await read.campaign(name)

    return await watch(
        whole, campaign_view, campaign_finished, interval=interval, count=count, fatal=FATAL
    )


async def watch(
    fetch: Callable[[], Awaitable[T]],
    render: Callable[[T], RenderableType],
    finished: Callable[[T], bool],
    *,
    interval: float,
    count: int | None = None,
    out: Console | None = None,
    fatal: tuple[type[Exception], ...] = (),
) -> bool:
    """Redraws `render(await fetch())` every `interval` seconds until `finished` holds, or
    after `count` refreshes; a refresh that fails (the server briefly away) keeps the last
    view and shows the error under it, and the next one tries again. True if the last
    refresh succeeded; `fatal` errors end it. Not on a terminal, only the last view is
    printed."""
    limit = max(interval, MIN_REFRESH_SECONDS)  # a server that does not answer is an error too
    last: RenderableType | None = None
    ok = done = False
    refreshes = 0
    with Live(console=out or console, auto_refresh=False) as live:
        while True:
            refreshes += 1
            at = dt.datetime.now().strftime("%H:%M:%S")
            try:
                snapshot = await asyncio.wait_for(fetch(), limit)
            except fatal:
                raise
            except Exception as err:  # any other failure of one refresh is shown
                ok = False
                note = Text.from_markup(f"[red]refresh failed at {at}:[/] ")
                note.append(_describe(err, limit))
            else:
                ok = True
                last = render(snapshot)
                done = finished(snapshot)
            stop = done or (count is not None and refreshes >= count)
            if ok:
                note = Text(f"refreshed {at}; " + _next(done, stop, interval, count), style="dim")
            live.update(Group(*([last] if last is not None else []), note), refresh=True)
            if stop:
                return ok
            await asyncio.sleep(interval)


def _next(done: bool, stop: bool, interval: float, count: int | None) -> str:
    if done:
        return "finished"
    if stop:
        return f"stopped after {count} refresh{'' if count == 1 else 'es'}"
    return f"every {interval:g} s; Ctrl-C to stop"


def _describe(err: BaseException, limit: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {limit:g} s"
    return f"{type(err).__name__}: {err}" if str(err).strip() else type(err).__name__
