"""One unit through all six stages on the real servers, checked row by row in PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest
from temporalio.client import Client

from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit
from schemas import search_attributes as sa
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import TEST_KEY, sample_unit, start_unit
from tests.test_deadlines import current_details
from workflows.unit import UnitAssessment


async def test_unit_through_all_stages(
    client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=3)
    handle = await start_unit(client, worker, unit)

    status = await drive_unit(client, handle.id, unit, tokens=tokens, talks=talks)

    assert status.stage == Stage.COMPLETED
    result = await handle.result()
    assert result.stage == Stage.COMPLETED
    assert [v.stage for v in result.history] == [
        Stage.NOTICE,
        Stage.REPORT_BACK,
        Stage.EVALUATION,
        Stage.TALKS,
        Stage.GRADING,
        Stage.RESULT_USE,
        Stage.COMPLETED,
    ]
    # 7 sheets (groups of 2, 2 and 3), each a team ballot and one per cadre; all tokens
    # used, so the evaluation closed by itself.
    assert (result.evaluation.sheets, result.evaluation.ballots) == (7, 7 * 4)
    assert result.evaluation.close_reason == "every rater group returned its planned sheets"
    assert [(g.group_id, g.returned) for g in result.evaluation.participation] == [
        ("A", 2),
        ("B", 2),
        ("C", 3),
    ]
    assert result.grading.published and result.grading.team_grade is not None

    wf = handle.id
    async with pool.acquire() as conn:
        transitions = await conn.fetch(
            "SELECT detail->>'from' AS f, detail->>'to' AS t FROM audit_log "
            "WHERE workflow_id = $1 AND kind = 'transition' ORDER BY id",
            wf,
        )
        assert [r["t"] for r in transitions] == [
            s.value
            for s in (
                Stage.NOTICE,
                Stage.REPORT_BACK,
                Stage.EVALUATION,
                Stage.TALKS,
                Stage.GRADING,
                Stage.RESULT_USE,
                Stage.COMPLETED,
            )
        ]
        assert (
            await conn.fetchval("SELECT stage FROM units WHERE workflow_id=$1", wf) == "completed"
        )
        assert await conn.fetchval("SELECT count(*) FROM cadres WHERE workflow_id=$1", wf) == 3
        assert (
            await conn.fetchval("SELECT count(*) FROM acknowledgements WHERE workflow_id=$1", wf)
            == 1
        )
        assert await conn.fetchval("SELECT count(*) FROM reports WHERE workflow_id=$1", wf) == 4
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ballot_marks WHERE workflow_id=$1 AND item='overall'", wf
            )
            == 28
        )
        # One pool batch per rater group (each let go when its tokens were all spent).
        batches = await conn.fetch(
            "SELECT source, sheets_by_group::text FROM ballot_batches WHERE workflow_id=$1 "
            "ORDER BY sheets_by_group::text",
            wf,
        )
        assert [(b["source"], b["sheets_by_group"]) for b in batches] == [
            ("pool", '{"A": 2}'),
            ("pool", '{"B": 2}'),
            ("pool", '{"C": 3}'),
        ]
        assert await conn.fetchval("SELECT count(*) FROM ballot_pool WHERE workflow_id=$1", wf) == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ballot_tokens WHERE workflow_id=$1 AND used_at IS NULL", wf
            )
            == 0
        )
        talk = await conn.fetchrow(
            "SELECT s.* FROM talks t JOIN talk_store s USING (talk_ref) "
            "WHERE t.workflow_id=$1 AND t.talk_id='t0'",
            wf,
        )
        assert b"\xe8\xb0\x88" not in talk["ciphertext"]  # no plaintext UTF-8 of 谈
        associated = f"{wf}/{talk['talk_ref']}"
        opened = TEST_KEY.open(talk["nonce"], talk["ciphertext"], associated, talk["key_id"])
        assert opened.startswith("谈话内容")
        grades = await conn.fetch("SELECT cadre_id, grade FROM grades WHERE workflow_id=$1", wf)
        assert len(grades) == 4  # team + 3 cadres
        follow_ups = await conn.fetch(
            "SELECT follow_up_id, closed_at FROM follow_ups WHERE workflow_id=$1", wf
        )
        assert follow_ups and all(f["closed_at"] is not None for f in follow_ups)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE workflow_id=$1 AND status='sent'", wf
            )
            == 3  # notice, publicity, feedback
        )
        # Tallies the workflow kept equal a recount from the raw rows.
        recount = await conn.fetch(
            "SELECT kind, target_id, count(*) AS n FROM ballot_marks "
            "WHERE workflow_id=$1 AND item='overall' GROUP BY kind, target_id",
            wf,
        )
    # Tallies the workflow kept equal a recount from the raw rows.
    assert {(r["kind"], r["target_id"] or None): r["n"] for r in recount} == {
        (t.target_kind, t.target_id): t.ballots for t in result.evaluation.tallies
    }
    team = next(t for t in result.evaluation.tallies if t.target_kind == "team")
    # Groups of 2, 2 and 3 sheets are below the policy's anonymity minimum (5): status shows
    # no count by rater group.
    assert team.ballots == 7 and team.by_group == {}

    desc = await handle.describe()
    attrs = desc.typed_search_attributes
    assert attrs.get(sa.STAGE) == "completed"
    assert attrs.get(sa.UNIT) == unit.unit_id
    assert attrs.get(sa.CAMPAIGN) == "test"
    assert attrs.get(sa.TEAM_GRADE) == "好"


async def test_audit_log_is_append_only(
    stack: Stack, client: Client, worker: str, pool: asyncpg.Pool, tokens: TokenSource
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.REPORT_BACK, tokens=tokens)
    # The app's role may not (schemas/sql/015); the owner is stopped by the trigger.
    async with pool.acquire() as conn:
        for sql in ("UPDATE audit_log SET kind = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    conn = await asyncpg.connect(stack.owner_url)
    try:
        for sql in ("UPDATE audit_log SET kind = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_status_query_shows_progress_and_seals_grades(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit(cadres=2)
    handle = await start_unit(client, worker, unit)
    await drive_unit(client, handle.id, unit, stop_at=Stage.GRADING, tokens=tokens, talks=talks)
    status = await handle.query(UnitAssessment.status)
    assert status.stage == Stage.GRADING
    assert status.reports.cadres_submitted == 2 and status.reports.team_summary
    assert status.talks.recorded == status.talks.planned == 2

    from kaohe.sim.simulate import proposal_for

    flagged = [f.target_id for f in status.evaluation.flags if f.code == "incompetent_votes"]
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit, None, flagged))
    status = await handle.query(UnitAssessment.status)
    assert status.grading.pending_proposal
    assert status.grading.team_grade is None and status.grading.cadre_grades is None
    description = await handle.describe()
    assert description.typed_search_attributes.get(sa.TEAM_GRADE) is None
    # Nor the UI: its details say a sealed proposal exists, the memo holds nothing.
    details = await current_details(handle)
    assert "proposal awaiting approval (sealed)" in details
    grades = {"好", "较好", "一般", "较差", "优秀", "称职", "基本称职", "不称职", "不确定等次"}
    # The evaluation's flags are public and name rates such as 不称职票率: not grades.
    beyond_flags = "\n".join(line for line in details.splitlines() if "| Flags |" not in line)
    assert not [g for g in grades if g in beyond_flags]
    assert not description.raw_description.workflow_execution_info.memo.fields
    # The group's evaluation is sealed with the grades.
    for text in ("班子团结", "创新不够", "调研不够深入"):
        assert text not in details and text not in status.model_dump_json()
