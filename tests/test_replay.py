"""Replay: recorded histories (and ones recorded just now) replay without nondeterminism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from kaohe.assertions import Keyring
from kaohe.client import data_converter
from kaohe.interceptors import Assertions
from kaohe.sim.simulate import TalkStore, TokenSource
from tests.conftest import Stack
from tests.helpers import TEST_ASSERTION_KEYS
from tests.record_histories import (
    HISTORIES,
    VERSION,
    continued_while_waiting,
    load,
    record_paths,
    recorded,
)
from worker import WORKFLOWS, sandbox_runner

RECORDED = recorded()


def replayer(converter: DataConverter = pydantic_data_converter) -> Replayer:
    # Recorded files are plaintext (see tests/record_histories.py); fresh ones are encrypted.
    # With the workers' interceptor, as production replays: signals' assertions are checked
    # again (the files were recorded with the tests' keys).
    keyring = Keyring.parse(TEST_ASSERTION_KEYS)
    return Replayer(
        workflows=WORKFLOWS,
        data_converter=converter,
        workflow_runner=sandbox_runner(),
        interceptors=[Assertions(keyring, converter.payload_converter)],
    )


PATHS = {
    "full_path",
    "closed_early_path",
    "deadline_path",
    "calibrated_unit",
    "ballot_signal_rejected",
    "cancelled_path",
    "campaign",
    "stored_campaign",
    "waiting_campaign",
}


def test_every_stage_path_is_recorded() -> None:
    assert {f"{VERSION}_{path}" for path in PATHS} <= {p.stem for p in RECORDED}


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = load(path)
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


async def test_fresh_histories_replay(
    stack: Stack, client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    histories = await record_paths(client, worker, tokens, talks, stack.database_url)
    for history in histories.values():
        result = await replayer(data_converter(stack.settings)).replay_workflow(history)
        assert result.replay_failure is None


def patches(path: Path) -> set[str]:
    """The workflow.patched ids recorded in a history's markers."""

    found = set()
    for event in load(path).events:
        if event.HasField("marker_recorded_event_attributes"):
            data = event.marker_recorded_event_attributes.details.get("patch-data")
            if data is not None:
                found.add(json.loads(data.payloads[0].data)["id"])
    return found


def test_the_corpus_needs_no_patch() -> None:
    """Every patch up to 0.1.0 is retired: no recorded path takes a patched branch."""
    for path in RECORDED:
        assert patches(path) == set(), path.name


def test_the_paths_took_their_turns() -> None:
    # The stored-roster campaign continued as new between two chunks of starts.
    stored = load(HISTORIES / f"{VERSION}_stored_campaign.json")
    assert stored.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    # The waiting campaign continued as new after all its units had started.
    assert continued_while_waiting(load(HISTORIES / f"{VERSION}_waiting_campaign.json"))
    # The cancelled unit ended cancelled.
    cancelled = load(HISTORIES / f"{VERSION}_cancelled_path.json")
    assert cancelled.events[-1].HasField("workflow_execution_canceled_event_attributes")
    # The reused token's batch came by signal and was rejected; the unit went on.
    rejected = load(HISTORIES / f"{VERSION}_ballot_signal_rejected.json")
    assert not any(
        e.HasField("workflow_execution_failed_event_attributes") for e in rejected.events
    )
