"""Replay: recorded histories (and ones recorded just now) replay without nondeterminism."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from kaohe.client import data_converter
from kaohe.sim.simulate import TokenSource
from tests.conftest import Stack
from tests.record_histories import HISTORIES, VERSION, record_paths
from worker import WORKFLOWS, sandbox_runner

RECORDED = sorted(HISTORIES.glob("*.json"))


def replayer(converter: DataConverter = pydantic_data_converter) -> Replayer:
    # Recorded files are plaintext (see tests/record_histories.py); fresh ones are encrypted.
    return Replayer(
        workflows=WORKFLOWS,
        data_converter=converter,
        workflow_runner=sandbox_runner(),
    )


def test_every_stage_path_is_recorded_for_every_version() -> None:
    paths = {"full_path", "closed_early_path", "campaign"}
    names = {p.stem for p in RECORDED}
    for version in ("v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", VERSION):
        assert {f"{version}_{path}" for path in paths} <= names
    assert {"v5_calibrated_unit", "v6_deadline_path", "v7_deadline_path"} <= names
    assert f"{VERSION}_deadline_path" in names
    assert f"{VERSION}_stored_campaign" in names


async def test_pre_patch_history_takes_the_old_branch() -> None:
    """v0 histories have no patch marker: replaying them must not use local activities."""
    from temporalio.api.enums.v1 import EventType

    history = load(HISTORIES / "v0_full_path.json")
    kinds = {e.event_type for e in history.events}
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED in kinds
    assert EventType.EVENT_TYPE_MARKER_RECORDED not in kinds
    assert (await replayer().replay_workflow(history)).replay_failure is None


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = load(path)
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


async def test_fresh_histories_replay(
    stack: Stack, client: Client, worker: str, tokens: TokenSource
) -> None:
    histories = await record_paths(client, worker, tokens, stack.database_url)
    for history in histories.values():
        result = await replayer(data_converter(stack.settings)).replay_workflow(history)
        assert result.replay_failure is None


def patches(path: Path) -> set[str]:
    """The workflow.patched ids recorded in a history's markers."""
    import json

    found = set()
    for event in load(path).events:
        if event.HasField("marker_recorded_event_attributes"):
            data = event.marker_recorded_event_attributes.details.get("patch-data")
            if data is not None:
                found.add(json.loads(data.payloads[0].data)["id"])
    return found


def test_each_version_took_its_branches() -> None:
    assert patches(HISTORIES / "v0_full_path.json") == set()
    assert patches(HISTORIES / "v1_full_path.json") == {"local-storage-activities"}
    assert patches(HISTORIES / "v2_full_path.json") == {"local-storage-activities", "ballot-sheets"}
    v3 = {"local-storage-activities", "ballot-sheets", "publicity"}
    assert patches(HISTORIES / "v3_full_path.json") == v3
    v4 = v3 | {"result-use-two-years"}
    assert patches(HISTORIES / "v4_full_path.json") == v4
    assert patches(HISTORIES / "v5_full_path.json") == v4
    assert "cross-unit-calibration" in patches(HISTORIES / "v5_calibrated_unit.json")
    assert patches(HISTORIES / "v6_full_path.json") == v4 | {"stage-deadlines"}
    v7 = v4 | {"stage-deadlines", "notify-channels"}
    assert patches(HISTORIES / "v7_full_path.json") == v7
    v8 = v7 | {"notify-activity"}
    assert patches(HISTORIES / "v8_full_path.json") == v8
    assert patches(HISTORIES / "v9_full_path.json") == v8 | {"result-use-signed"}
    assert patches(HISTORIES / f"{VERSION}_full_path.json") == v8 | {"result-use-signed"}
    assert "result-use-signed" in patches(HISTORIES / f"{VERSION}_closed_early_path.json")
    assert "resume-working-days" in patches(HISTORIES / f"{VERSION}_deadline_path.json")
    assert "stage-deadlines" not in patches(HISTORIES / "v5_calibrated_unit.json")
    # v10: the stored-roster campaign continued as new between two chunks of starts.
    stored = load(HISTORIES / f"{VERSION}_stored_campaign.json")
    assert stored.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    assert "campaign-continue-while-starting" in patches(
        HISTORIES / f"{VERSION}_stored_campaign.json"
    )
    # v11: the reused token's batch came by signal and was rejected; the unit went on.
    rejected = HISTORIES / f"{VERSION}_ballot_signal_rejected.json"
    assert "ballot-rejection-local" in patches(rejected)
    assert not any(
        e.HasField("workflow_execution_failed_event_attributes") for e in load(rejected).events
    )
