"""Ballot sheets in PostgreSQL, shared by both ingestion paths: the storage activities behind
the record_ballots / register_ballot_batch updates, and the bulk import (`kaohe ballots
import`). Callers hold the transaction; everything here runs inside it, so a rejected batch
leaves nothing behind (no token marked used, no mark, no batch row).

Tokens are stored only as sha256 hashes, and no row links a token to the sheet it was used
for: a sheet's rater group is copied from its token onto its marks, and that is all.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from domain.ballots import OVERALL, Mark, marks_checksum, sheet_marks
from schemas.messages import BallotSheet, RegisterBallotBatch
from schemas.policy import RaterGroup
from schemas.workflow_io import BallotBatchReceipt, BallotCounts, OverallCount

Source = Literal["update", "import"]
MAX_PROBLEMS_IN_MESSAGE = 20
MARK_COLUMNS = [
    "workflow_id",
    "batch_id",
    "sheet_no",
    "rater_group",
    "kind",
    "target_id",
    "item",
    "option",
]


class BallotRejected(Exception):
    """A batch that cannot be stored; every problem names its field (sheets[3].token: ...)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = len(problems) - MAX_PROBLEMS_IN_MESSAGE
        super().__init__(
            "; ".join(problems[:MAX_PROBLEMS_IN_MESSAGE])
            + (f"; and {more} more" if more > 0 else "")
        )


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class PreparedBatch:
    """A batch as it will be stored: the marks of each sheet (no token) and its figures."""

    batch_id: str
    tokens: list[str]
    marks: list[list[Mark]]
    ballots: int
    checksum: str

    @property
    def sheets(self) -> int:
        return len(self.marks)

    @property
    def rows(self) -> int:
        return sum(len(m) for m in self.marks)


def prepare_batch(batch_id: str, sheets: Sequence[BallotSheet]) -> PreparedBatch:
    marks = [sheet_marks(s) for s in sheets]
    return PreparedBatch(
        batch_id=batch_id,
        tokens=[s.token for s in sheets],
        marks=marks,
        ballots=sum(s.ballot_count() for s in sheets),
        checksum=marks_checksum(marks),
    )


async def store_rater_groups(
    conn: asyncpg.Connection, workflow_id: str, groups: list[RaterGroup]
) -> None:
    """A unit's rater groups as it started with them; the first stored stay (idempotent)."""
    if not groups:
        return
    await conn.execute(
        """INSERT INTO unit_rater_groups
               (workflow_id, group_id, label, planned, weight_num, weight_den)
           SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::int[])
           ON CONFLICT DO NOTHING""",
        workflow_id,
        [g.group_id for g in groups],
        [g.label for g in groups],
        [g.planned for g in groups],
        [g.weight.numerator for g in groups],
        [g.weight.denominator for g in groups],
    )


async def lock_rater_groups(conn: asyncpg.Connection, workflow_id: str) -> dict[str, int]:
    """Planned sheets per rater group, the rows locked: batches of one unit (either path)
    are taken one at a time, so the planned counts hold exactly."""
    planned = {
        r["group_id"]: r["planned"]
        for r in await conn.fetch(
            "SELECT group_id, planned FROM unit_rater_groups WHERE workflow_id = $1 "
            "ORDER BY group_id FOR UPDATE",
            workflow_id,
        )
    }
    if not planned:
        raise BallotRejected(["sheets: the unit has no rater groups stored; issue tokens first"])
    return planned


async def unused_tokens(conn: asyncpg.Connection, workflow_id: str) -> dict[bytes, str]:
    """token hash -> rater group of the unit's unused tokens (the bulk import looks tokens
    up while it streams, and marks them used at the end)."""
    # No row locks: every writer of a unit's tokens (both ingestion paths and issuing) holds
    # its rater group rows first (lock_rater_groups), and 20,000 token locks cost a write each.
    rows = await conn.fetch(
        "SELECT token_hash, rater_group FROM ballot_tokens "
        "WHERE workflow_id = $1 AND used_at IS NULL",
        workflow_id,
    )
    return {bytes(r["token_hash"]): r["rater_group"] for r in rows}


async def use_tokens(
    conn: asyncpg.Connection, workflow_id: str, hashes: list[bytes]
) -> dict[bytes, str]:
    """Marks the unused ones of these tokens used: token hash -> rater group."""
    rows = await conn.fetch(
        # Day precision only: a timestamp would tie a token to its batch, and a one-sheet
        # batch to its voter.
        """UPDATE ballot_tokens SET used_at = date_trunc('day', now())
           WHERE workflow_id = $1 AND token_hash = ANY($2::bytea[]) AND used_at IS NULL
           RETURNING token_hash, rater_group""",
        workflow_id,
        hashes,
    )
    return {bytes(r["token_hash"]): r["rater_group"] for r in rows}


async def token_problems(
    conn: asyncpg.Connection, workflow_id: str, hashes: list[bytes], usable: Container[bytes]
) -> list[str]:
    """`sheets[i].token: already used` / `not issued for this unit` for every sheet whose
    token is not among the usable ones."""
    missing = [h for h in hashes if h not in usable]
    if not missing:
        return []
    used = {
        bytes(r["token_hash"])
        for r in await conn.fetch(
            "SELECT token_hash FROM ballot_tokens "
            "WHERE workflow_id = $1 AND token_hash = ANY($2::bytea[])",
            workflow_id,
            missing,
        )
    }
    return [
        f"sheets[{i}].token: {'already used' if h in used else 'not issued for this unit'}"
        for i, h in enumerate(hashes)
        if h not in usable
    ]


async def planned_problems(
    conn: asyncpg.Connection, workflow_id: str, planned: dict[str, int], groups: list[str]
) -> list[str]:
    """Adds this batch's sheets to the groups' returned counts (rows locked by
    lock_rater_groups) and names every sheet beyond its group's planned count."""
    in_batch = Counter(groups)
    returned = {
        r["group_id"]: r["returned"]
        for r in await conn.fetch(
            """UPDATE unit_rater_groups g SET returned = g.returned + b.n
               FROM unnest($2::text[], $3::int[]) AS b(group_id, n)
               WHERE g.workflow_id = $1 AND g.group_id = b.group_id
               RETURNING g.group_id, g.returned""",
            workflow_id,
            list(in_batch),
            list(in_batch.values()),
        )
    }
    over = {g for g, n in returned.items() if n > planned.get(g, 0)}
    problems: list[str] = []
    count = {g: returned[g] - in_batch[g] for g in over}
    for i, g in enumerate(groups):
        if g in over:
            count[g] += 1
            if count[g] > planned.get(g, 0):
                problems.append(
                    f"sheets[{i}].token: rater group {g} has returned its "
                    f"{planned.get(g, 0)} planned sheets; this one is beyond the plan"
                )
    return problems


def duplicate_problems(hashes: list[bytes]) -> list[str]:
    first: dict[bytes, int] = {}
    problems = []
    for i, h in enumerate(hashes):
        if h in first:
            problems.append(f"sheets[{i}].token: used twice in this batch (sheets[{first[h]}])")
        first.setdefault(h, i)
    return problems


async def claim_tokens(conn: asyncpg.Connection, workflow_id: str, tokens: list[str]) -> list[str]:
    """Marks the batch's tokens used and returns each sheet's rater group, or raises
    BallotRejected naming every sheet whose token is unknown, used, or beyond its group's
    planned count."""
    planned = await lock_rater_groups(conn, workflow_id)
    hashes = [token_hash(t) for t in tokens]
    problems = duplicate_problems(hashes)
    if problems:
        raise BallotRejected(problems)
    group_of = await use_tokens(conn, workflow_id, hashes)
    problems = await token_problems(conn, workflow_id, hashes, group_of)
    if problems:
        raise BallotRejected(problems)
    groups = [group_of[h] for h in hashes]
    problems = await planned_problems(conn, workflow_id, planned, groups)
    if problems:
        raise BallotRejected(problems)
    return groups


def mark_records(
    workflow_id: str,
    batch: PreparedBatch,
    groups: list[str],
    on_rows: Callable[[int], None] | None = None,
    every: int = 20_000,
) -> Iterator[tuple[str, str, int, str, str, str, str, str]]:
    """The rows COPYed into ballot_marks; `on_rows(n)` is told every `every` rows."""
    done = 0
    for sheet_no, (marks, group) in enumerate(zip(batch.marks, groups, strict=True)):
        for kind, target, item, option in marks:
            yield (workflow_id, batch.batch_id, sheet_no, group, kind, target, item, option)
        if on_rows is not None:
            done += len(marks)
            if done >= every:
                on_rows(done)
                done = 0
    if on_rows is not None and done:
        on_rows(done)


async def batch_sheets_by_group(
    conn: asyncpg.Connection, workflow_id: str, batch_id: str
) -> dict[str, int]:
    stored = await conn.fetchval(
        "SELECT sheets_by_group::text FROM ballot_batches WHERE workflow_id = $1 AND batch_id = $2",
        workflow_id,
        batch_id,
    )
    if stored is not None:
        return dict(sorted(json.loads(stored).items()))
    # A batch stored before sheets_by_group was kept (migration 008): count its marks.
    rows = await conn.fetch(
        """SELECT rater_group, count(DISTINCT sheet_no) AS n FROM ballot_marks
           WHERE workflow_id = $1 AND batch_id = $2 AND item = $3
           GROUP BY rater_group ORDER BY rater_group""",
        workflow_id,
        batch_id,
        OVERALL,
    )
    return {r["rater_group"]: r["n"] for r in rows}


def sheets_by_group(groups: list[str]) -> dict[str, int]:
    """Sheets per rater group of a batch, from each sheet's group."""
    return dict(sorted(Counter(groups).items()))


async def store_batch(
    conn: asyncpg.Connection,
    workflow_id: str,
    batch: PreparedBatch,
    source: Source,
    on_rows: Callable[[int], None] | None = None,
) -> BallotBatchReceipt:
    """Stores a batch once: the same batch_id again with the same checksum is a duplicate
    (its receipt, nothing written), with another checksum a BallotRejected. An update batch
    counts at once; an imported one once register_ballot_batch has verified it."""
    inserted = await conn.fetchval(
        """INSERT INTO ballot_batches
               (workflow_id, batch_id, ballots, sheets, checksum, source, registered_at)
           VALUES ($1, $2, $3, $4, $5, $6,
                   CASE WHEN $6 = 'update' THEN date_trunc('day', now()) END)
           ON CONFLICT DO NOTHING RETURNING true""",
        workflow_id,
        batch.batch_id,
        batch.ballots,
        batch.sheets,
        batch.checksum,
        source,
    )
    if not inserted:
        existing = await conn.fetchrow(
            "SELECT ballots, checksum FROM ballot_batches WHERE workflow_id = $1 AND batch_id = $2",
            workflow_id,
            batch.batch_id,
        )
        assert existing is not None
        if existing["checksum"] != batch.checksum:
            raise BallotRejected(
                [f"batch_id: batch {batch.batch_id!r} was already stored with other ballots"]
            )
        return BallotBatchReceipt(
            batch_id=batch.batch_id,
            count=existing["ballots"],
            checksum=batch.checksum,
            duplicate=True,
            sheets_by_group=await batch_sheets_by_group(conn, workflow_id, batch.batch_id),
        )
    groups = await claim_tokens(conn, workflow_id, batch.tokens)
    await conn.copy_records_to_table(
        "ballot_marks",
        records=mark_records(workflow_id, batch, groups, on_rows),
        columns=MARK_COLUMNS,
    )
    by_group = sheets_by_group(groups)
    await store_sheets_by_group(conn, workflow_id, batch.batch_id, by_group)
    return BallotBatchReceipt(
        batch_id=batch.batch_id,
        count=batch.ballots,
        checksum=batch.checksum,
        duplicate=False,
        sheets_by_group=by_group,
    )


async def store_sheets_by_group(
    conn: asyncpg.Connection, workflow_id: str, batch_id: str, by_group: dict[str, int]
) -> None:
    await conn.execute(
        "UPDATE ballot_batches SET sheets_by_group = $3::jsonb "
        "WHERE workflow_id = $1 AND batch_id = $2",
        workflow_id,
        batch_id,
        json.dumps(by_group),
    )


async def verify_batch(
    conn: asyncpg.Connection, workflow_id: str, action: RegisterBallotBatch
) -> BallotBatchReceipt:
    """Confirms an imported batch is stored as announced and makes it count (idempotent:
    `duplicate` says it was registered already)."""
    row = await conn.fetchrow(
        """SELECT ballots, sheets, checksum, registered_at FROM ballot_batches
           WHERE workflow_id = $1 AND batch_id = $2 FOR UPDATE""",
        workflow_id,
        action.batch_id,
    )
    if row is None:
        raise BallotRejected([f"batch_id: batch {action.batch_id!r} was not imported"])
    problems = [
        f"{field}: announced {announced}, imported {row[field]}"
        for field, announced in (
            ("ballots", action.ballots),
            ("sheets", action.sheets),
            ("checksum", action.checksum),
        )
        if row[field] != announced
    ]
    if problems:
        raise BallotRejected(problems)
    duplicate = row["registered_at"] is not None
    if not duplicate:
        await conn.execute(
            "UPDATE ballot_batches SET registered_at = date_trunc('day', now()) "
            "WHERE workflow_id = $1 AND batch_id = $2",
            workflow_id,
            action.batch_id,
        )
    return BallotBatchReceipt(
        batch_id=action.batch_id,
        count=row["ballots"],
        checksum=row["checksum"],
        duplicate=duplicate,
        sheets_by_group=await batch_sheets_by_group(conn, workflow_id, action.batch_id),
    )


async def count_overall(conn: asyncpg.Connection, workflow_id: str) -> BallotCounts:
    """Overall marks per kind, target, rater group and option, and sheets per rater group,
    over the batches the workflow has taken."""
    rows = await conn.fetch(
        """SELECT m.kind, m.target_id, m.rater_group, m.option, count(*) AS n
           FROM ballot_marks m JOIN ballot_batches b USING (workflow_id, batch_id)
           WHERE m.workflow_id = $1 AND m.item = $2 AND b.registered_at IS NOT NULL
           GROUP BY m.kind, m.target_id, m.rater_group, m.option
           ORDER BY m.kind, m.target_id, m.rater_group, m.option""",
        workflow_id,
        OVERALL,
    )
    sheets = await conn.fetch(
        """SELECT m.rater_group, count(DISTINCT (m.batch_id, m.sheet_no)) AS n
           FROM ballot_marks m JOIN ballot_batches b USING (workflow_id, batch_id)
           WHERE m.workflow_id = $1 AND m.item = $2 AND b.registered_at IS NOT NULL
           GROUP BY m.rater_group ORDER BY m.rater_group""",
        workflow_id,
        OVERALL,
    )
    return BallotCounts(
        overall=[
            OverallCount(
                kind=r["kind"],
                target_id=r["target_id"],
                rater_group=r["rater_group"],
                option=r["option"],
                n=r["n"],
            )
            for r in rows
        ],
        sheets_by_group={r["rater_group"]: r["n"] for r in sheets},
    )


def receipt_detail(receipt: BallotBatchReceipt, source: Source) -> dict[str, object]:
    """What an audit row says about a batch: figures only, never a ballot."""
    return {
        "batch_id": receipt.batch_id,
        "source": source,
        "ballots": receipt.count,
        "sheets_by_group": receipt.sheets_by_group,
        "checksum": receipt.checksum,
    }
