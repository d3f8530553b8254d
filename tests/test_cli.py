"""The `kaohe` command: roster validation, schema export, and acting on a real unit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from temporalio.client import Client

from domain.actions import ACTIONS
from domain.calendar import deadline_after
from kaohe.ingest.roster_io import RosterError, load_roster
from kaohe.sim.simulate import wait_for_status, wait_started
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit
from workflows.unit import UnitAssessment

ROOT = Path(__file__).parent.parent

KAOHE = str(Path(sys.executable).parent / "kaohe")


def kaohe(
    stack: Stack | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**(stack.env() if stack else os.environ), **(env or {})}
    return subprocess.run([KAOHE, *args], env=full, capture_output=True, text=True, timeout=60)


async def akaohe(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread, so the in-process worker on this event loop keeps running."""
    return await asyncio.to_thread(lambda: kaohe(stack, *args, env=env))


def write_roster(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "roster.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def good_roster(campaign_id: str = "cli-test") -> dict:
    return {
        "campaign_id": campaign_id,
        "year": 2026,
        "title": "CLI 测试",
        "units": [
            {
                "unit_id": "a",
                "name": "甲单位",
                "cadres": [{"cadre_id": "a1", "name": "张三", "position": "局长"}],
            },
            {
                "unit_id": "b",
                "name": "乙单位",
                "cadres": [{"cadre_id": "b1", "name": "李四", "position": "主任"}],
            },
        ],
    }


def test_bad_roster_lists_every_error_with_its_path(tmp_path: Path) -> None:
    data = good_roster()
    del data["units"][1]["cadres"][0]["name"]
    data["units"][0]["cadres"][0]["principal"] = "maybe"
    data["year"] = "last year"
    with pytest.raises(RosterError) as info:
        load_roster(write_roster(tmp_path, data))
    problems = "\n".join(info.value.problems)
    assert "units[1].cadres[0].name: Field required" in problems
    assert "units[0].cadres[0].principal:" in problems
    assert "year:" in problems
    assert len(info.value.problems) == 3


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    data = good_roster()
    data["units"][1]["unit_id"] = "a"
    with pytest.raises(RosterError, match="problem") as info:
        load_roster(write_roster(tmp_path, data))
    assert "unit_id 'a' appears twice" in info.value.problems[0]


def test_start_with_a_bad_roster_starts_nothing(stack: Stack, tmp_path: Path) -> None:
    data = good_roster(f"bad-{uuid.uuid4().hex[:6]}")
    del data["units"][1]["cadres"][0]["name"]
    run = kaohe(stack, "start", str(write_roster(tmp_path, data)))
    assert run.returncode == 2
    assert "units[1].cadres[0].name: Field required" in run.stderr
    listed = kaohe(stack, "status", "--campaign", data["campaign_id"])
    assert listed.returncode != 0  # no campaign workflow exists


async def test_start_status_and_update_from_the_cli(
    stack: Stack, worker: str, client: Client, tmp_path: Path
) -> None:
    campaign_id = f"cli-{uuid.uuid4().hex[:6]}"
    path = write_roster(tmp_path, good_roster(campaign_id))
    first = await akaohe(stack, "start", str(path))
    assert first.returncode == 0, first.stderr
    assert "started" in first.stdout
    again = await akaohe(stack, "start", str(path))
    assert "already exists" in again.stdout

    unit_wf = f"kaohe-{campaign_id}-a"
    await wait_started(client, unit_wf)
    ack = await akaohe(stack, "acknowledge", unit_wf)
    assert ack.returncode == 0, ack.stderr
    assert '"stage": "report_back"' in ack.stdout
    wrong = await akaohe(
        stack, "update", unit_wf, "record_talk", "{}", "--actor", "g:assessment_group"
    )
    assert wrong.returncode == 1
    assert "talk_id" in wrong.stderr  # checked before anything is sent
    early = await akaohe(
        stack,
        "update",
        unit_wf,
        "close_evaluation",
        '{"reason": "测试"}',
        "--actor",
        "g:assessment_group",
    )
    assert early.returncode == 1 and "report_back" in early.stderr
    status = await akaohe(stack, "status", unit_wf, "--json")
    assert json.loads(status.stdout)["stage"] == "report_back"
    for _ in range(20):  # the unit list comes from visibility, which lags a little
        campaign = await akaohe(stack, "status", "--campaign", campaign_id)
        if unit_wf in campaign.stdout:
            break
        await asyncio.sleep(0.5)
    assert campaign.returncode == 0 and unit_wf in campaign.stdout, campaign.stdout


async def test_signal_from_the_cli(stack: Stack, worker: str, client: Client) -> None:
    unit = sample_unit()
    handle = await start_unit(client, worker, unit)
    run = await akaohe(stack, "signal", handle.id, "acknowledge_notice", "{}", "--actor", "u:unit")
    assert run.returncode == 0, run.stderr
    result = await handle.execute_update(
        "close_stage",
        {
            "idempotency_key": "x",
            "actor": {"id": "d", "role": "department"},
            "stage": "report_back",
            "reason": "信号已确认",
        },
        result_type=dict,
    )
    assert result["stage"] == "evaluation"


def test_schema_export(tmp_path: Path) -> None:
    run = kaohe(None, "schema", "export", str(tmp_path / "schemas"))
    assert run.returncode == 0, run.stderr
    files = {p.stem for p in (tmp_path / "schemas").glob("*.json")}
    assert set(ACTIONS) | {"status", "roster", "action_result"} <= files
    schema = json.loads((tmp_path / "schemas" / "sheets_submission.json").read_text())
    assert {"idempotency_key", "sheets"} <= set(schema["required"])
    assert "actor" not in schema["properties"]  # the API's caller is the actor
    # The policy file's schema: the shipped policy and a demo clock validate against it.
    policy_schema = json.loads((tmp_path / "schemas" / "policy.json").read_text())
    shipped = yaml.safe_load((ROOT / "kaohe" / "policies" / "2026.yaml").read_text())
    jsonschema.validate({**shipped, "demo_clock": {"working_day_seconds": 10}}, policy_schema)
    with pytest.raises(jsonschema.ValidationError, match="working_day_seconds"):
        jsonschema.validate({"demo_clock": {"working_day_seconds": "soon"}}, policy_schema)


async def test_a_campaign_sets_its_own_stage_deadlines(
    stack: Stack, worker: str, client: Client, tmp_path: Path
) -> None:
    """`kaohe start --deadline STAGE=DAYS`: that stage's deadline for this campaign only, in
    working days from the first working day after the stage starts; bad ones start nothing."""
    campaign_id = f"dl-{uuid.uuid4().hex[:6]}"
    path = write_roster(tmp_path, good_roster(campaign_id))
    bad = await akaohe(stack, "start", str(path), "--deadline", "notise=7", "--deadline", "talks=x")
    assert bad.returncode == 2
    assert "--deadline notise=7: unknown stage 'notise'; one of notice, report_back" in bad.stderr
    assert "--deadline talks=x: give working days (1-366) or none" in bad.stderr
    started = await akaohe(
        stack, "start", str(path), "--deadline", "notice=7", "--deadline", "report_back=none"
    )
    assert started.returncode == 0, started.stderr
    handle = client.get_workflow_handle(f"kaohe-{campaign_id}-a")
    await wait_started(client, handle.id)
    status = await wait_for_status(handle, lambda s: s.deadline is not None)
    assert status.deadline == deadline_after(status.history[0].entered_at, 7)
    ack = await akaohe(stack, "acknowledge", handle.id)
    assert ack.returncode == 0, ack.stderr
    status = await handle.query(UnitAssessment.status)
    assert status.stage == Stage.REPORT_BACK and status.deadline is None  # none for this one


def test_a_policy_file_with_the_old_demo_knobs_still_loads(tmp_path: Path) -> None:
    """Before the demo clock, its seconds sat in grading, deadlines and result_use."""
    from kaohe.ingest.roster_io import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(
        "year: 2026\n"
        "grading: {publicity_seconds: 3}\n"
        "deadlines: {working_day_seconds: 1}\n"
        "result_use: {review_answer_seconds: 2}\n",
        encoding="utf-8",
    )
    policy = load_policy(path, 2026)
    assert policy.demo.model_dump() == {
        "working_day_seconds": 1,
        "publicity_seconds": 3,
        "review_answer_seconds": 2,
    }
    assert "publicity_seconds" not in policy.grading.model_dump()
