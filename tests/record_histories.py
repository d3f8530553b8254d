"""Records the histories that tests/test_replay.py replays: one per stage path.

Refresh them (after a change that is meant to be compatible, or to add a path) with

    .venv/bin/python -m tests.record_histories

which starts a private stack, runs each path with the current code and writes
tests/histories/<VERSION>_<path>.json. A change that breaks replay of the old files needs
`workflow.patched`, not new files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from kaohe.simulate import (
    APPROVER,
    DEPARTMENT,
    GROUP,
    UNIT_CONTACT,
    TokenSource,
    drive_unit,
    proposal_for,
    wait_for_status,
    wait_started,
)
from schemas.common import Stage
from schemas.messages import (
    ApproveGrades,
    CloseStage,
    RaiseObjection,
    RecordFollowUp,
    ResolveObjection,
)
from schemas.roster import Roster
from workflows.campaign import unit_workflow_id
from workflows.unit import UnitAssessment

HISTORIES = Path(__file__).parent / "histories"


async def wait_for_stage(handle: WorkflowHandle, stage: Stage, seconds: float = 60) -> None:
    if (await wait_for_status(handle, lambda s: s.stage == stage, seconds)).stage != stage:
        raise TimeoutError(f"{handle.id} did not reach {stage.value}")


# Bump when the workflows change in a way recorded histories should capture; keep the
# older files: they are what running workflows started before the change look like.
#   v0: storage through (server) activities
#   v1: storage through local activities (workflow.patched "local-storage-activities")
#   v2: ballot sheets with tokens, weighted tallies (workflow.patched "ballot-sheets")
#   v3: publicity and objections after approval (workflow.patched "publicity")
#   v4: cadres sign for feedback, two-year rule (workflow.patched "result-use-two-years")
VERSION = "v4"


async def record_paths(
    client: Client, task_queue: str, tokens: TokenSource
) -> dict[str, WorkflowHistory]:
    from kaohe.cli import start_campaign
    from tests.helpers import TEST_POLICY, sample_unit, start_unit

    out: dict[str, WorkflowHistory] = {}
    tag = uuid.uuid4().hex[:6]

    # 1. Every stage the normal way, with a rejected and a repeated signal on the way.
    unit = sample_unit(f"full-{tag}", cadres=2)
    handle = await start_unit(client, task_queue, unit, campaign_id="replay")
    await handle.signal("acknowledge_notice", {"idempotency_key": "bad"})
    await drive_unit(client, handle.id, unit, batch_size=9, tokens=tokens)
    await handle.result()
    out["full_path"] = await handle.fetch_history()

    # 2. Every closable stage closed early; a proposal returned, then approved; a manual
    # follow-up added; result use closed early with follow-ups still open.
    unit = sample_unit(f"early-{tag}", cadres=2)
    handle = await start_unit(client, task_queue, unit, campaign_id="replay")
    for n, stage in enumerate((Stage.NOTICE, Stage.REPORT_BACK, Stage.EVALUATION, Stage.TALKS)):
        await handle.execute_update(
            UnitAssessment.close_stage,
            CloseStage(
                idempotency_key=f"close-{n}", actor=DEPARTMENT, stage=stage, reason="按计划提前结束"
            ),
        )
    await handle.execute_update(UnitAssessment.propose_grades, proposal_for(unit))
    await handle.execute_update(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key="ret", actor=APPROVER, decision="return", comment="补充材料"),
    )
    await handle.execute_update(
        UnitAssessment.propose_grades,
        proposal_for(unit).model_copy(update={"idempotency_key": "proposal-2"}),
    )
    await handle.execute_update(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key="ok", actor=APPROVER, decision="approve"),
    )
    # Publicity: one objection upheld (grades withdrawn, proposed and approved again),
    # another dismissed, then publicity ends and the grades are final.
    for n, decision in enumerate(("uphold", "dismiss")):
        await handle.execute_update(
            UnitAssessment.raise_objection,
            RaiseObjection(
                idempotency_key=f"obj-{n}",
                actor=UNIT_CONTACT,
                objection_id=f"o{n}",
                raised_by="职工群众",
                cadre_id=unit.cadres[0].cadre_id,
                reason="对等次有不同意见",
            ),
        )
        await handle.execute_update(
            UnitAssessment.resolve_objection,
            ResolveObjection(
                idempotency_key=f"res-{n}",
                actor=DEPARTMENT,
                objection_id=f"o{n}",
                decision=decision,
                reason="经核查",
            ),
        )
        if decision == "uphold":
            await handle.execute_update(
                UnitAssessment.propose_grades,
                proposal_for(unit).model_copy(update={"idempotency_key": "proposal-3"}),
            )
            await handle.execute_update(
                UnitAssessment.approve_grades,
                ApproveGrades(idempotency_key="ok-2", actor=APPROVER, decision="approve"),
            )
    await wait_for_stage(handle, Stage.RESULT_USE)
    await handle.execute_update(
        UnitAssessment.record_follow_up,
        RecordFollowUp(
            idempotency_key="fu",
            actor=GROUP,
            follow_up_id="extra",
            kind="training",
            owner="组织部",
            due_date=dt.date(2027, 3, 1),
            description="专题培训",
        ),
    )
    await handle.execute_update(
        UnitAssessment.close_stage,
        CloseStage(
            idempotency_key="close-ru",
            actor=DEPARTMENT,
            stage=Stage.RESULT_USE,
            reason="转入日常管理",
        ),
    )
    await handle.result()
    out["closed_early_path"] = await handle.fetch_history()

    # 3. A campaign of two units, both completed.
    roster = Roster(
        campaign_id=f"replay-{tag}",
        year=2026,
        title="回放考核",
        units=[sample_unit(f"c{i}-{tag}") for i in range(2)],
    )
    campaign_id, _ = await start_campaign(client, roster, task_queue, TEST_POLICY)
    for u in roster.units:
        wf = unit_workflow_id(roster.campaign_id, u.unit_id)
        await wait_started(client, wf)
        await drive_unit(client, wf, u, tokens=tokens)
    campaign = client.get_workflow_handle(campaign_id)
    await campaign.result()
    out["campaign"] = await campaign.fetch_history()
    return out


async def main() -> None:
    from activities.db import apply_migrations, create_pool
    from activities.notify import NotifyActivities
    from activities.storage import StorageActivities
    from kaohe.ballot_io import token_source
    from kaohe.client import connect
    from kaohe.devstack import EmbeddedPostgres, TemporalDevServer, free_port
    from kaohe.settings import Settings
    from tests.conftest import TEST_KEY  # noqa: F401  (same key as the suite)
    from tests.helpers import TEST_KEY as key
    from worker import build_worker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        postgres = EmbeddedPostgres(root / "pg", free_port())
        temporal = TemporalDevServer(
            root / "t", port=free_port(), ui_port=free_port(), http_port=free_port(), ui=False
        )
        url = await postgres.start()
        await temporal.start()
        try:
            await apply_migrations(url)
            # Plaintext payloads: the files stay readable and diffable; the codec passes
            # them through on replay.
            client = await connect(
                Settings(temporal_address=temporal.address, payload_encryption=False)
            )
            pool = await create_pool(url)
            worker = build_worker(
                client, StorageActivities(pool, key), NotifyActivities(pool), "record"
            )
            async with worker:
                histories = await record_paths(client, "record", token_source(pool))
            await pool.close()
        finally:
            await temporal.stop()
            await postgres.stop()
    HISTORIES.mkdir(exist_ok=True)
    for name, history in histories.items():
        path = HISTORIES / f"{VERSION}_{name}.json"
        path.write_text(history.to_json())
        print(f"wrote {path} ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(main())
