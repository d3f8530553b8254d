"""PostgreSQL connection pool and idempotent, numbered migrations from ``schemas/sql``."""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg

# Any fixed number works: it only has to be the same for every process that migrates.
_MIGRATION_LOCK_ID = 7_240_611


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in the order of their numbers."""
    folder = resources.files("schemas") / "sql"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


async def apply_migrations(url: str) -> list[str]:
    """Apply the migrations not yet applied; returns their names.

    Safe to call from several processes at once (an advisory lock serialises them) and
    any number of times (each file runs once, recorded with its checksum).
    """
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            applied = {
                r["name"]: r["checksum"]
                for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
            }
            done: list[str] = []
            for name, sql in migration_files():
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if name in applied:
                    if applied[name] != checksum:
                        raise RuntimeError(
                            f"migration {name} was changed after it was applied; "
                            "add a new numbered migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        name,
                        checksum,
                    )
                done.append(name)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    finally:
        await conn.close()


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool
