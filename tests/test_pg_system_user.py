"""Embedded PostgreSQL's system user is found or created safely by many processes at once.

Regression test for a fresh machine: two xdist workers ran `useradd` for the same missing user
at the same moment and one initdb was handed a uid that no passwd entry had.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kaohe.devstack.system_user import ensure_system_user, remove_system_user

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating system users needs root"),
]

SERVERS = 6

# Each process gets ready (imports, a port), waits at the barrier file, then starts its own
# server as the (missing) user and queries it.
_CHILD = """
import asyncio, sys, time
from pathlib import Path
import asyncpg
from kaohe.devstack.postgres import EmbeddedPostgres
from kaohe.listening import free_port

root, user, barrier = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

async def main() -> None:
    pg = EmbeddedPostgres(root / "postgres", free_port(), system_user=user)
    (root / "ready").touch()
    while not barrier.exists():
        time.sleep(0.005)
    url = await pg.start()
    try:
        conn = await asyncpg.connect(url)
        try:
            owner = await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database LIMIT 1")
            print("answered", await conn.fetchval("SELECT 40 + 2"), owner)
        finally:
            await conn.close()
    finally:
        await pg.stop()

asyncio.run(main())
"""


def _entries(name: str) -> list[str]:
    return [
        line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith(f"{name}:")
    ]


def test_many_servers_at_once_create_exactly_one_user(tmp_path: Path) -> None:
    name = f"kaohe_t{uuid.uuid4().hex[:10]}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    barrier = tmp_path / "go"
    roots = [tmp_path / f"server{i}" for i in range(SERVERS)]
    procs = []
    try:
        for root in roots:
            root.mkdir()
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(root), name, str(barrier)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while not all((root / "ready").exists() for root in roots):
            assert time.monotonic() < deadline, "the servers' processes did not get ready"
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.05)
        barrier.touch()  # all at once
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        for proc, out in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out
            assert "answered 42" in out, out
        assert len(_entries(name)) == 1, _entries(name)
        # And a later look-up gives the very entry the servers ran as.
        assert ensure_system_user(name).pw_uid == pwd.getpwnam(name).pw_uid
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        remove_system_user(name)
    assert _entries(name) == []


def test_a_name_useradd_would_refuse_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pg_system_user"):
        ensure_system_user("Bad Name; rm -rf /")
