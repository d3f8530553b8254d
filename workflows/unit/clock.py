"""The current stage's deadline clock: a reminder before the deadline, escalation level 1
when it passes and level 2 later (DOMAIN.md "Timing"); the department extends, pauses and
resumes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.actions import ActionRejected
    from domain.calendar import SHANGHAI, CalendarUnavailableError
    from domain.deadlines import Step, extended, next_step, resumed, stage_deadline
    from domain.progress import responsible
    from domain.stages import TERMINAL
    from domain.state import UnitState
    from schemas import search_attributes as sa
    from schemas.common import Actor
    from schemas.messages import ExtendDeadline, PauseUnit, ResumeUnit
    from workflows.unit.context import Unit
    from workflows.unit.timer import sleep_until


async def extend_deadline(u: Unit, a: ExtendDeadline) -> str:
    clock = u.state.clock
    assert clock.deadline is not None
    old = clock.deadline
    with _calendar_refuses():
        clock.deadline = extended(
            u.input.policy.deadlines, old, a.days, _day_seconds(u), u.calendar
        )
    if clock.deadline > workflow.now():
        clock.reminded = False  # a reminder is due again before the new deadline
        u.set_escalation(0)
    workflow.upsert_search_attributes([sa.DEADLINE.value_set(clock.deadline)])
    await _audit(
        u,
        a.idempotency_key,
        "deadline_extended",
        a.actor,
        {
            "from": old.isoformat(),
            "to": clock.deadline.isoformat(),
            "days": a.days,
            "reason": a.reason,
        },
    )
    return f"deadline of {u.state.stage.value} moved to {clock.deadline.isoformat()}"


async def pause(u: Unit, a: PauseUnit) -> str:
    u.state.clock.paused_since = workflow.now()
    await _audit(u, a.idempotency_key, "paused", a.actor, {"reason": a.reason})
    return "paused: the deadline clock stands still until resume"


async def resume(u: Unit, a: ResumeUnit) -> str:
    """Gives back the working days the pause took, not the wall-clock time."""
    clock = u.state.clock
    assert clock.paused_since is not None
    since, now = clock.paused_since, workflow.now()
    paused = now - since
    if clock.deadline is not None:
        policy = u.input.policy.deadlines
        with _calendar_refuses():  # before anything changes: the unit stays paused
            deadline = resumed(policy, clock.deadline, since, now, _day_seconds(u), u.calendar)
        clock.deadline = deadline
        workflow.upsert_search_attributes([sa.DEADLINE.value_set(clock.deadline)])
    clock.paused_since = None
    await _audit(
        u,
        a.idempotency_key,
        "resumed",
        a.actor,
        {"reason": a.reason, "paused_seconds": paused.total_seconds()},
    )
    where = f"; deadline {clock.deadline.isoformat()}" if clock.deadline else ""
    return f"resumed after {paused}{where}"


@contextmanager
def _calendar_refuses() -> Iterator[None]:
    """A year without a calendar refuses the action that needs it (never fails the task)."""
    try:
        yield
    except CalendarUnavailableError as err:
        raise ActionRejected(str(err)) from None


def _day_seconds(u: Unit) -> float | None:
    return u.input.policy.demo.working_day_seconds


async def _audit(u: Unit, key: str, kind: str, actor: Actor | None, detail: dict[str, Any]) -> None:
    await u.audit(f"clock:{key}", kind, actor, detail)


async def watch_deadlines(u: Unit) -> None:
    """Until the unit ends. A new stage starts a new clock; extending or pausing moves the
    pending step, which is planned again."""
    s, policy = u.state, u.input.policy.deadlines
    while s.stage not in TERMINAL:
        if s.clock.visit != len(s.history):
            _start(u)
        c, planned = s.clock, _plan(s)
        moved = lambda planned=planned: s.stage in TERMINAL or _plan(s) != planned  # noqa: E731
        step = None
        if c.deadline is not None and c.paused_since is None:
            try:
                step = next_step(
                    policy, c.deadline, c.reminded, c.escalation, _day_seconds(u), u.calendar
                )
            except CalendarUnavailableError as err:
                # No reminder or escalation can be timed; status says why. Planned again
                # when the deadline moves (extend, pause).
                c.problem = str(err)
        if not await sleep_until(step[1] if step else None, interrupted=moved):
            continue
        assert step is not None
        async with u.lock:
            if not moved():
                await _take_step(u, step[0])
    u.set_escalation(0)  # an ended unit is not stalled


def _plan(s: UnitState) -> tuple[object, ...]:
    """What a pending step depends on: it is planned again when this changes."""
    c = s.clock
    return (len(s.history), c.deadline, c.paused_since, c.escalation, c.reminded)


def _start(u: Unit) -> None:
    s = u.state
    c = s.clock
    c.visit = len(s.history)
    policy = u.input.policy.deadlines
    try:
        c.deadline = stage_deadline(
            policy, s.stage, s.history[-1].entered_at, _day_seconds(u), u.calendar
        )
        c.problem = None
    except CalendarUnavailableError as err:
        c.deadline, c.problem = None, f"no deadline: {err}"
        workflow.logger.warning("stage %s has no deadline: %s", s.stage.value, err)
    c.reminded = False
    c.steps = []
    u.set_escalation(0)
    if c.deadline is not None:
        workflow.upsert_search_attributes([sa.DEADLINE.value_set(c.deadline)])
    u.refresh_details()


async def _take_step(u: Unit, step: Step) -> None:
    s, unit = u.state, u.input.unit
    c = s.clock
    assert c.deadline is not None
    visit, stage = len(s.history), s.stage.value
    deadline = c.deadline.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    if step == "reminder":
        c.reminded = True
        recipient, subject = responsible(u.input, s), f"{stage} 截止提醒"
        body = f"{unit.name}: {stage} 阶段将于 {deadline} 截止。"
    else:
        u.set_escalation(1 if step == "level1" else 2)
        recipient = u.input.group_leader if step == "level1" else u.input.department
        subject = f"{stage} 逾期 (督办 {c.escalation} 级)"
        body = f"{unit.name}: {stage} 阶段已于 {deadline} 截止, 尚未完成。"
    key = f"{step}-{visit}-{int(c.deadline.timestamp())}"
    label = "reminder" if step == "reminder" else f"escalation level {c.escalation}"
    at = workflow.now().astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    c.steps.append(f"{label} {at} → {recipient}")
    u.notify(key, [recipient], f"{u.input.campaign_title}: {subject}", body)
    await _audit(
        u,
        key,
        "deadline_reminder" if step == "reminder" else "escalation",
        None,
        {
            "step": step,
            "level": c.escalation,
            "deadline": c.deadline.isoformat(),
            "notified": recipient,
        },
    )
    u.refresh_details()
