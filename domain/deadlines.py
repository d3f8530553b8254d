"""Stage deadlines, reminders and escalation times (pure; DOMAIN.md "Timing").

Deadlines are exclusive instants: 24:00 Asia/Shanghai of the last working day. With
`day_seconds` (a demo clock's working_day_seconds: tests, demonstrations) every working day
is that many seconds instead. `cal` is the unit's calendar (WorkCalendar.of_policy); the
package's by default, for previews and tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from domain.calendar import PACKAGE, WorkCalendar, end_of_day, shanghai_date
from schemas.common import Stage
from schemas.policy import DeadlinePolicy

Step = Literal["reminder", "level1", "level2"]
_JUST_BEFORE = timedelta(microseconds=1)  # a deadline's last day is the day before it


def stage_deadline(
    policy: DeadlinePolicy,
    stage: Stage,
    start: datetime,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> datetime | None:
    """`working_days[stage]` working days counted from the first working day after `start`."""
    days = policy.working_days.get(stage)
    if days is None:
        return None
    if day_seconds is not None:
        return start + timedelta(seconds=days * day_seconds)
    return cal.deadline_after(start, days)


def extended(
    policy: DeadlinePolicy,
    deadline: datetime,
    days: int,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> datetime:
    """`days` more working days after a deadline's last day."""
    if day_seconds is not None:
        return deadline + timedelta(seconds=days * day_seconds)
    return cal.deadline_after(deadline - _JUST_BEFORE, days)


def resumed(
    policy: DeadlinePolicy,
    deadline: datetime,
    paused_since: datetime,
    now: datetime,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> datetime:
    """The deadline after a pause, whose clock stood still: moved by the working days the
    pause took (the day it began counts, the day it ended does not), so a pause over a
    weekend or a holiday gives back only the working days in it. With second-long working
    days (tests, demos): by the time paused."""
    if day_seconds is not None:
        return deadline + (now - paused_since)
    day = timedelta(days=1)
    lost = cal.working_days_between(shanghai_date(paused_since) - day, shanghai_date(now) - day)
    return extended(policy, deadline, lost, day_seconds, cal) if lost else deadline


def reminder_at(
    policy: DeadlinePolicy,
    deadline: datetime,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> datetime | None:
    """The start of the last `reminder_working_days` working days before the deadline."""
    lead = policy.reminder_working_days
    if lead == 0:
        return None
    if day_seconds is not None:
        return deadline - timedelta(seconds=lead * day_seconds)
    day = shanghai_date(deadline - _JUST_BEFORE)
    while lead:
        day -= timedelta(days=1)
        lead -= cal.is_working_day(day)
    return end_of_day(day)


def level2_at(
    policy: DeadlinePolicy,
    deadline: datetime,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> datetime:
    return extended(policy, deadline, policy.escalate_after_working_days, day_seconds, cal)


def next_step(
    policy: DeadlinePolicy,
    deadline: datetime,
    reminded: bool,
    level: int,
    day_seconds: float | None = None,
    cal: WorkCalendar = PACKAGE,
) -> tuple[Step, datetime] | None:
    """What happens next on this deadline, and when: the reminder (once, if it is due before
    the deadline), then level 1 at the deadline, then level 2."""
    remind = reminder_at(policy, deadline, day_seconds, cal)
    if not reminded and level == 0 and remind is not None and remind < deadline:
        return "reminder", remind
    if level == 0:
        return "level1", deadline
    if level == 1:
        return "level2", level2_at(policy, deadline, day_seconds, cal)
    return None
