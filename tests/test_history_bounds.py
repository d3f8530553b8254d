"""Bounded histories (issue 21): a unit flooded with the largest signals Temporal takes (28
of 1.9 MB used to take its history past 50 MB, and the server ended it while PostgreSQL still
said "evaluation") continues as new, carrying its state, keeps every run well under the
limits and still completes; what a run carries over is bounded."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from domain.state import MAX_PROCESSED_KEPT, Processed, UnitState
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit, wait_for_status
from schemas.common import Stage
from schemas.messages import ActionResult
from tests.helpers import TEST_POLICY, sample_unit, start_unit
from workflows.unit import UnitAssessment
from workflows.unit.continuing import CONTINUE_AT_BYTES

pytestmark = pytest.mark.timeout(600)

FLOOD = 30
SIGNAL_BYTES = 1_800_000  # under Temporal's 2 MB for one payload, encrypted included
TEMPORAL_LIMIT_BYTES = 50 * 1024 * 1024


async def test_a_flood_of_large_signals_continues_as_new_and_the_unit_completes(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit, policy=TEST_POLICY)
    await wait_for_status(handle, lambda s: s.deadline is not None)
    for n in range(FLOOD):
        # Signed (the client holds kaohe's keys), so it reaches the handler: refused there.
        # One after the other, as fast as the unit takes them (a faster flood is the
        # server's to refuse: docs/threat-model.md "Bounded histories").
        await handle.signal(
            "acknowledge_notice",
            {
                "idempotency_key": f"flood-{n}",
                "actor": {"id": "u", "role": "unit"},
                "padding": "x" * SIGNAL_BYTES,
            },
        )
        await wait_for_status(handle, lambda s, n=n: s.rejected_signal_count > n, 60)
    status = await handle.query(UnitAssessment.status)
    assert status.stage == Stage.NOTICE and status.acknowledgements == 0

    runs = [r async for r in client.list_workflows(f'WorkflowId="{handle.id}"')]
    for _ in range(50):  # visibility may lag behind the last run
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.2)
        runs = [r async for r in client.list_workflows(f'WorkflowId="{handle.id}"')]
    assert len(runs) >= 3, f"{len(runs)} runs: the unit did not continue as new"
    for run in runs:
        described = await client.get_workflow_handle(handle.id, run_id=run.run_id).describe()
        size = described.raw_description.workflow_execution_info.history_size_bytes
        # One signal past the threshold at most, far from the server's limit.
        assert size < CONTINUE_AT_BYTES + 2 * SIGNAL_BYTES + 1_000_000 < TEMPORAL_LIMIT_BYTES

    # The state came along, and the unit still goes all the way.
    final = await drive_unit(client, handle.id, unit, tokens=tokens, talks=talks)
    assert final.stage == Stage.COMPLETED and final.acknowledgements == 1
    assert final.rejected_signal_count == FLOOD
    for run in runs:
        history = await client.get_workflow_handle(handle.id, run_id=run.run_id).fetch_history()
        failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        assert not [e for e in history.events if e.event_type == failed], run.run_id


def test_idempotency_memory_is_bounded() -> None:
    state = UnitState()
    result = ActionResult(accepted=True, stage=Stage.NOTICE, message="m")
    for n in range(MAX_PROCESSED_KEPT + 5):
        state.remember(f"k{n}", Processed(name="pause", result=result))
    assert len(state.processed) == MAX_PROCESSED_KEPT
    assert "k4" not in state.processed and "k5" in state.processed
    assert list(state.processed)[-1] == f"k{MAX_PROCESSED_KEPT + 4}"
