"""The system user embedded PostgreSQL runs as when we are root (postgres refuses root).

Finding or creating it must hold when many processes do it at once: xdist workers, `kaohe
dev`, `kaohe worker --processes N` and the benches all start embedded servers. A bare
look-up-then-`useradd` races: two processes both miss the entry, both run useradd, and one is
handed a uid that no entry has by the time initdb asks for it.

So look-up-and-create runs under an exclusive lock on a machine-wide file, and the entry is
read again after the lock is taken. A lock rather than "create it once before anything runs in
parallel": there is no single place before all of those entry points (a newcomer may run
`kaohe dev` and `make test` at once), and the lock costs nothing once the user exists, since
the fast path reads the entry without it.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import subprocess
from pathlib import Path

DEFAULT_USER = "embedded_postgres"

# What useradd accepts on every distribution (no dots, no leading digit or dash).
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _lock_path(name: str) -> Path:
    # Fixed, not tempfile.gettempdir(): every process on the machine must meet on one file,
    # whatever TMPDIR each was given.
    base = Path("/run/lock") if os.access("/run/lock", os.W_OK) else Path("/tmp")
    return base / f"kaohe-system-user-{name}.lock"


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def ensure_system_user(name: str = DEFAULT_USER) -> pwd.struct_passwd:
    """The passwd entry of `name`, created (a locked system account) if missing. Root only."""
    if not _NAME.match(name):
        raise ValueError(f"pg_system_user: {name!r} is not a valid system user name")
    entry = _lookup(name)
    if entry is not None:
        return entry
    with _lock_path(name).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        entry = _lookup(name)  # another process may have created it while we waited
        if entry is not None:
            return entry
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        entry = _lookup(name)
        # Exit 9 is "already exists": created by something that does not take our lock.
        if entry is None:
            raise RuntimeError(
                f"could not create the system user {name!r} for PostgreSQL "
                f"(useradd exit {result.returncode}): {result.stderr.strip()}"
            )
        return entry


def remove_system_user(name: str) -> None:
    """userdel `name` under the same lock (tests clean up the users they made)."""
    with _lock_path(name).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _lookup(name) is not None:
            subprocess.run(["userdel", name], capture_output=True, text=True, check=True)
