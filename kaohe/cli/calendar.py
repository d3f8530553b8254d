"""`kaohe calendar working-days|publicity-end DATE`: the working-day arithmetic a unit will
do, previewed for any date, with the policy's calendar years before the package's
(domain/calendar.py). kaohe/cli/main.py mounts it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from domain.calendar import (
    CalendarUnavailableError,
    WorkCalendar,
    campaign_years,
    shanghai_date,
    with_package_years,
)
from kaohe.cli.common import console, err_console, fail
from kaohe.ingest.roster_io import RosterError, load_policy
from schemas.policy import Policy

calendar_app = typer.Typer(
    help="Preview working days and 公示 ends (policy calendar, then chinese-calendar).",
    no_args_is_help=True,
)

Day = Annotated[dt.datetime, typer.Argument(formats=["%Y-%m-%d"], help="YYYY-MM-DD")]
PolicyFile = Annotated[
    Path | None, typer.Option("--policy", help="Policy YAML whose calendar years come first.")
]


def _calendar(policy_file: Path | None, year: int) -> tuple[WorkCalendar, Policy]:
    try:
        policy = load_policy(policy_file, year)
    except RosterError as err:
        raise fail(str(err)) from err
    # What a campaign of that year started today would carry.
    policy, warnings = with_package_years(policy, campaign_years(year, dt.date.today()))
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    return WorkCalendar.of_policy(policy.calendar), policy


@calendar_app.command("working-days")
def working_days(
    day: Day,
    days: Annotated[int, typer.Option("--days", min=1, max=60, help="How many.")] = 10,
    policy_file: PolicyFile = None,
) -> None:
    """The working days after DATE (DATE itself never counts)."""
    cal, _ = _calendar(policy_file, day.year)
    table = Table(title=f"{days} working days after {day.date()}")
    for column in ("n", "date", "weekday", "year's schedule"):
        table.add_column(column)
    d = day.date()
    try:
        for n in range(1, days + 1):
            d = cal.add_working_days(d, 1)
            table.add_row(str(n), d.isoformat(), f"{d:%a}", cal.year(d.year).source)
    except CalendarUnavailableError as err:
        console.print(table)
        raise fail(str(err)) from err
    console.print(table)


@calendar_app.command("publicity-end")
def publicity_end(
    day: Day,
    days: Annotated[
        int | None, typer.Option("--days", min=1, max=30, help="Default: the policy's.")
    ] = None,
    policy_file: PolicyFile = None,
) -> None:
    """When 公示 published on DATE ends: its working days count from the first working day
    after DATE and it ends at 24:00 (Asia/Shanghai) of the last one."""
    cal, policy = _calendar(policy_file, day.year)
    n = days or policy.grading.publicity_working_days
    try:
        ends = cal.publicity_end(day.date(), n)
    except CalendarUnavailableError as err:
        raise fail(str(err)) from err
    last = shanghai_date(ends) - dt.timedelta(days=1)
    console.print(f"{day.date()} → {last}  ({n} working days; ends {ends.isoformat()})")
