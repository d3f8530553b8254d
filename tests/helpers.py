"""Helpers shared by the tests: sample units and starting a unit workflow directly."""

from __future__ import annotations

import base64
import uuid

from temporalio.client import Client, WorkflowHandle

from activities.talk_cipher import TalkCipher
from schemas.policy import Policy, RaterGroup
from schemas.roster import CadreSpec, UnitSpec
from schemas.workflow_io import UnitInput
from workflows.unit import UnitAssessment

TEST_KEY_B64 = base64.b64encode(b"k" * 32).decode()
TEST_KEY = TalkCipher.from_base64(TEST_KEY_B64, "test-key")


# Small rater groups keep the tests fast: 7 sheets close a unit's evaluation.
SMALL_GROUPS = [
    RaterGroup(group_id="A", label="领导班子成员", planned=2, weight="40%"),
    RaterGroup(group_id="B", label="中层干部", planned=2, weight="30%"),
    RaterGroup(group_id="C", label="职工代表", planned=3, weight="30%"),
]


def sample_unit(unit_id: str | None = None, cadres: int = 2, **extra: object) -> UnitSpec:
    unit_id = unit_id or f"u{uuid.uuid4().hex[:10]}"
    extra.setdefault("rater_groups", SMALL_GROUPS)
    return UnitSpec(
        unit_id=unit_id,
        name=f"测试单位 {unit_id}",
        contact="办公室",
        cadres=[
            CadreSpec(
                cadre_id=f"{unit_id}-c{i}", name=f"干部{i}", position="副主任", principal=i == 0
            )
            for i in range(cadres)
        ],
        **extra,  # type: ignore[arg-type]
    )


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
            policy=policy or Policy(),
        ),
        id=f"kaohe-{campaign_id}-{unit.unit_id}",
        task_queue=task_queue,
    )
