"""Records the histories that tests/test_replay.py replays: one per stage path.

Refresh them (after a change that is meant to be compatible, or to add a path) with

    .venv/bin/python -m tests.record_histories

which starts a private stack, runs each path with the current code and writes
tests/histories/<VERSION>_<path>.json. A change that breaks replay of the recorded files needs
`workflow.patched` (docs/versioning.md), not new files in their place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory

from kaohe.sim.simulate import (
    APPROVER,
    BALLOT_SYSTEM,
    DEPARTMENT,
    GROUP,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    close_follow_ups,
    drive_unit,
    proposal_for,
    talk_store,
    wait_for_status,
    wait_started,
)
from schemas.common import Actor, Role, Stage, TeamGrade
from schemas.messages import (
    AcknowledgeNotice,
    ApproveGrades,
    CloseStage,
    RaiseObjection,
    RecordFollowUp,
    RegisterBallotBatch,
    RequestReview,
    ResolveObjection,
)
from schemas.policy import DeadlinePolicy, DemoClock
from schemas.roster import Roster
from workflows.campaign import unit_workflow_id
from workflows.unit import UnitAssessment

HISTORIES = Path(__file__).parent / "histories"
# Each file's workflow id: replay runs under it (an assertion names the workflow it is for).
IDS = HISTORIES / "workflow-ids.json"


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("v*_*.json"))


def load(path: Path) -> WorkflowHistory:
    workflow_id = json.loads(IDS.read_text()).get(path.stem, path.stem)
    return WorkflowHistory.from_json(workflow_id, path.read_text())


async def wait_for_stage(handle: WorkflowHandle, stage: Stage, seconds: float = 60) -> None:
    if (await wait_for_status(handle, lambda s: s.stage == stage, seconds)).stage != stage:
        raise TimeoutError(f"{handle.id} did not reach {stage.value}")


# The corpus: one file per path, named <VERSION>_<path>.json. docs/versioning.md has the rule:
# a change that breaks replay of these goes behind workflow.patched and the new path is
# recorded under the next version beside them; files are removed with the patch they need.
#   v12: recorded afresh once every patch up to 0.1.0 was retired (no patch markers)
VERSION = "v12"


def continued_while_waiting(history: WorkflowHistory) -> bool:
    """The run continued as new after its units' progress, not right after starting them."""
    kinds = [e.WhichOneof("attributes") for e in history.events]
    last = {k: i for i, k in enumerate(kinds)}
    started = last.get("start_child_workflow_execution_initiated_event_attributes", -1)
    signaled = last.get("workflow_execution_signaled_event_attributes", -1)
    return kinds[-1] == "workflow_execution_continued_as_new_event_attributes" and (
        signaled > started
    )


async def record_paths(
    client: Client, task_queue: str, tokens: TokenSource, talks: TalkStore, database_url: str
) -> dict[str, WorkflowHistory]:
    from kaohe.starter import start_campaign
    from tests.helpers import TEST_POLICY, sample_unit, start_unit

    out: dict[str, WorkflowHistory] = {}
    tag = uuid.uuid4().hex[:6]

    # 1. Every stage the normal way, with a rejected and a repeated signal on the way.
    unit = sample_unit(f"full-{tag}", cadres=2)
    handle = await start_unit(client, task_queue, unit, campaign_id="replay")
    await handle.signal("acknowledge_notice", {"idempotency_key": "bad"})
    await drive_unit(client, handle.id, unit, batch_size=9, tokens=tokens, talks=talks)
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
    # A cadre asks 复核 (its answer is watched for lateness); everything is then signed or
    # closed: result use ends with its follow-ups, never early (v9).
    await handle.execute_update(
        UnitAssessment.request_review,
        RequestReview(
            idempotency_key="rv",
            actor=Actor(id=unit.cadres[1].cadre_id, role=Role.CADRE),
            cadre_id=unit.cadres[1].cadre_id,
            reason="对等次申请复核",
        ),
    )
    await close_follow_ups(handle, "early")
    await handle.result()
    out["closed_early_path"] = await handle.fetch_history()

    # 3. A campaign of two units with a pooled 优秀 quota (cross-unit calibration) and grade
    # labels: unit 0 proposes 1 优秀 by its label and is cleared; unit 1's 优秀 is held and
    # the department allows it; both close result use early, and the campaign completes.
    grading = TEST_POLICY.grading.model_copy(
        update={
            "excellent_quota_scope": "category",
            "team_labels": {TeamGrade.GOOD: "优秀", TeamGrade.FAIRLY_GOOD: "良好"},
        }
    )
    policy = TEST_POLICY.model_copy(update={"grading": grading})
    roster = Roster(
        campaign_id=f"replay-{tag}",
        year=2026,
        title="回放考核",
        units=[sample_unit(f"c{i}-{tag}", cadres=3) for i in range(2)],
    )
    campaign_id, _ = await start_campaign(client, roster, task_queue, policy)
    campaign = client.get_workflow_handle(campaign_id)
    units = []
    for n, u in enumerate(roster.units):
        handle = client.get_workflow_handle(unit_workflow_id(roster.campaign_id, u.unit_id))
        await wait_started(client, handle.id)
        await drive_unit(
            client, handle.id, u, policy=policy, stop_at=Stage.GRADING, tokens=tokens, talks=talks
        )
        proposal = proposal_for(u).model_dump(mode="json")
        proposal["team_grade"] = "良好"
        proposal["cadre_grades"][u.cadres[0].cadre_id] = "优秀"
        await handle.execute_update("propose_grades", proposal, result_type=dict)
        wanted = "cleared" if n == 0 else "held"
        await wait_for_status(
            handle,
            lambda s, w=wanted: (
                s.grading.calibration is not None and s.grading.calibration.state == w
            ),
        )
        units.append(handle)
    await campaign.execute_update(
        "decide_calibration",
        {
            "idempotency_key": "allow-1",
            "actor": DEPARTMENT.model_dump(mode="json"),
            "unit_id": roster.units[1].unit_id,
            "decision": "allow",
            "reason": "统筹调剂",
        },
        result_type=dict,
    )
    for n, handle in enumerate(units):
        await wait_for_status(
            handle,
            lambda s: (
                s.grading.calibration is not None
                and s.grading.calibration.state in ("cleared", "allowed")
            ),
        )
        await handle.execute_update(
            UnitAssessment.approve_grades,
            ApproveGrades(idempotency_key=f"ok-{n}", actor=APPROVER, decision="approve"),
        )
        await wait_for_stage(handle, Stage.RESULT_USE)
        await wait_for_status(handle, lambda s: bool(s.follow_ups.items))
        await close_follow_ups(handle, f"c{n}")
        await handle.result()
    await campaign.result()
    out["campaign"] = await campaign.fetch_history()
    out["calibrated_unit"] = await units[1].fetch_history()

    # 4. A notice that runs out (working days of a second): the reminder, escalation levels
    # 1 and 2; then the deadline extended, the clock paused and resumed, and the notice
    # acknowledged.
    deadlines = DeadlinePolicy(
        working_days={Stage.NOTICE: 2},
        reminder_working_days=1,
        escalate_after_working_days=1,
    )
    unit = sample_unit(f"late-{tag}")
    handle = await start_unit(
        client,
        task_queue,
        unit,
        campaign_id="replay",
        policy=TEST_POLICY.model_copy(
            update={"deadlines": deadlines, "demo_clock": DemoClock(working_day_seconds=1)}
        ),
    )
    await wait_for_status(handle, lambda s: s.escalation_level == 2, 30)
    for name, body in (
        ("extend_deadline", {"days": 2, "reason": "单位机构调整"}),
        ("pause", {"reason": "主要负责人调整"}),
        ("resume", {"reason": "调整完毕"}),
    ):
        actor = DEPARTMENT.model_dump(mode="json")
        payload = {"idempotency_key": name, "actor": actor, **body}
        await handle.execute_update(name, payload, result_type=dict)
    await handle.execute_update(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key="ack", actor=UNIT_CONTACT),
    )
    out["deadline_path"] = await handle.fetch_history()

    # 5. A campaign whose roster is stored in PostgreSQL, read in pages, and whose first run
    # continues as new after its first unit started (a history limit of 20 events).
    roster = Roster(
        campaign_id=f"stored-{tag}",
        year=2026,
        title="存储名册",
        units=[sample_unit(f"s{n}-{tag}") for n in range(3)],
    )
    wf_id, _ = await start_campaign(
        client,
        roster,
        task_queue,
        TEST_POLICY,
        database_url=database_url,
        inline_limit=0,
        max_concurrent_starts=1,
        history_limit=20,
    )
    for u in roster.units:
        await wait_started(client, unit_workflow_id(roster.campaign_id, u.unit_id))
    async for run in client.list_workflows(f'WorkflowId="{wf_id}"'):
        history = await client.get_workflow_handle(wf_id, run_id=run.run_id).fetch_history()
        first = history.events[0].workflow_execution_started_event_attributes
        if not first.continued_execution_run_id:
            out["stored_campaign"] = history

    # 6. A ballot batch the database does not hold, announced by signal: rejected, and the
    # unit goes on (sheets themselves never reach a workflow).
    unit = sample_unit(f"reused-{tag}", cadres=2)
    handle = await start_unit(client, task_queue, unit, campaign_id="replay")
    await drive_unit(client, handle.id, unit, stop_at=Stage.EVALUATION, tokens=tokens)
    for key in ("b1", "b2"):
        ghost = RegisterBallotBatch(
            idempotency_key=key,
            actor=BALLOT_SYSTEM,
            batch_id=key,
            ballots=4,
            sheets=1,
            checksum="0" * 64,
        )
        await handle.signal("register_ballot_batch", ghost)
    await wait_for_status(handle, lambda s: bool(s.rejected_signals), 30)
    out["ballot_signal_rejected"] = await handle.fetch_history()
    await handle.terminate("recorded")

    # 7. A unit cancelled in report-back: it records the cancelled stage, then ends.
    unit = sample_unit(f"cancel-{tag}", cadres=1)
    handle = await start_unit(client, task_queue, unit, campaign_id="replay")
    await drive_unit(client, handle.id, unit, stop_at=Stage.REPORT_BACK, tokens=tokens)
    await handle.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    out["cancelled_path"] = await handle.fetch_history()

    # 8. A campaign that continues as new while it waits on its units' progress (a history
    # limit of 20 events, reached by their signals).
    roster = Roster(
        campaign_id=f"waiting-{tag}",
        year=2026,
        title="等待续跑",
        units=[sample_unit(f"w{n}-{tag}", cadres=1) for n in range(2)],
    )
    wf_id, _ = await start_campaign(client, roster, task_queue, TEST_POLICY, history_limit=20)
    for u in roster.units:
        unit_id = unit_workflow_id(roster.campaign_id, u.unit_id)
        await wait_started(client, unit_id)
        await drive_unit(client, unit_id, u, stop_at=Stage.TALKS, tokens=tokens)
    # The run that continued as new while waiting: a unit's signal came after its last
    # start. Walk the chain of runs back from the latest (visibility may lag behind).
    run_id: str | None = (await client.get_workflow_handle(wf_id).describe()).run_id
    while run_id:
        history = await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id
        if continued_while_waiting(history):
            out["waiting_campaign"] = history
            break
    await client.get_workflow_handle(wf_id).terminate("recorded")
    return out


async def main() -> None:
    from activities.db import apply_migrations, create_pool
    from activities.notify import NotifyActivities
    from activities.storage import StorageActivities
    from kaohe.client import connect
    from kaohe.devstack.postgres import EmbeddedPostgres
    from kaohe.devstack.temporal import TemporalDevServer
    from kaohe.ingest.ballot_io import token_source
    from kaohe.listening import free_port
    from kaohe.settings import Settings
    from tests.conftest import TEST_KEY  # noqa: F401  (same key as the suite)
    from tests.helpers import TEST_ASSERTION_KEYS
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
                Settings(
                    temporal_address=temporal.address,
                    payload_encryption=False,
                    assertion_keys=TEST_ASSERTION_KEYS,
                )
            )
            pool = await create_pool(url)
            worker = build_worker(client, StorageActivities(pool), NotifyActivities(pool), "record")
            async with worker:
                histories = await record_paths(
                    client, "record", token_source(pool), talk_store(pool, key), url
                )
            await pool.close()
        finally:
            await temporal.stop()
            await postgres.stop()
    HISTORIES.mkdir(exist_ok=True)
    ids = json.loads(IDS.read_text()) if IDS.exists() else {}
    for name, history in histories.items():
        path = HISTORIES / f"{VERSION}_{name}.json"
        path.write_text(history.to_json())
        ids[path.stem] = history.workflow_id
        print(f"wrote {path} ({len(history.events)} events)")
    IDS.write_text(json.dumps(dict(sorted(ids.items())), indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
