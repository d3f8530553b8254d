"""Ballot tokens and the bulk import, as plain async functions: `kaohe tokens issue` and
`kaohe ballots import` call them, and so can simulators, tests and benchmarks.

Tokens: `planned` random one-time tokens per rater group; only their sha256 is stored.
Import: a ballot CSV (kaohe/ingest/ballot_csv.py) is read and checked as kaohe's API checks
sheets while its marks stream into COPY, all in one transaction with the token checks
(activities/ballot_store.py) and the batch row; then every spent token of the unit is
rewritten (its xmin no longer names the import's transaction) and the batch is announced to
the unit's workflow with the register_ballot_batch update, which verifies it and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from pydantic import TypeAdapter, ValidationError
from rich.progress import Progress
from temporalio.client import Client
from temporalio.service import RPCError

from activities.audit_log import write_audit
from activities.ballot_pool import POOL_BATCH_PREFIX
from activities.ballot_store import (
    MARK_COLUMNS,
    BallotRejected,
    batch_sheets_by_group,
    lock_rater_groups,
    planned_problems,
    receipt_detail,
    sheets_by_group,
    store_sheets_by_group,
    token_hash,
    token_problems,
    unused_tokens,
    use_tokens,
)
from kaohe.ingest.ballot_csv import (
    BallotCsvReader,
    MarksDigest,
    NotStandard,
    Problem,
    locate,
    parse_ballot_csv,
)
from schemas.common import Actor, Identifier, Role, Stage
from schemas.workflow_io import BallotBatchReceipt, UnitInput, UnitRef
from workflows.campaign import unit_workflow_id

log = structlog.get_logger("kaohe.ballots")

Db = asyncpg.Pool | asyncpg.Connection
IMPORT_ACTOR = Actor(id="ballot-import", role=Role.INTEGRATOR)
TOKEN_BYTES = 16  # secrets.token_urlsafe(16): 22 characters, 128 random bits
# Tokens of a unit whose evaluation is over would never be taken.
_PAST_EVALUATION = {Stage.TALKS, Stage.GRADING, Stage.RESULT_USE, Stage.COMPLETED, Stage.CANCELLED}


@contextlib.asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def _unit_ref(conn: asyncpg.Connection, workflow_id: str) -> UnitRef | None:
    row = await conn.fetchrow(
        "SELECT campaign_id, unit_id, stage FROM units WHERE workflow_id = $1", workflow_id
    )
    if row is None:
        return None
    return UnitRef(
        workflow_id=workflow_id,
        campaign_id=row["campaign_id"],
        unit_id=row["unit_id"],
        stage=Stage(row["stage"]),
    )


# ---- tokens ------------------------------------------------------------------------------


class TokensError(Exception):
    """Tokens cannot be issued (unit unknown, already issued, evaluation over)."""


@dataclass
class GroupTokens:
    group_id: str
    label: str
    planned: int
    used: int  # tokens of the group already used (kept by a reissue)
    issued: int  # tokens issued now


@dataclass
class IssuedTokens:
    workflow_id: str
    groups: list[GroupTokens]
    tokens: dict[str, list[str]]  # rater group -> the new tokens (plain text, shown once)
    deleted_unused: int = 0


async def issue_tokens(
    db: Db,
    workflow_id: str,
    *,
    reissue: bool = False,
    before_commit: Callable[[IssuedTokens], None] | None = None,
) -> IssuedTokens:
    """Issues `planned` tokens per rater group of a registered unit and stores their hashes.

    Refuses if tokens were issued before, unless `reissue`: then the unused ones are deleted
    and as many are issued as each group has not used. `before_commit` runs inside the
    transaction (e.g. writing the tokens file), so if it fails nothing is issued."""
    async with _connection(db) as conn, conn.transaction():
        ref = await _unit_ref(conn, workflow_id)
        if ref is None:
            raise TokensError(f"unit {workflow_id} is not registered (has its workflow started?)")
        if ref.stage in _PAST_EVALUATION:
            raise TokensError(f"unit {workflow_id} is past its evaluation (stage {ref.stage})")
        groups = await conn.fetch(
            "SELECT group_id, label, planned FROM unit_rater_groups WHERE workflow_id = $1 "
            "ORDER BY group_id FOR UPDATE",
            workflow_id,
        )
        if not groups:
            raise TokensError(
                f"unit {workflow_id} has no rater groups stored (it takes flat ballots)"
            )
        counts = {
            r["rater_group"]: (r["total"], r["used"])
            for r in await conn.fetch(
                "SELECT rater_group, count(*) AS total, count(used_at) AS used "
                "FROM ballot_tokens WHERE workflow_id = $1 GROUP BY rater_group",
                workflow_id,
            )
        }
        total = sum(t for t, _ in counts.values())
        used = {g: u for g, (_, u) in counts.items()}
        if total and not reissue:
            raise TokensError(
                f"tokens were already issued for {workflow_id} ({total}, "
                f"{sum(used.values())} used); --reissue replaces the unused ones"
            )
        deleted = 0
        if reissue:
            status = await conn.execute(
                "DELETE FROM ballot_tokens WHERE workflow_id = $1 AND used_at IS NULL",
                workflow_id,
            )
            deleted = int(status.split()[-1])
        result = IssuedTokens(workflow_id, [], {}, deleted)
        for g in groups:
            n = max(0, g["planned"] - used.get(g["group_id"], 0))
            result.groups.append(
                GroupTokens(g["group_id"], g["label"], g["planned"], used.get(g["group_id"], 0), n)
            )
            result.tokens[g["group_id"]] = [secrets.token_urlsafe(TOKEN_BYTES) for _ in range(n)]
        await conn.copy_records_to_table(
            "ballot_tokens",
            records=[
                (workflow_id, token_hash(t), group)
                for group, tokens in result.tokens.items()
                for t in tokens
            ],
            columns=["workflow_id", "token_hash", "rater_group"],
        )
        issued = {g.group_id: g.issued for g in result.groups}
        await write_audit(
            conn,
            ref,
            f"tokens:{uuid.uuid4().hex}",
            "tokens_reissued" if reissue else "tokens_issued",
            detail={"issued": issued, "deleted_unused": deleted},
        )
        if before_commit is not None:
            before_commit(result)
    log.info(
        "ballot tokens issued",
        workflow_id=workflow_id,
        unit=ref.unit_id,
        stage=ref.stage.value,
        issued=issued,
        deleted_unused=deleted,
    )
    return result


@dataclass
class TokenSource:
    """workflow id -> rater group -> tokens, as the raters hold them, and the database their
    sheets go to (kaohe.sim.simulate casts them through kaohe/ballot_intake.py). A unit's
    tokens are issued on the first call and remembered, so asking again returns the same
    ones; with `reissue`, a unit that had tokens from elsewhere (an earlier run) gets its
    unused ones replaced instead of a refusal."""

    pool: asyncpg.Pool
    reissue: bool = False
    issued: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    async def __call__(self, workflow_id: str) -> dict[str, list[str]]:
        if workflow_id not in self.issued:
            made = await issue_tokens(self.pool, workflow_id, reissue=self.reissue)
            self.issued[workflow_id] = made.tokens
        return self.issued[workflow_id]


def token_source(db: asyncpg.Pool, *, reissue: bool = False) -> TokenSource:
    return TokenSource(db, reissue)


def write_tokens_csv(path: Path, issued: IssuedTokens) -> None:
    """`rater_group,token` rows, to a new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rater_group", "token"])
        for group, tokens in issued.tokens.items():
            writer.writerows((group, t) for t in tokens)


# ---- import ------------------------------------------------------------------------------


class BallotImportError(Exception):
    """Nothing was imported; every problem has its CSV line where it has one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s); nothing imported")


@dataclass
class ImportResult:
    workflow_id: str
    batch_id: str
    sheets: int
    ballots: int
    rows: int
    checksum: str
    sheets_by_group: dict[str, int]
    stored: bool  # False: the batch was in the database already (a re-run)
    update: dict[str, Any]  # register_ballot_batch's result
    seconds: dict[str, float] = field(default_factory=dict)  # per phase


async def unit_input_of(client: Client, workflow_id: str) -> UnitInput:
    """The unit's UnitSpec and Policy, as its workflow started: the input of its first event."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events(page_size=1):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [unit_input] = await client.data_converter.decode(payloads, [UnitInput])
            assert isinstance(unit_input, UnitInput)
            return unit_input
    except RPCError as err:
        raise BallotImportError([Problem(0, f"workflow {workflow_id}: {err}")]) from err
    raise BallotImportError([Problem(0, f"workflow {workflow_id} has no history")])


class _Phases:
    """An optional rich progress bar and the seconds each phase took."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def bar(self, description: str, total: float) -> Callable[[int], None] | None:
        """A bar and the function that sets it, or None without a progress display."""
        if self.progress is None:
            return None
        progress = self.progress
        task = progress.add_task(description, total=total)
        return lambda n: progress.update(task, completed=n)

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t0
        self._t0 = now


def file_batch_id(path: Path) -> str:
    with path.open("rb") as f:
        return "import-" + hashlib.file_digest(f, "sha256").hexdigest()[:16]


@dataclass(frozen=True)
class _BatchFile:
    """The file being imported, and the batch it is stored as."""

    batch_id: str
    path: Path
    reader: BallotCsvReader
    on_bytes: Callable[[int], None] | None  # progress: bytes read


@dataclass
class _Stream:
    """One pass of the file into COPY: what it reads, and what it learns meanwhile."""

    file: _BatchFile
    workflow_id: str
    usable: dict[bytes, str]  # token hash -> rater group
    labels: list[str] = field(default_factory=list)  # per sheet read
    lines: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)  # sheets whose token is not usable
    ballots: int = 0
    rows: int = 0
    checksum: str = ""

    def sheet_records(self) -> Iterator[list[tuple[str, str, int, str, str, str, str, str]]]:
        """The mark rows for COPY, sheet by sheet as the file is read. After the first problem
        nothing more is yielded, but the file is read to its end so every problem is found."""
        reader, usable = self.file.reader, self.usable
        workflow_id, batch_id = self.workflow_id, self.file.batch_id  # locals: used once per mark
        digest = MarksDigest()
        copying = True
        for n, sheet in enumerate(reader.read(self.file.path, self.file.on_bytes)):
            h = token_hash(sheet.token)
            group = usable.get(h)
            self.labels.append(sheet.label)
            self.lines.append(sheet.line)
            self.hashes.append(h)
            self.groups.append(group or "")
            if group is None:
                self.unknown.append(n)
                copying = False
                continue
            digest.add(sheet.rows)
            self.ballots += sheet.ballots
            self.rows += len(sheet.rows)
            if copying and reader.problems:
                copying = False
            if copying:
                # A sheet's rows at once: a list comprehension, not a generator step per row.
                yield [
                    (workflow_id, batch_id, n, group, r[2], r[3], r[4], r[5]) for r in sheet.rows
                ]
        self.checksum = digest.hexdigest()

    def standard_records(self) -> Iterator[Iterator[tuple[Any, ...]]]:
        """`sheet_records` for a file in the standard layout (`read_standard`): each sheet's
        rows zipped from its columns. A token that is not usable raises NotStandard, so that
        the full read names the sheet's line."""
        reader, usable = self.file.reader, self.usable
        digest = MarksDigest()
        size = len(reader.heads)
        ballots = reader.sheet_ballots
        layout = (reader.kinds, reader.targets, reader.items)
        for n, sheet in enumerate(reader.read_standard(self.file.path, self.file.on_bytes)):
            h = token_hash(sheet.token)
            group = usable.get(h)
            if group is None:
                raise NotStandard
            self.labels.append(sheet.label)
            self.hashes.append(h)
            self.groups.append(group)
            digest.add_standard(reader.heads, sheet.options)
            self.ballots += ballots
            self.rows += size
            # zip ends with the layout's columns.
            yield zip(
                repeat(self.workflow_id),
                repeat(self.file.batch_id),
                repeat(n),
                repeat(group),
                *layout,
                sheet.options,
            )
        self.lines = [0] * len(self.labels)
        self.checksum = digest.hexdigest()


async def _store_batch(
    conn: asyncpg.Connection, ref: UnitRef, file: _BatchFile
) -> tuple[BallotBatchReceipt, int]:
    """The standard layout's column-wise read first, in a savepoint; a file it cannot vouch
    for (another layout, or any problem) is stored again with the full read, which gives
    every problem its line."""
    if file.reader.fast_path:
        try:
            async with conn.transaction():  # a savepoint inside the caller's transaction
                return await _stream_into_batch(conn, ref, file, standard=True)
        except (NotStandard, BallotImportError):
            pass
    return await _stream_into_batch(conn, ref, file, standard=False)


async def _stream_into_batch(
    conn: asyncpg.Connection, ref: UnitRef, file: _BatchFile, *, standard: bool
) -> tuple[BallotBatchReceipt, int]:
    """Inside the caller's transaction: the batch row, the marks COPYed while the file is
    read and checked (by `read_standard` if `standard`, else by `read`), the tokens used and
    the planned counts checked (as save_ballot_sheets does, with the same functions); raises
    BallotImportError (or NotStandard) and leaves nothing otherwise."""
    wf, batch_id = ref.workflow_id, file.batch_id
    try:
        planned = await lock_rater_groups(conn, wf)
    except BallotRejected as err:
        raise BallotImportError([Problem(0, p) for p in err.problems]) from None
    usable = await unused_tokens(conn, wf)
    inserted = await conn.fetchval(
        """INSERT INTO ballot_batches
               (workflow_id, batch_id, ballots, sheets, checksum, source, registered_at)
           VALUES ($1, $2, 0, 0, '', 'import', NULL) ON CONFLICT DO NOTHING RETURNING true""",
        wf,
        batch_id,
    )
    if not inserted:
        raise BallotImportError(
            [Problem(0, f"batch_id: batch {batch_id!r} was stored meanwhile; import it again")]
        )
    out = _Stream(file, wf, usable)
    records = chain.from_iterable(out.standard_records() if standard else out.sheet_records())
    await conn.copy_records_to_table("ballot_marks", records=records, columns=MARK_COLUMNS)
    problems = list(file.reader.problems)
    if out.unknown:
        found = await token_problems(conn, wf, out.hashes, set(usable))
        problems += locate(found, out.labels, out.lines)
    if problems:
        raise BallotImportError(sorted(problems))
    used = await use_tokens(conn, wf, out.hashes)
    assert len(used) == len(out.hashes), (
        "tokens were taken meanwhile (the rater group rows are locked)"
    )
    over = await planned_problems(conn, wf, planned, out.groups)
    if over:
        raise BallotImportError(locate(over, out.labels, out.lines))
    await conn.execute(
        "UPDATE ballot_batches SET ballots = $3, sheets = $4, checksum = $5 "
        "WHERE workflow_id = $1 AND batch_id = $2",
        wf,
        batch_id,
        out.ballots,
        len(out.hashes),
        out.checksum,
    )
    receipt = BallotBatchReceipt(
        batch_id=batch_id,
        count=out.ballots,
        checksum=out.checksum,
        duplicate=False,
        sheets_by_group=sheets_by_group(out.groups),
    )
    await store_sheets_by_group(conn, wf, batch_id, receipt.sheets_by_group)
    await write_audit(
        conn,
        ref,
        f"import:{batch_id}",
        "ballots_imported",
        IMPORT_ACTOR,
        {**receipt_detail(receipt, "import"), "rows": out.rows},
    )
    return receipt, out.rows


async def _stored_batch(
    conn: asyncpg.Connection, workflow_id: str, file: _BatchFile
) -> tuple[BallotBatchReceipt, int] | None:
    """A re-run: the batch's receipt and mark rows if it is stored and the file still gives
    its checksum; None if it is not stored."""
    batch_id, reader = file.batch_id, file.reader
    row = await conn.fetchrow(
        "SELECT ballots, checksum FROM ballot_batches WHERE workflow_id = $1 AND batch_id = $2",
        workflow_id,
        batch_id,
    )
    if row is None:
        return None
    parsed = await asyncio.to_thread(
        parse_ballot_csv, file.path, reader.unit, reader.policy, file.on_bytes
    )
    if parsed.problems:
        raise BallotImportError(parsed.problems)
    if parsed.checksum != row["checksum"]:
        raise BallotImportError(
            [Problem(0, f"batch_id: batch {batch_id!r} was already stored with other ballots")]
        )
    receipt = BallotBatchReceipt(
        batch_id=batch_id,
        count=row["ballots"],
        checksum=row["checksum"],
        duplicate=True,
        sheets_by_group=await batch_sheets_by_group(conn, workflow_id, batch_id),
    )
    return receipt, parsed.rows


async def _unlink_spent_tokens(conn: asyncpg.Connection, workflow_id: str) -> None:
    """Apart from the import's transaction: every spent token of the unit rewritten, so that
    its xmin no longer names the transaction that also wrote the batch's marks. Under the
    unit's rater group locks, as the pool's rewrite_spent_tokens is (two rewrites would
    otherwise deadlock); in one statement, not the pool's drawn order, as the import spent
    its tokens in one statement too: their order on disk never followed the file's."""
    async with conn.transaction():
        await lock_rater_groups(conn, workflow_id)
        await conn.execute(
            "UPDATE ballot_tokens SET used_at = used_at "
            "WHERE workflow_id = $1 AND used_at IS NOT NULL",
            workflow_id,
        )


async def import_ballots(
    client: Client,
    db: Db,
    path: Path,
    campaign_id: str,
    unit_id: str,
    *,
    batch_id: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Reads, checks and stores a ballot CSV in one transaction, then registers it with the
    unit's workflow; all or nothing, idempotent by batch id (default `import-` + a sha256
    prefix of the file). Raises BallotImportError listing every problem (with its CSV line)
    if anything is wrong; the register update's rejection propagates as
    WorkflowUpdateFailedError.

    The file is read while the marks stream into COPY, on this event loop (a worker sharing
    it waits meanwhile)."""
    if batch_id is not None:
        try:
            TypeAdapter(Identifier).validate_python(batch_id)
        except ValidationError as err:
            raise BallotImportError([Problem(0, f"--batch-id {batch_id!r}: not an id")]) from err
        if batch_id.startswith(POOL_BATCH_PREFIX):
            raise BallotImportError(
                [Problem(0, f"--batch-id {batch_id!r}: {POOL_BATCH_PREFIX}* names the pool's")]
            )
    workflow_id = unit_workflow_id(campaign_id, unit_id)
    phases = _Phases(progress)
    unit_input = await unit_input_of(client, workflow_id)
    reader = BallotCsvReader(unit_input.unit, unit_input.policy.ballots)
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    batch_id = batch_id or await asyncio.to_thread(file_batch_id, path)
    phases.done("prepare")

    handle = client.get_workflow_handle(workflow_id)
    file = _BatchFile(batch_id, path, reader, phases.bar("read + copy", size))
    async with _connection(db) as conn:
        ref = await _unit_ref(conn, workflow_id)
        if ref is None:
            raise BallotImportError([Problem(0, f"unit {workflow_id} is not registered")])
        stored = await _stored_batch(conn, workflow_id, file)
        if stored is not None:  # a re-run, perhaps of an import that stopped before unlinking
            receipt, rows = stored
            phases.done("store")
        else:
            stage = (await handle.query("status"))["stage"]
            if stage != Stage.EVALUATION:
                raise BallotImportError(
                    [Problem(0, f"the unit is in stage {stage}; ballots are taken in evaluation")]
                )
            async with conn.transaction():
                receipt, rows = await _store_batch(conn, ref, file)
            phases.done("store")
        await _unlink_spent_tokens(conn, workflow_id)
        phases.done("unlink")

    key = f"import-{batch_id}"
    sheets = sum(receipt.sheets_by_group.values())
    update = await handle.execute_update(
        "register_ballot_batch",
        {
            "idempotency_key": key,
            "actor": IMPORT_ACTOR.model_dump(mode="json"),
            "batch_id": batch_id,
            "ballots": receipt.count,
            "sheets": sheets,
            "checksum": receipt.checksum,
        },
        id=key,
        result_type=dict,
    )
    phases.done("register")
    log.info(
        "ballot batch imported",
        workflow_id=workflow_id,
        unit=unit_id,
        stage=ref.stage.value,
        batch_id=batch_id,
        ballots=receipt.count,
        sheets=sheets,
        stored=not receipt.duplicate,
    )
    return ImportResult(
        workflow_id=workflow_id,
        batch_id=batch_id,
        sheets=sheets,
        ballots=receipt.count,
        rows=rows,
        checksum=receipt.checksum,
        sheets_by_group=receipt.sheets_by_group,
        stored=not receipt.duplicate,
        update=update,
        seconds=phases.seconds,
    )
