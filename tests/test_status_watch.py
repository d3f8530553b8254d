"""`kaohe status --watch`: a live table refreshed until Ctrl-C, until `--count` refreshes,
or until the unit is finished; a refresh that fails is shown and the next one tries again."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import select
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from temporalio.client import Client

from kaohe.cli.status import FATAL, watch
from kaohe.client import ConnectionSettingsError
from kaohe.sim.simulate import (
    TalkStore,
    TokenSource,
    drive_unit,
    wait_campaign_started,
    wait_for_status,
)
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from tests.test_cli import KAOHE, akaohe, good_roster, write_roster


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None), out


async def test_a_failed_refresh_is_shown_and_the_next_one_tries_again() -> None:
    answers: list[object] = [RuntimeError("server unavailable"), 1, ConnectionError(), 2]

    async def fetch() -> int:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, int)
        return answer

    console, out = terminal()
    ok = await watch(
        fetch, lambda n: Text(f"value {n}"), lambda n: False, interval=0.01, count=4, out=console
    )
    assert ok and answers == []
    screen = out.getvalue()
    first = screen.index("refresh failed at")
    assert "RuntimeError: server unavailable" in screen[first:]
    # After a failure the last good view stays above the error; the next one replaces both.
    second = screen.index("ConnectionError")
    assert "value 1" in screen[first:second]
    assert "value 2" in screen[second:] and "stopped after 4 refreshes" in screen[second:]


async def test_the_watch_ends_when_finished_or_failing_last() -> None:
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    console, out = terminal()
    assert await watch(fetch, str, lambda n: n == 3, interval=0.01, out=console)
    assert calls == 3 and "finished" in out.getvalue()

    async def down() -> int:
        raise OSError("connection refused")

    console, out = terminal()
    assert not await watch(down, str, lambda n: True, interval=0.01, count=2, out=console)
    assert out.getvalue().count("OSError: connection refused") >= 2

    # Settings that make no connection end it: no later refresh can mend them.
    async def misconfigured() -> int:
        raise ConnectionSettingsError("KAOHE_TEMPORAL_TLS_CA_FILE: cannot read x")

    console, out = terminal()
    with pytest.raises(ConnectionSettingsError):
        await watch(misconfigured, str, bool, interval=0.01, out=console, fatal=FATAL)


async def test_watch_a_unit_from_the_cli(
    stack: Stack, client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit)
    await wait_for_status(handle, lambda s: s.stage == Stage.NOTICE)
    bounded = await akaohe(
        stack, "status", handle.id, "--watch", "--interval", "0.2", "--count", "2"
    )
    assert bounded.returncode == 0, bounded.stderr
    assert unit.name in bounded.stdout and "notice" in bounded.stdout
    assert "stopped after 2 refreshes" in bounded.stdout

    # Without a bound it ends by itself once the unit is finished.
    watching = asyncio.create_task(
        akaohe(stack, "status", handle.id, "--watch", "--interval", "0.3")
    )
    await drive_unit(client, handle.id, unit, tokens=tokens, talks=talks)
    done = await asyncio.wait_for(watching, 60)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout and "; finished" in done.stdout

    both = await akaohe(stack, "status", handle.id, "--watch", "--json")
    assert both.returncode == 1 and "--json prints once" in both.stderr


def read_until(fd: int, needle: str, seconds: float) -> str:
    """What a terminal shows, until `needle` appears or `seconds` pass."""
    seen = b""
    deadline = time.monotonic() + seconds
    while needle.encode() not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


async def test_watch_shows_errors_and_stops_on_ctrl_c(stack: Stack, worker: str) -> None:
    missing = f"kaohe-none-{uuid.uuid4().hex[:6]}"
    failing = await akaohe(stack, "status", missing, "--watch", "--interval", "0.1", "--count", "2")
    assert failing.returncode == 1  # the last refresh failed
    assert failing.stdout.count("refresh failed at") == 1  # not a terminal: the last view only
    assert "not found" in failing.stdout.lower()

    # On a terminal: redrawn in place, and Ctrl-C stops it quietly, with success.
    leader, follower = pty.openpty()
    process = await asyncio.to_thread(
        subprocess.Popen,
        [KAOHE, "status", missing, "--watch", "--interval", "0.2"],
        env={**stack.env(), "COLUMNS": "200"},
        stdout=follower,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    try:
        screen = await asyncio.to_thread(read_until, leader, "refresh failed at", 60)
        assert "refresh failed at" in screen
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        process.kill()
        os.close(leader)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


async def test_watch_a_campaign_from_the_cli(
    stack: Stack, client: Client, worker: str, tmp_path: Path
) -> None:
    campaign_id = f"watch-{uuid.uuid4().hex[:6]}"
    roster = write_roster(tmp_path, good_roster(campaign_id))
    started = await akaohe(stack, "start", str(roster))
    assert started.returncode == 0, started.stderr
    await wait_campaign_started(client, campaign_id, 60)
    shown = await akaohe(stack, "status", "--campaign", campaign_id, "--watch", "--count", "1")
    assert shown.returncode == 0, shown.stderr
    assert "CLI 测试" in shown.stdout and "units started" in shown.stdout
    assert "stopped after 1 refresh" in shown.stdout
