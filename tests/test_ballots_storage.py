"""Ballot tokens, the ballot activities and the bulk import, on the real servers.

Storage tests call the activities directly on a registered unit (no workflow needed); the
import tests drive a real unit workflow to its evaluation first.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import random
import subprocess
import sys
import uuid
from pathlib import Path
from unittest import mock

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.ballot_pool import Pooled, flush_pool, pool_sheets
from activities.ballot_store import MARK_COLUMNS, BallotRejected, prepare_batch, store_batch
from activities.ballots import BallotActivities
from activities.storage import StorageActivities
from domain.ballots import marks_checksum, sheet_marks
from kaohe.ballot_intake import submission_key
from kaohe.ingest import ballot_csv
from kaohe.ingest.ballot_csv import (
    BallotCsvReader,
    MarksDigest,
    NotStandard,
    ReadSheet,
    parse_ballot_csv,
    write_ballot_csv,
)
from kaohe.ingest.ballot_io import (
    BallotImportError,
    TokensError,
    import_ballots,
    issue_tokens,
)
from kaohe.sim.simulate import BALLOT_SYSTEM, TokenSource, drive_unit, sheet_for
from schemas.common import Stage
from schemas.messages import BallotSheet, RegisterBallotBatch
from schemas.policy import BallotPolicy
from schemas.roster import UnitSpec
from schemas.workflow_io import BallotBatchCheck, BallotBatchReceipt, RegisterUnit, UnitRef
from tests.conftest import Stack
from tests.helpers import SMALL_GROUPS, cast, sample_unit, start_unit

POLICY = BallotPolicy()


async def registered(pool: asyncpg.Pool, cadres: int = 2) -> tuple[UnitSpec, UnitRef]:
    """A unit registered in PostgreSQL as the workflow registers it, in evaluation."""
    unit = sample_unit(cadres=cadres)
    ref = UnitRef(
        workflow_id=f"kaohe-store-{unit.unit_id}",
        campaign_id="store",
        unit_id=unit.unit_id,
        stage=Stage.EVALUATION,
    )
    rec = RegisterUnit(
        ref=ref, year=2026, campaign_title="测试", unit=unit, rater_groups=SMALL_GROUPS
    )
    storage = StorageActivities(pool)
    await storage.register_unit(rec)
    await storage.register_unit(rec)  # idempotent
    return unit, ref


async def pooled(pool: asyncpg.Pool, ref: UnitRef, sheets: list[BallotSheet], key: str) -> Pooled:
    """Sheets as the intake pools them (their tokens spent in the same statement)."""
    async with pool.acquire() as conn:
        return await pool_sheets(conn, ref.workflow_id, sheets, submission_key(key))


async def flushed(pool: asyncpg.Pool, ref: UnitRef) -> list[BallotBatchReceipt]:
    """Every pooled sheet let go, one batch per rater group, in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        return await flush_pool(conn, ref.workflow_id, min_sheets=1)


async def rejection(coro: object) -> str:
    """What the store refuses: a BallotRejected (the activity behind a register makes it a
    non-retryable ApplicationError)."""
    with pytest.raises((BallotRejected, ApplicationError)) as info:
        await coro  # type: ignore[misc]
    err = info.value
    if isinstance(err, ApplicationError):
        assert err.type == "BallotRejected" and err.non_retryable
        return err.message
    return str(err)


async def fetchval(pool: asyncpg.Pool, sql: str, *args: object) -> object:
    async with pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def test_rater_groups_are_stored_once(pool: asyncpg.Pool) -> None:
    _, ref = await registered(pool)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT group_id, planned, weight_num, weight_den FROM unit_rater_groups "
            "WHERE workflow_id = $1 ORDER BY group_id",
            ref.workflow_id,
        )
    assert [tuple(r) for r in rows] == [("A", 2, 2, 5), ("B", 2, 3, 10), ("C", 3, 3, 10)]


async def test_tokens_are_stored_only_as_hashes(pool: asyncpg.Pool) -> None:
    unit, ref = await registered(pool)
    issued = await issue_tokens(pool, ref.workflow_id)
    assert {g: len(t) for g, t in issued.tokens.items()} == {"A": 2, "B": 2, "C": 3}
    tokens = [t for group in issued.tokens.values() for t in group]
    assert len(set(tokens)) == 7 and all(len(t) >= 16 for t in tokens)
    rng = random.Random(0)
    await pooled(pool, ref, [sheet_for(t, unit, POLICY, rng) for t in tokens[:3]], "b1")

    async with pool.acquire() as conn:
        stored = {
            bytes(r["token_hash"]): r["rater_group"]
            for r in await conn.fetch(
                "SELECT token_hash, rater_group FROM ballot_tokens WHERE workflow_id = $1",
                ref.workflow_id,
            )
        }
        assert stored == {
            hashlib.sha256(t.encode()).digest(): g for g, ts in issued.tokens.items() for t in ts
        }
        # No table holds a token in plain text (every row of every table, as text).
        tables = await conn.fetch(
            "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        for table in tables:
            text = "\n".join(r[0] for r in await conn.fetch(f"SELECT x::text FROM {table['t']} x"))
            assert not any(t in text for t in tokens), table["t"]

    with pytest.raises(TokensError, match="already issued"):
        await issue_tokens(pool, ref.workflow_id)
    again = await issue_tokens(pool, ref.workflow_id, reissue=True)
    # 3 used (all from A and B, in the order issued), so 4 are issued again.
    assert again.deleted_unused == 4
    assert sum(g.issued for g in again.groups) == 4
    assert (
        await fetchval(
            pool, "SELECT count(*) FROM ballot_tokens WHERE workflow_id = $1", ref.workflow_id
        )
        == 7
    )
    assert (
        await fetchval(
            pool,
            "SELECT count(*) FROM audit_log WHERE workflow_id = $1 AND kind LIKE 'tokens_%'",
            ref.workflow_id,
        )
        == 2
    )


async def test_issue_needs_a_registered_unit(pool: asyncpg.Pool) -> None:
    with pytest.raises(TokensError, match="not registered"):
        await issue_tokens(pool, "kaohe-nowhere-nothing")


async def test_a_reused_token_rejects_the_whole_batch(pool: asyncpg.Pool) -> None:
    unit, ref = await registered(pool)
    issued = (await issue_tokens(pool, ref.workflow_id)).tokens
    a, b, c = issued["A"], issued["B"], issued["C"]
    rng = random.Random(1)

    b1 = [sheet_for(t, unit, POLICY, rng) for t in (a[0], b[0])]
    first = await pooled(pool, ref, b1, "b1")
    assert (len(first.receipts), first.sheets_by_group, first.duplicate) == (
        2,
        {"A": 1, "B": 1},
        False,
    )

    reuse = [sheet_for(t, unit, POLICY, rng) for t in (c[0], c[1], a[0])]
    assert await rejection(pooled(pool, ref, reuse, "b2")) == "sheets[2].token: already used"
    forged = [sheet_for(c[0], unit, POLICY, rng), sheet_for("f" * 22, unit, POLICY, rng)]
    assert await rejection(pooled(pool, ref, forged, "b3")) == (
        "sheets[1].token: not issued for this unit"
    )
    twice = [sheet_for(c[0], unit, POLICY, rng), sheet_for(c[0], unit, POLICY, rng)]
    assert "sheets[1].token: used twice" in await rejection(pooled(pool, ref, twice, "b4"))
    # Nothing of the rejected batches: nothing pooled, their good tokens still unused.
    wf = ref.workflow_id
    assert await fetchval(pool, "SELECT count(*) FROM ballot_pool WHERE workflow_id=$1", wf) == 2
    assert (
        await fetchval(
            pool,
            "SELECT count(*) FROM ballot_tokens WHERE workflow_id=$1 AND used_at IS NOT NULL",
            wf,
        )
        == 2
    )
    # A token of another unit is not issued for this one.
    _, other = await registered(pool)
    other_tokens = (await issue_tokens(pool, other.workflow_id)).tokens
    elsewhere = [sheet_for(other_tokens["A"][0], unit, POLICY, rng)]
    assert "not issued for this unit" in await rejection(pooled(pool, ref, elsewhere, "b5"))

    # The same submission again is answered with its first receipts, nothing spent twice.
    again = await pooled(pool, ref, b1, "b1")
    assert (again.duplicate, again.receipts) == (True, first.receipts)
    # Flushed: one batch per rater group, the pool empty.
    batches = await flushed(pool, ref)
    assert sorted((list(b.sheets_by_group.items()), b.count) for b in batches) == [
        ([("A", 1)], 3),
        ([("B", 1)], 3),
    ]
    assert await fetchval(pool, "SELECT count(*) FROM ballot_pool WHERE workflow_id=$1", wf) == 0


async def test_sheets_beyond_the_planned_count_are_refused(pool: asyncpg.Pool) -> None:
    unit, ref = await registered(pool)
    issued = (await issue_tokens(pool, ref.workflow_id)).tokens
    # A token issued outside kaohe (or a tampered table): group A now has 3 for 2 planned.
    extra = "e" * 22
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ballot_tokens (workflow_id, token_hash, rater_group) VALUES ($1, $2, 'A')",
            ref.workflow_id,
            hashlib.sha256(extra.encode()).digest(),
        )
    rng = random.Random(2)
    sheets = [sheet_for(t, unit, POLICY, rng) for t in [*issued["A"], extra, issued["B"][0]]]
    msg = await rejection(pooled(pool, ref, sheets, "b1"))
    assert msg.startswith("sheets[2].token: rater group A has returned its 2 planned sheets")
    assert (
        await fetchval(
            pool, "SELECT count(*) FROM ballot_marks WHERE workflow_id=$1", ref.workflow_id
        )
        == 0
    )
    ok = await pooled(pool, ref, sheets[:2], "b2")
    assert ok.sheets_by_group == {"A": 2}
    late = await rejection(pooled(pool, ref, sheets[2:], "b3"))
    assert late.startswith("sheets[0].token: rater group A has returned its 2 planned")


async def test_ballot_tables_have_no_voter_or_token_link(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        columns = {
            table: [
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    table,
                )
            ]
            for table in ("ballot_marks", "ballot_tokens", "ballot_batches")
        }
        links = await conn.fetch(
            """SELECT tc.table_name, ccu.table_name AS target
               FROM information_schema.table_constraints tc
               JOIN information_schema.constraint_column_usage ccu USING (constraint_name)
               WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = 'ballot_tokens'"""
        )
    assert columns["ballot_marks"] == MARK_COLUMNS
    for table, cols in columns.items():
        assert not {"voter", "voter_id", "rater_id", "token", "token_hash", "actor_id"} & (
            set(cols) - ({"token_hash"} if table == "ballot_tokens" else set())
        ), table
    assert not {"batch_id", "sheet_no"} & set(columns["ballot_tokens"])
    assert {r["target"] for r in links} <= {"units", "unit_rater_groups"}


async def test_verify_and_count_take_registered_batches_only(pool: asyncpg.Pool) -> None:
    unit, ref = await registered(pool)
    issued = (await issue_tokens(pool, ref.workflow_id)).tokens
    rng = random.Random(3)
    ballots = BallotActivities(pool)
    await pooled(pool, ref, [sheet_for(issued["A"][0], unit, POLICY, rng)], "u1")
    [from_pool] = await flushed(pool, ref)
    imported = prepare_batch("i1", [sheet_for(t, unit, POLICY, rng) for t in issued["C"]])
    async with pool.acquire() as conn, conn.transaction():
        await store_batch(conn, ref.workflow_id, imported, "import")

    counts = await ballots.count_ballots(ref)
    assert counts.sheets_by_group == {}  # neither batch is registered yet

    def check(**change: object) -> BallotBatchCheck:
        action = RegisterBallotBatch(
            idempotency_key="reg-i1",
            actor=BALLOT_SYSTEM,
            batch_id="i1",
            ballots=imported.ballots,
            sheets=imported.sheets,
            checksum=imported.checksum,
        )
        return BallotBatchCheck(ref=ref, action=action.model_copy(update=change))

    assert await rejection(ballots.verify_ballot_batch(check(batch_id="i2"))) == (
        "batch_id: batch 'i2' was not imported"
    )
    assert await rejection(ballots.verify_ballot_batch(check(sheets=4))) == (
        "sheets: announced 4, imported 3"
    )
    assert "checksum: announced" in await rejection(
        ballots.verify_ballot_batch(check(checksum="0" * 64))
    )
    receipt = await ballots.verify_ballot_batch(check())
    assert (receipt.count, receipt.sheets_by_group, receipt.duplicate) == (9, {"C": 3}, False)
    assert (await ballots.verify_ballot_batch(check())).duplicate
    # The pool's batch is registered the same way, by what the flush announced.
    pool_check = check(
        batch_id=from_pool.batch_id, ballots=from_pool.count, sheets=1, checksum=from_pool.checksum
    )
    assert (await ballots.verify_ballot_batch(pool_check)).sheets_by_group == {"A": 1}

    counts = await ballots.count_ballots(ref)
    assert counts.sheets_by_group == {"A": 1, "C": 3}
    team: dict[str, int] = {}
    for c in counts.overall:
        if c.kind == "team":
            team[c.rater_group] = team.get(c.rater_group, 0) + c.n
    assert team == {"A": 1, "C": 3}
    cadre = [c for c in counts.overall if c.kind == "cadre"]
    assert {c.target_id for c in cadre} == {x.cadre_id for x in unit.cadres}
    assert sum(c.n for c in cadre) == 8
    async with pool.acquire() as conn:
        view = await conn.fetchval(
            "SELECT sum(n) FROM ballot_tallies WHERE workflow_id = $1 AND item = 'overall'",
            ref.workflow_id,
        )
    assert view == 12


# ---- the bulk import, against a real unit workflow ---------------------------------------


async def unit_in_evaluation(
    client: Client, worker: str, tokens: TokenSource
) -> tuple[UnitSpec, str, dict[str, list[str]]]:
    unit = sample_unit(cadres=2)
    campaign = f"imp{uuid.uuid4().hex[:6]}"
    handle = await start_unit(client, worker, unit, campaign_id=campaign)
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    return unit, campaign, await tokens(handle.id)


def without_duplicate(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k != "duplicate"}


def rows_of(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


async def test_import_with_a_bad_csv_names_lines_and_stores_nothing(
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    stack: Stack,
    tmp_path: Path,
) -> None:
    unit, campaign, issued = await unit_in_evaluation(client, worker, tokens)
    rng = random.Random(4)
    good = tmp_path / "good.csv"
    sheets = [sheet_for(t, unit, POLICY, rng) for t in issued["A"] + issued["C"]]
    write_ballot_csv(good, [(f"s{i + 1}", s) for i, s in enumerate(sheets)])
    rows = rows_of(good)
    per_sheet = len(rows[1:]) // len(sheets)
    assert rows[0] == ["sheet", "token", "kind", "target_id", "item", "option"]
    assert rows[1][2:5] == ["team", "", "overall"]
    # Line n of the file is rows[n - 1].
    rows[1][5] = "极好"  # line 2: sheet s1's team overall
    rows[per_sheet + 3][2] = "teem"  # line per_sheet + 4: in sheet s2
    del rows[2 * per_sheet + 1]  # sheet s3 loses its team overall (was line 2*per_sheet+2)
    bad = write_rows(tmp_path / "bad.csv", rows)

    with pytest.raises(BallotImportError) as info:
        await import_ballots(client, pool, bad, campaign, unit.unit_id)
    problems = [str(p) for p in info.value.problems]
    assert problems[0].startswith("line 2: sheet s1: team.overall: '极好' is not one of")
    assert f"line {per_sheet + 4}: sheet s2: kind: 'teem' is not one of" in problems[1]
    assert f"line {2 * per_sheet + 2}: sheet s3: team: no overall row" in problems

    # The same over the command line: every problem with its line, exit code 2.
    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            "from kaohe.cli.ballots import ballots_app; ballots_app()",  # as `kaohe ballots`
            "import",
            str(bad),
            "--campaign",
            campaign,
            "--unit",
            unit.unit_id,
        ],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "nothing imported" in run.stderr
    assert "line 2: sheet s1: team.overall" in run.stderr

    # A token used already is reported at its sheet's first line, and nothing is stored.
    only_s1 = write_rows(tmp_path / "s1.csv", rows_of(good)[: per_sheet + 1])
    await import_ballots(client, pool, only_s1, campaign, unit.unit_id)
    with pytest.raises(BallotImportError) as info:
        await import_ballots(client, pool, good, campaign, unit.unit_id)
    assert [str(p) for p in info.value.problems] == ["line 2: sheet s1: token: already used"]
    wf = f"kaohe-{campaign}-{unit.unit_id}"
    assert await fetchval(pool, "SELECT count(*) FROM ballot_batches WHERE workflow_id=$1", wf) == 1
    assert (
        await fetchval(
            pool,
            "SELECT count(*) FROM ballot_tokens WHERE workflow_id=$1 AND used_at IS NOT NULL",
            wf,
        )
        == 1
    )

    # A problem on the last sheet only: the column-wise read has streamed every other sheet
    # into COPY by then; the full read names the line, and nothing of the file is kept.
    rest = rows_of(good)[per_sheet + 1 :]
    rest[-1][5] = "极好"
    last = write_rows(tmp_path / "last.csv", [rows_of(good)[0], *rest])
    with pytest.raises(BallotImportError) as info:
        await import_ballots(client, pool, last, campaign, unit.unit_id)
    assert [p.line for p in info.value.problems] == [len(rest) + 1]
    assert await fetchval(pool, "SELECT count(*) FROM ballot_batches WHERE workflow_id=$1", wf) == 1
    marks = await fetchval(pool, "SELECT count(*) FROM ballot_marks WHERE workflow_id=$1", wf)
    assert marks == per_sheet
    rest[-1][5] = rows_of(good)[-1][5]
    fixed = await import_ballots(
        client,
        pool,
        write_rows(tmp_path / "last.csv", [rows_of(good)[0], *rest]),
        campaign,
        unit.unit_id,
    )
    assert fixed.sheets == len(sheets) - 1 and fixed.rows == len(rest)
    marks = await fetchval(pool, "SELECT count(*) FROM ballot_marks WHERE workflow_id=$1", wf)
    assert marks == per_sheet * len(sheets)


async def test_import_twice_is_idempotent(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, tmp_path: Path
) -> None:
    unit, campaign, issued = await unit_in_evaluation(client, worker, tokens)
    rng = random.Random(5)
    path = tmp_path / "ballots.csv"
    sheets = [sheet_for(t, unit, POLICY, rng) for t in issued["A"] + issued["B"][:1]]
    write_ballot_csv(path, [(str(i), s) for i, s in enumerate(sheets)])

    first = await import_ballots(client, pool, path, campaign, unit.unit_id)
    assert first.stored and first.batch_id.startswith("import-")
    assert (first.sheets, first.ballots, first.sheets_by_group) == (3, 9, {"A": 2, "B": 1})
    assert first.update["accepted"] is True
    again = await import_ballots(client, pool, path, campaign, unit.unit_id)
    assert not again.stored
    assert without_duplicate(again.update) == without_duplicate(first.update)
    assert again.checksum == first.checksum

    wf = first.workflow_id
    assert await fetchval(pool, "SELECT count(*) FROM ballot_batches WHERE workflow_id=$1", wf) == 1
    assert (
        await fetchval(
            pool,
            "SELECT count(*) FROM audit_log WHERE workflow_id=$1 AND kind = 'ballots_registered'",
            wf,
        )
        == 1
    )
    handle = client.get_workflow_handle(wf)
    status = await handle.query("status")
    assert status["evaluation"]["ballots"] == 9
    assert status["evaluation"]["sheets"] == 3
    assert status["stage"] == "evaluation"

    # The rest of the sheets through the intake (the API's way) close the evaluation.
    rest = [sheet_for(t, unit, POLICY, rng) for t in issued["B"][1:] + issued["C"]]
    taken = await cast(client, tokens, wf, rest)
    assert taken.answers[-1].stage == "talks"
    # A re-run after the evaluation closed still finds its batch and returns the first result.
    late = await import_ballots(client, pool, path, campaign, unit.unit_id)
    assert without_duplicate(late.update) == without_duplicate(first.update)
    assert not late.stored


async def test_tokens_issue_from_the_cli(
    client: Client, worker: str, pool: asyncpg.Pool, stack: Stack, tmp_path: Path
) -> None:
    unit = sample_unit(cadres=1)
    campaign = f"tok{uuid.uuid4().hex[:6]}"
    handle = await start_unit(client, worker, unit, campaign_id=campaign)
    for _ in range(100):
        if await fetchval(pool, "SELECT 1 FROM units WHERE workflow_id=$1", handle.id):
            break
        await asyncio.sleep(0.1)

    def issue(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from kaohe.cli.ballots import tokens_app; tokens_app()",
                "issue",
                "--campaign",
                campaign,
                "--unit",
                unit.unit_id,
                *extra,
            ],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    first = await asyncio.to_thread(issue)
    assert first.returncode == 0, first.stderr
    path = tmp_path / f"tokens-{campaign}-{unit.unit_id}.csv"
    rows = rows_of(path)
    assert rows[0] == ["rater_group", "token"]
    assert [r[0] for r in rows[1:]] == ["A", "A", "B", "B", "C", "C", "C"]
    assert path.stat().st_mode & 0o077 == 0
    assert "7 tokens written" in first.stdout
    refused = await asyncio.to_thread(issue, "--out", "second.csv")
    assert refused.returncode == 1 and "already issued" in refused.stderr
    assert not (tmp_path / "second.csv").exists()
    again = await asyncio.to_thread(issue, "--out", "second.csv", "--reissue")
    assert again.returncode == 0, again.stderr
    assert len(rows_of(tmp_path / "second.csv")) == 8
    assert set(r[1] for r in rows_of(tmp_path / "second.csv")[1:]).isdisjoint(
        r[1] for r in rows[1:]
    )


# ---- the CSV reader: its fast path agrees with the full one -----------------------------


def test_the_csv_reader_agrees_with_batch_problems_and_marks_checksum(tmp_path: Path) -> None:
    unit = sample_unit(cadres=3, selection_review=True)
    unit.cadres[2].newly_promoted = True
    rng = random.Random(6)
    sheets = [sheet_for(f"token-{i:012d}", unit, POLICY, rng) for i in range(30)]
    # Sheet 3 in another (valid) order: its rows are not in the standard layout.
    path = tmp_path / "b.csv"
    write_ballot_csv(path, [(f"s{i}", s) for i, s in enumerate(sheets)])
    rows = rows_of(path)
    per_sheet = (len(rows) - 1) // len(sheets)
    block = rows[1 + 3 * per_sheet : 1 + 4 * per_sheet]
    rows[1 + 3 * per_sheet : 1 + 4 * per_sheet] = block[::-1]
    write_rows(path, rows)

    def marks_of(read: list[ReadSheet]) -> list[list[tuple[str, ...]]]:
        return [[tuple(r[2:6]) for r in s.rows] for s in read]

    reader = BallotCsvReader(unit, POLICY)
    assert reader.fast_path
    fast = list(reader.read(path))
    full_reader = BallotCsvReader(unit, POLICY)
    full_reader.fast_path = False  # every sheet through BallotSheet and batch_problems
    full = list(full_reader.read(path))
    assert reader.problems == full_reader.problems == []
    assert [s.label for s in fast] == [s.label for s in full] == [f"s{i}" for i in range(30)]
    assert [s.ballots for s in fast] == [s.ballots for s in full]
    assert [s.ballots for s in full] == [s.ballot_count() for s in sheets]
    # Both give the marks as sheet_marks does (sheet 3 in its CSV's order), so one checksum.
    assert marks_of(fast) == marks_of(full)
    assert marks_of(full)[:3] == [sheet_marks(s) for s in sheets[:3]]
    assert marks_of(full)[3] != sheet_marks(sheets[3])
    digest = MarksDigest()
    for sheet in fast:
        digest.add(sheet.rows)
    assert digest.hexdigest() == marks_checksum(marks_of(full))
    assert parse_ballot_csv(path, unit, POLICY).checksum == digest.hexdigest()

    # The import's column-wise read: the same sheets until sheet 3, where it gives up.
    standard = []
    with pytest.raises(NotStandard):
        for sheet in BallotCsvReader(unit, POLICY).read_standard(path):
            standard.append(sheet)
    assert [s.label for s in standard] == ["s0", "s1", "s2"]
    assert [list(s.options) for s in standard] == [[r[5] for r in s.rows] for s in full[:3]]
    standard_digest = MarksDigest()
    for sheet in standard:
        standard_digest.add_standard(reader.heads, sheet.options)
    assert standard_digest.hexdigest() == marks_checksum(marks_of(full)[:3])

    # Every option outside the policy is caught on either path, at its line.
    for n in range(2, len(rows) + 1):
        if n % 7:
            continue
        bad = [list(r) for r in rows]
        bad[n - 1][5] = "不存在"
        write_rows(path, bad)
        parsed = parse_ballot_csv(path, unit, POLICY)
        assert [p.line for p in parsed.problems] == [n], parsed.problems
        assert "'不存在' is not one of" in parsed.problems[0].message


def test_the_standard_read_sees_what_csv_reader_sees(tmp_path: Path) -> None:
    """read_standard matches whole sheets as text: across its chunks, with CRLF or LF, with
    or without a last line end or trailing blank lines, it yields what csv.reader reads; a
    quoted cell, a blank line inside, another label on one row are not its to read."""
    unit = sample_unit(cadres=2)
    rng = random.Random(9)
    sheets = [sheet_for(f"tok-{i:016d}", unit, POLICY, rng) for i in range(40)]
    path = tmp_path / "b.csv"
    write_ballot_csv(path, [(f"第{i}张", s) for i, s in enumerate(sheets)])
    crlf = path.read_bytes().decode()  # csv.writer ends its lines with CRLF
    assert "\r\n" in crlf
    rows = rows_of(path)
    by_label: dict[str, list[list[str]]] = {}
    for row in rows[1:]:
        by_label.setdefault(row[0], []).append(row)
    expected = [(label, g[0][1], tuple(r[5] for r in g)) for label, g in by_label.items()]

    def standard(text: str, chunk: int | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
        path.write_text(text, encoding="utf-8", newline="")
        with mock.patch.object(ballot_csv, "_CHUNK", chunk or ballot_csv._CHUNK):
            read = BallotCsvReader(unit, POLICY).read_standard(path)
            return [(s.label, s.token, s.options) for s in read]

    lf = crlf.replace("\r\n", "\n")
    for text in (crlf, lf, lf.rstrip("\n"), crlf + "\r\n\n", "\ufeff" + crlf):
        assert standard(text) == expected
    assert standard(crlf, chunk=97) == expected  # sheets cut by every chunk's end
    one_row = rows[1:][len(rows) // 2]
    for broken in (
        crlf.replace(f"{one_row[0]},", f'"{one_row[0]}",', 1),  # quoted: csv's, not ours
        crlf.replace("\r\n", "\r\n\r\n", 5),  # a blank line inside a sheet
        crlf.replace(f"\n{one_row[0]},", "\n其他,", 1),  # a row of another sheet
    ):
        with pytest.raises(NotStandard):
            standard(broken)


def test_the_csv_reader_takes_spreadsheet_files_and_refuses_other_encodings(
    tmp_path: Path,
) -> None:
    unit = sample_unit(cadres=1)
    path = tmp_path / "b.csv"
    write_ballot_csv(path, [("1", sheet_for("t" * 20, unit, POLICY, random.Random(0)))])
    text = path.read_text(encoding="utf-8")
    # A byte-order mark and trailing rows of empty cells, as spreadsheets write them.
    path.write_text("\ufeff" + text + ",,,,,\n\n", encoding="utf-8")
    parsed = parse_ballot_csv(path, unit, POLICY)
    assert parsed.problems == [] and len(parsed.sheets) == 1
    path.write_bytes(text.encode("gbk"))
    assert [str(p) for p in parse_ballot_csv(path, unit, POLICY).problems] == [
        "the file is not UTF-8 text (save it as CSV UTF-8)"
    ]
    path.write_text("sheet,token,kind\n", encoding="utf-8")
    problems = parse_ballot_csv(path, unit, POLICY).problems
    assert str(problems[0]).startswith("line 1: header: expected the columns sheet,token,")
