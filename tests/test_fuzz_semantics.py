"""Fuzzing past the parser: well-formed payloads, sent in the action's own stage, that name
unknown cadres, objections, follow-ups and batches, repeat what was recorded, or come from a
role the action does not take. Each is a rejection naming its field (or the role), none fails
a workflow task, and each unit still takes its next valid action afterwards.
The campaign's decide_calibration update is fuzzed the same way."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from domain.actions import ACTIONS
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit, talk_by_reference
from schemas.common import Role, Stage
from schemas.messages import ActionResult
from schemas.roster import Roster, UnitSpec
from schemas.talks import Talk
from schemas.workflow_io import CampaignInput
from tests.helpers import sample_unit, start_unit
from tests.test_fuzz_updates import examples as fuzz_examples
from workflows.campaign import AssessmentCampaign, campaign_workflow_id

EXAMPLES = 12  # per (action, kind of fault)
UNKNOWN = st.from_regex(r"zz[a-z0-9]{1,12}", fullmatch=True)  # no roster id starts so
REASON = st.text(alphabet="理由原因说明abc", min_size=2, max_size=40)


def actor(role: Role) -> dict[str, str]:
    return {"id": f"fuzz-{role.value}", "role": role.value}


def allowed(name: str) -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from(sorted(ACTIONS[name].roles)).map(actor)


def wrong_role(name: str) -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from(sorted(set(Role) - ACTIONS[name].roles)).map(actor)


def well_formed(stage: Stage, unit: UnitSpec) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Per action of `stage`: well-formed payloads (allowed role) that the unit's state must
    refuse."""
    any_id = UNKNOWN
    cadre = unit.cadres[0].cadre_id
    out: dict[str, st.SearchStrategy[dict[str, Any]]] = {}
    if stage == Stage.REPORT_BACK:
        out["submit_report"] = st.fixed_dictionaries(
            {"kind": st.just("cadre"), "cadre_id": any_id, "title": st.just("述职"), "text": REASON}
        )
    if stage == Stage.EVALUATION:
        out["register_ballot_batch"] = st.fixed_dictionaries(
            {
                "batch_id": any_id,  # never imported
                "ballots": st.integers(1, 10_000),
                "sheets": st.integers(1, 1_000),
                "checksum": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
            }
        )
        out["close_evaluation"] = st.just({})  # no ballots and no reason
    if stage == Stage.TALKS:
        out["record_talk"] = st.fixed_dictionaries(
            {
                "talk_id": st.just("t-dup"),  # recorded before the fuzzing
                "interviewer": st.just("考核组"),
                "interviewee_role": st.just("班子成员"),
                "talk_date": st.dates(dt.date(2026, 1, 1), dt.date(2026, 12, 31)).map(str),
                # Refused as a duplicate before the reference is looked at.
                "talk_ref": st.just(f"talk-{'0' * 32}"),
                "digest": st.text("0123456789abcdef", min_size=64, max_size=64),
            }
        )
    if stage == Stage.GRADING:
        out["propose_grades"] = st.fixed_dictionaries(
            {
                "evaluation": REASON,
                "team_grade": st.sampled_from(["好", "较好", "一般", "较差"]),
                "cadre_grades": st.dictionaries(any_id, st.just("称职"), min_size=1, max_size=3),
            }
        )
        out["approve_grades"] = st.just({"decision": "approve"})  # nothing proposed
        out["raise_objection"] = st.fixed_dictionaries(  # not in publicity
            {"objection_id": any_id, "raised_by": st.just("群众"), "reason": REASON}
        )
        out["resolve_objection"] = st.fixed_dictionaries(
            {
                "objection_id": any_id,
                "decision": st.sampled_from(["uphold", "dismiss"]),
                "reason": REASON,
            }
        )
    if stage == Stage.RESULT_USE:
        out["close_follow_up"] = st.fixed_dictionaries({"follow_up_id": any_id, "outcome": REASON})
        out["request_review"] = st.fixed_dictionaries({"cadre_id": any_id, "reason": REASON})
        out["record_follow_up"] = st.fixed_dictionaries(
            {
                "follow_up_id": st.sampled_from(["feedback-unit", f"feedback-{cadre}"]),
                "kind": st.just("training"),
                "owner": st.just("组织部"),
                "description": REASON,
            }
        )
    if stage in ACTIONS["close_stage"].stages:  # a stale request names another stage
        out["close_stage"] = st.fixed_dictionaries(
            {"stage": st.sampled_from([s.value for s in Stage if s != stage]), "reason": REASON}
        )
    return out


def examples(strategy: st.SearchStrategy[Any]) -> list[Any]:
    return fuzz_examples(strategy, EXAMPLES)


async def refused(handle: WorkflowHandle, name: str, payload: dict[str, Any]) -> str:
    try:
        result = await handle.execute_update(name, payload, result_type=ActionResult)
    except WorkflowUpdateFailedError as err:
        assert isinstance(err.cause, ApplicationError)
        return err.cause.message
    raise AssertionError(f"{name} accepted {payload!r}: {result}")


async def test_well_formed_but_wrong_payloads_in_every_stage(
    client: Client, worker: str, tokens: TokenSource, talks: TalkStore
) -> None:
    cases = 0
    for stage in (
        Stage.REPORT_BACK,
        Stage.EVALUATION,
        Stage.TALKS,
        Stage.GRADING,
        Stage.RESULT_USE,
    ):
        unit = sample_unit()
        handle = await start_unit(client, worker, unit)
        await drive_unit(client, handle.id, unit, stop_at=stage, tokens=tokens, talks=talks)
        if stage == Stage.TALKS:
            talk = Talk(
                idempotency_key="t-dup",
                talk_id="t-dup",
                interviewer="考核组",
                interviewee_role="班子成员",
                talk_date=dt.date(2026, 12, 1),
                content="谈话内容",
            )
            first = talk_by_reference(talk, await talks(handle.id, talk))
            result = await handle.execute_update("record_talk", first, result_type=ActionResult)
            assert result.accepted
        for name, strategy in well_formed(stage, unit).items():
            rights, wrongs = examples(allowed(name)), examples(wrong_role(name))
            for n, body in enumerate(examples(strategy)):
                key = f"{name}-{n}-{uuid.uuid4().hex[:6]}"
                # In its stage, from a role it takes: the unit's state refuses it.
                payload = {"idempotency_key": key, "actor": rights[n % len(rights)], **body}
                message = await refused(handle, name, payload)
                # "field: what is wrong", but for those that name the grading's phase
                phase = name in ("raise_objection", "approve_grades")
                assert ": " in message or phase, (name, message)
                assert "Traceback" not in message and len(message) < 2_000
                cases += 1
                if wrongs:  # the same from a role it does not take: refused for the role
                    payload = {**payload, "idempotency_key": f"{key}-r"}
                    payload["actor"] = wrongs[n % len(wrongs)]
                    message = await refused(handle, name, payload)
                    assert message.startswith("actor.role: "), (name, message)
                    cases += 1
        history = await handle.fetch_history()
        kinds = [e.event_type for e in history.events]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds
        status = await handle.query("status")
        assert status["stage"] == stage.value  # nothing moved it
    assert cases >= 300


async def test_decide_calibration_rejects_bad_decisions(client: Client, worker: str) -> None:
    unit = sample_unit()
    roster = Roster(
        campaign_id=f"fz{uuid.uuid4().hex[:6]}", year=2026, title="模糊测试", units=[unit]
    )
    handle = await client.start_workflow(
        AssessmentCampaign.run,
        CampaignInput(roster=roster),
        id=campaign_workflow_id(roster.campaign_id),
        task_queue=worker,
    )
    strategy = st.one_of(
        st.fixed_dictionaries(  # a unit with nothing on hold, or one not in the campaign
            {
                "unit_id": st.one_of(st.just(unit.unit_id), UNKNOWN),
                "decision": st.sampled_from(["allow", "return"]),
                "reason": REASON,
                "actor": st.just(actor(Role.DEPARTMENT)),
            }
        ),
        st.fixed_dictionaries(  # the wrong role
            {
                "unit_id": st.just(unit.unit_id),
                "decision": st.just("allow"),
                "reason": REASON,
                "actor": wrong_role_for_calibration(),
            }
        ),
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
    )
    for n, body in enumerate(examples(strategy) * 3):
        payload = {"idempotency_key": f"cal-{n}", **body} if isinstance(body, dict) else body
        try:
            await handle.execute_update("decide_calibration", payload, result_type=dict)
        except WorkflowUpdateFailedError as err:
            message = str(err.cause)
            assert ": " in message and len(message) < 2_000, message
            continue
        raise AssertionError(f"decide_calibration accepted {payload!r}")
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds
    await handle.terminate("fuzzed")


def wrong_role_for_calibration() -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from([r for r in Role if r != Role.DEPARTMENT]).map(actor)
