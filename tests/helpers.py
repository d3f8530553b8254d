"""Helpers shared by the tests: sample units and starting a unit workflow directly."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

from temporalio.client import Client, WorkflowHandle

from activities.talk_cipher import TalkCipher
from domain.calendar import campaign_years, with_package_years
from kaohe.ballot_intake import BallotIntake, Intake, SheetsRefused, submission_key
from kaohe.ingest.ballot_io import TokenSource
from kaohe.sim.simulate import simulated_unit
from schemas.messages import BallotSheet
from schemas.policy import DemoClock, Policy
from schemas.roster import UnitSpec
from schemas.workflow_io import UnitInput
from workflows.unit import UnitAssessment

TEST_KEY_B64 = base64.b64encode(b"k" * 32).decode()
TEST_KEY = TalkCipher(base64.b64decode(TEST_KEY_B64), "test-key")
TEST_TALK_KEYS = f"test-key:{TEST_KEY_B64}"
# The workers' assertion keys in the tests (kaohe/assertions.py): tools and workers share it.
TEST_ASSERTION_KEYS = "test-a1:" + base64.b64encode(b"a" * 32).decode()


# The rater groups every sample unit has: 2, 2 and 3 sheets planned.
SMALL_GROUPS = simulated_unit("template", 1, (2, 2, 3)).rater_groups or []


# Publicity (公示) of a second instead of five working days, so units finish in a test.
TEST_POLICY = Policy(demo_clock=DemoClock(publicity_seconds=1))


def sample_unit(unit_id: str | None = None, cadres: int = 2, **extra: Any) -> UnitSpec:
    """Small rater groups (2, 2 and 3 sheets) keep the tests fast."""
    return simulated_unit(unit_id or f"u{uuid.uuid4().hex[:10]}", cadres, (2, 2, 3), **extra)


async def start_unit(
    client: Client,
    task_queue: str,
    unit: UnitSpec,
    campaign_id: str = "test",
    policy: Policy | None = None,
) -> WorkflowHandle:
    return await client.start_workflow(
        UnitAssessment.run,
        UnitInput(
            campaign_id=campaign_id,
            year=2026,
            campaign_title="测试考核",
            unit=unit,
            policy=with_package_years(policy or TEST_POLICY, campaign_years(2026, dt.date.today()))[
                0
            ],
        ),
        id=f"kaohe-{campaign_id}-{unit.unit_id}",
        task_queue=task_queue,
    )


async def cast(
    client: Client, tokens: TokenSource, workflow_id: str, sheets: list[BallotSheet]
) -> Intake:
    """Sheets as kaohe's API takes them from a ballot system: pooled, counted by batch."""
    key = submission_key("test", uuid.uuid4().hex)
    return await BallotIntake(client, tokens.pool).submit(workflow_id, sheets, key)


async def refused(
    client: Client, tokens: TokenSource, workflow_id: str, sheets: list[BallotSheet]
) -> str:
    """Why the intake refuses these sheets (the test fails if it takes them)."""
    try:
        await cast(client, tokens, workflow_id, sheets)
    except SheetsRefused as err:
        return str(err)
    raise AssertionError("the sheets were taken")
