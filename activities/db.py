"""PostgreSQL connection pool and idempotent, numbered migrations from ``schemas/sql``, run as
the tables' owner; the worker, the API and the CLI connect as a member of kaohe_app
(schemas/sql/015_audit_roles.sql), which may only append to the audit tables."""

from __future__ import annotations

import contextlib
import hashlib
from importlib import resources
from urllib.parse import unquote, urlsplit

import asyncpg
import pydantic
from temporalio.exceptions import ApplicationError

# The NOLOGIN role of schemas/sql/015: what the app's LOGIN role is a member of.
APP_ROLE = "kaohe_app"

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


async def provision_app_login(owner_url: str, app_url: str) -> list[str]:
    """Makes the user of `app_url` a LOGIN member of kaohe_app (created if missing, its
    password set to the URL's if it has one), connected as the owner; returns warnings: the
    app connecting as the owner or a superuser, for whom the audit trail's grants mean
    nothing. Run after the migrations (015 makes kaohe_app)."""
    parts = urlsplit(app_url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    conn = await asyncpg.connect(owner_url)
    try:
        owner = await conn.fetchval("SELECT current_user")
        if user is None or user == owner:
            return [
                f"the app connects as the migrations' role {owner}, which owns the audit "
                "table: set KAOHE_MIGRATION_DATABASE_URL to the owner and KAOHE_DATABASE_URL "
                f"to a member of {APP_ROLE}"
            ]
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", user):
            return [f"the app's database user {user} is a superuser: make it an ordinary role"]
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
            create = await conn.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOBYPASSRLS INHERIT', $1::text)",
                user,
            )
            with contextlib.suppress(asyncpg.DuplicateObjectError):  # a concurrent migrate
                await conn.execute(create)
        if password is not None:
            # format() quotes it as a literal; utility statements take no parameters.
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                    user,
                    password,
                )
            )
        await conn.execute(
            await conn.fetchval(
                "SELECT format('GRANT %I TO %I', $1::text, $2::text)", APP_ROLE, user
            )
        )
        return []
    finally:
        await conn.close()


async def migrate(owner_url: str, app_url: str) -> tuple[list[str], list[str]]:
    """The migrations as the owner, then the app's LOGIN role: (applied, warnings)."""
    applied = await apply_migrations(owner_url)
    return applied, await provision_app_login(owner_url, app_url)


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


# What the database (or a model) says about the request itself: the same write would fail
# again, so an activity that raises one of these is not retried (see `permanent`).
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # CharacterNotInRepertoireError (NUL), a value too long, a bad text
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    UnicodeError,  # a lone surrogate asyncpg cannot encode
    pydantic.ValidationError,
)


def permanent(err: BaseException) -> ApplicationError | None:
    """The non-retryable failure (type StorageRefused) an activity's permanent error becomes,
    or None for a transient one (the database unreachable, a timeout), which is retried."""
    if not isinstance(err, PERMANENT_ERRORS):
        return None
    return ApplicationError(
        f"{type(err).__name__}: {str(err)[:300]}", type="StorageRefused", non_retryable=True
    )
