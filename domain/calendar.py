"""Working-day arithmetic for Asia/Shanghai (DOMAIN.md "Publicity, objections, results", "Timing").

Pure and deterministic, safe inside Temporal workflow code: no I/O, no clock reads (callers pass
dates and datetimes, e.g. ``workflow.now()``), no mutable module state. ``chinese_calendar`` only
builds constant dicts at import (no file or network access).

Working days follow the official holiday and swapped-workday calendar published by the State
Council. A unit computes them with ``WorkCalendar.of_policy(policy.calendar)``: the years the
department entered in the policy, and for the others a copy of the PyPI package
``chinese-calendar`` taken when the unit's input was made (schemas/workflow_io.py). The copy
travels in the unit's input, so a package upgrade never moves a running unit's dates, and a
year with no schedule at all is a clear ``CalendarUnavailableError`` for the action that needs
it. Years the package does not cover yet but that assessments already reach (a campaign of
year Y runs into Q1 of Y+1) are copied from a *provisional* table, see
``_PROVISIONAL_REST_DAYS``, with a warning when a campaign starts.

Ends of periods are *exclusive* instants: "24:00 Asia/Shanghai of day D" is returned as
``00:00+08:00`` of D + 1 day, so a period is open while ``now < end``. China has no DST, so a fixed
UTC+8 offset stands in for Asia/Shanghai and no zoneinfo database is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from types import MappingProxyType

import chinese_calendar

from schemas.policy import Policy, YearSchedule

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Asia/Shanghai as a fixed UTC+08:00 offset (no DST since 1991)."""

DEFAULT_PUBLICITY_WORKING_DAYS = 5
"""DOMAIN.md: publicity (公示) of grades lasts *default* 5 working days."""


class CalendarUnavailableError(ValueError):
    """The date lies in a year with neither an official nor a provisional holiday calendar."""


# Official schedule: the years chinese-calendar ships (2004..2026 in 1.11.0).
_OFFICIAL_HOLIDAYS = chinese_calendar.holidays
_OFFICIAL_WORKDAYS = chinese_calendar.workdays
_OFFICIAL_FIRST_YEAR = min(_OFFICIAL_HOLIDAYS).year
_OFFICIAL_LAST_YEAR = max(_OFFICIAL_HOLIDAYS).year
_PACKAGE_VERSION = chinese_calendar.__version__


def _dates(*iso: str) -> frozenset[date]:
    return frozenset(date.fromisoformat(s) for s in iso)


# Provisional rest days on Monday..Friday for years the installed chinese-calendar lacks. Built from
# 《全国年节及纪念日放假办法》 (2024 revision): 元旦 Jan 1; 春节 除夕 + 正月初一..初三; 清明 (solar
# term); 劳动节 May 1-2; 端午 5/5 and 中秋 8/15 (lunar); 国庆 Oct 1-3; and its rule that a holiday
# falling on Saturday/Sunday is made up (补假) on the following weekday(s). Lunar dates checked with
# the `lunardate` package, 清明 with chinese_calendar.get_solar_terms. Unknowable until the State
# Council's notice (usually November of the year before): swapped working weekends and longer
# breaks, so a real 2027 Spring Festival break is likely longer than this one.
_PROVISIONAL_REST_DAYS: MappingProxyType[int, frozenset[date]] = MappingProxyType(
    {
        2027: _dates(
            "2027-01-01",  # 元旦 (Fri)
            "2027-02-05",  # 除夕 (Fri)
            "2027-02-08",  # 正月初三 (Mon)
            "2027-02-09",  # 补假 for 初一 on Sat 02-06
            "2027-02-10",  # 补假 for 初二 on Sun 02-07
            "2027-04-05",  # 清明 (Mon)
            "2027-05-03",  # 补假 for 劳动节 on Sat 05-01
            "2027-05-04",  # 补假 for 劳动节 on Sun 05-02
            "2027-06-09",  # 端午 (Wed)
            "2027-09-15",  # 中秋 (Wed)
            "2027-10-01",  # 国庆 (Fri)
            "2027-10-04",  # 补假 for 国庆 on Sat 10-02
            "2027-10-05",  # 补假 for 国庆 on Sun 10-03
        ),
    }
)


def has_official_schedule(year: int) -> bool:
    """True if ``year`` uses the published official schedule, False if provisional (or none)."""
    return _OFFICIAL_FIRST_YEAR <= year <= _OFFICIAL_LAST_YEAR


@dataclass(frozen=True)
class YearDays:
    """One year's exceptions to "Monday to Friday": weekdays off, weekend days worked."""

    rest: frozenset[date]
    work: frozenset[date]
    source: str

    def is_working_day(self, d: date) -> bool:
        return d in self.work or (d.weekday() < 5 and d not in self.rest)


def package_year(year: int) -> YearDays | None:
    """What the installed chinese-calendar package knows of ``year`` (official), else the
    provisional table, else None."""
    if has_official_schedule(year):
        rest = frozenset(d for d in _OFFICIAL_HOLIDAYS if d.year == year and d.weekday() < 5)
        work = frozenset(d for d in _OFFICIAL_WORKDAYS if d.year == year and d.weekday() >= 5)
        return YearDays(rest, work, f"chinese-calendar {_PACKAGE_VERSION}")
    provisional = _PROVISIONAL_REST_DAYS.get(year) if year > _OFFICIAL_LAST_YEAR else None
    if provisional is None:
        return None
    return YearDays(provisional, frozenset(), "provisional")


def schedule_of(year: int) -> YearSchedule | None:
    """``package_year`` as a policy's YearSchedule, to copy into a unit's policy."""
    days = package_year(year)
    if days is None:
        return None
    return YearSchedule(
        rest_days=sorted(days.rest), working_days=sorted(days.work), source=days.source
    )


@dataclass(frozen=True)
class WorkCalendar:
    """Working-day arithmetic over a set of years. A unit's comes from its policy alone
    (``of_policy``), so its dates never depend on the installed package; ``PACKAGE`` (for
    previews and tools) asks the package for any year."""

    years: Mapping[int, YearDays] = field(default_factory=dict)
    from_package: bool = False

    @classmethod
    def of_policy(cls, calendar: Mapping[int, YearSchedule]) -> WorkCalendar:
        return cls(
            {
                y: YearDays(frozenset(s.rest_days), frozenset(s.working_days), s.source)
                for y, s in calendar.items()
            }
        )

    def year(self, year: int) -> YearDays:
        found = self.years.get(year)
        if found is None and self.from_package:
            found = package_year(year)
        if found is None:
            raise CalendarUnavailableError(
                f"no working-day calendar for {year}: enter the State Council's schedule for "
                f'{year} as policy calendar.{year} (README "Holidays and working days")'
            )
        return found

    def is_working_day(self, d: date) -> bool:
        """Is ``d`` a working day in mainland China?

        DOMAIN.md: working days follow the official holiday and swapped-workday calendar, so
        an official holiday on a weekday is not one and a swapped Saturday/Sunday (e.g.
        2026-02-14) is. Raises ``CalendarUnavailableError`` for a year it has no schedule for,
        ``TypeError`` for a datetime (convert it with ``shanghai_date`` first: its calendar day
        depends on the timezone).
        """
        if isinstance(d, datetime):
            raise TypeError("is_working_day takes a date; use shanghai_date(moment) for a datetime")
        return self.year(d.year).is_working_day(d)

    def add_working_days(self, start: date, n: int) -> date:
        """The ``n``-th working day after ``start`` (``start`` itself never counts), ``n >= 1``.

        DOMAIN.md: periods are "counted from the first working day after" their start.
        """
        if isinstance(start, datetime):
            raise TypeError(
                "add_working_days takes a date; use shanghai_date(moment) for a datetime"
            )
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        d = start
        while n:
            d += timedelta(days=1)
            if self.is_working_day(d):
                n -= 1
        return d

    def working_days_between(self, a: date, b: date) -> int:
        """Number of working days in the half-open interval ``(a, b]``; 0 when ``b <= a``.

        Inverse of ``add_working_days``: ``working_days_between(d, add_working_days(d, n)) == n``.
        """
        count = 0
        d = a + timedelta(days=1)
        while d <= b:
            count += self.is_working_day(d)
            d += timedelta(days=1)
        return count

    def deadline_after(self, start: datetime, working_days: int) -> datetime:
        """End (24:00 Asia/Shanghai, exclusive) of the ``working_days``-th working day after the
        Shanghai date of ``start``; the start day itself never counts, even if it is a working
        day.

        DOMAIN.md "Timing": stage deadlines are set in working days when the stage starts.
        """
        return end_of_day(self.add_working_days(shanghai_date(start), working_days))

    def publicity_end(
        self, published: datetime | date, working_days: int = DEFAULT_PUBLICITY_WORKING_DAYS
    ) -> datetime:
        """When publicity (公示) of grades published at ``published`` (a moment, or the day)
        ends (exclusive instant).

        DOMAIN.md: *default* 5 working days, counted from the first working day after
        publication, ending 24:00 Asia/Shanghai of the last one; e.g. published 2026-09-29 ->
        ends 2026-10-12 (returned as 2026-10-13T00:00+08:00). A moment may be in any timezone;
        it is converted to Asia/Shanghai first.
        """
        day = published if not isinstance(published, datetime) else shanghai_date(published)
        return end_of_day(self.add_working_days(day, working_days))


PACKAGE = WorkCalendar(from_package=True)
"""The installed package's calendar (and the provisional table), for any year it has."""

is_working_day = PACKAGE.is_working_day
add_working_days = PACKAGE.add_working_days
working_days_between = PACKAGE.working_days_between


def shanghai_date(moment: datetime) -> date:
    """The Asia/Shanghai calendar day of an aware ``moment`` (naive datetimes are rejected)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware datetime")
    return moment.astimezone(SHANGHAI).date()


def end_of_day(d: date) -> datetime:
    """24:00 Asia/Shanghai of ``d``, i.e. the exclusive instant 00:00+08:00 of the next day."""
    return datetime.combine(d + timedelta(days=1), time(), tzinfo=SHANGHAI)


deadline_after = PACKAGE.deadline_after
publicity_end = PACKAGE.publicity_end


def with_package_years(policy: Policy, years: Iterable[int]) -> tuple[Policy, list[str]]:
    """`policy` with each of `years` it has no schedule for copied from the package (or its
    provisional table), and a warning for every year that is provisional or missing: what
    `kaohe start` prints. The copy goes into the units' input, so their dates stay put."""
    calendar = dict(policy.calendar)
    warnings = []
    for year in sorted(set(years)):
        entered = calendar.get(year)
        if entered is None:
            entered = schedule_of(year)
            if entered is not None:
                calendar[year] = entered
        if entered is None:
            warnings.append(
                f"{year}: no working-day calendar; actions whose dates fall in {year} will be "
                f"refused until the State Council's schedule is entered as calendar.{year}"
            )
        elif entered.source == "provisional":
            warnings.append(
                f"{year}: provisional working-day calendar (the installed chinese-calendar has "
                f"no {year}); enter the State Council's schedule as calendar.{year}"
            )
    if calendar == policy.calendar:
        return policy, warnings
    return policy.model_copy(update={"calendar": calendar}), warnings


def campaign_years(year: int, today: date) -> set[int]:
    """The years a campaign of `year` started `today` reaches: its year, the next (the
    assessment runs into its first months), and today's and the next if later."""
    return {year, year + 1, today.year, today.year + 1}
