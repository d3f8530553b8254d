"""Simulated integrators: the unit, the ballot system, the assessment group and the approver
driving one unit through every stage with real updates. Used by `kaohe demo`, the
benchmarks and the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Iterable
from fractions import Fraction
from functools import partial
from typing import Any, TypeVar

import asyncpg
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from activities.talk_cipher import TalkCipher
from activities.talk_store import store_talk
from domain.rules import excellent_quota
from domain.stages import ORDER
from kaohe.ballot_intake import BallotIntake, SheetsUnavailable, submission_key
from kaohe.ingest.ballot_io import TokenSource
from schemas.common import Actor, CadreGrade, Role, Stage, TeamGrade
from schemas.messages import (
    AcknowledgeNotice,
    ActionResult,
    Appraisal,
    ApproveGrades,
    BallotSheet,
    CadreRating,
    CloseEvaluation,
    CloseFollowUp,
    FollowUpKind,
    GroupEvaluation,
    NewCadreRating,
    ProposeGrades,
    RecordTalk,
    SubmitReport,
    TeamRating,
)
from schemas.policy import BallotPolicy, Policy, RaterGroup
from schemas.roster import CadreSpec, UnitSpec
from schemas.status import FollowUpView, UnitStatus
from schemas.talks import StoredTalk, Talk
from workflows.campaign import AssessmentCampaign, campaign_workflow_id
from workflows.unit import UnitAssessment

# (workflow id, talk) -> the stored talk: its content stored encrypted, as kaohe's API does
TalkStore = Callable[[str, Talk], Awaitable[StoredTalk]]

UNIT_CONTACT = Actor(id="unit-office", role=Role.UNIT)
BALLOT_SYSTEM = Actor(id="ballot-system", role=Role.INTEGRATOR)
GROUP = Actor(id="group-leader", role=Role.ASSESSMENT_GROUP)
APPROVER = Actor(id="department-approver", role=Role.APPROVER)
DEPARTMENT = Actor(id="department", role=Role.DEPARTMENT)


TALK_CONTENT = "谈话内容(保密)"  # every simulated talk's content starts with it


def talk_store(pool: asyncpg.Pool, cipher: TalkCipher, stored_by: str = GROUP.id) -> TalkStore:
    """Stores talks as kaohe's API does (activities/talk_store.py), for units driven here."""

    async def store(workflow_id: str, talk: Talk) -> StoredTalk:
        return await store_talk(pool, cipher, workflow_id, talk, stored_by)

    return store


def talk_by_reference(talk: Talk, stored: StoredTalk, actor: Actor = GROUP) -> RecordTalk:
    """The record_talk kaohe's API sends the unit for a stored talk: no content."""
    return RecordTalk(**talk.model_dump(exclude={"content"}), **stored.model_dump(), actor=actor)


def simulated_unit(
    unit_id: str,
    cadres: int,
    group_sizes: tuple[int, int, int],
    name: str = "测试单位",
    **extra: Any,
) -> UnitSpec:
    """A unit of `cadres` cadres (the first its principal) whose rater groups A, B, C plan
    `group_sizes` sheets with weights 40/30/30%: the tests', the benchmarks' stand-in."""
    weights = (Fraction(2, 5), Fraction(3, 10), Fraction(3, 10))
    extra.setdefault(
        "rater_groups",
        [
            RaterGroup(group_id=g, label=label, planned=max(1, n), weight=w)
            for g, label, n, w in zip(
                "ABC", ("领导班子成员", "中层干部", "职工代表"), group_sizes, weights, strict=True
            )
        ],
    )
    return UnitSpec(
        unit_id=unit_id,
        name=f"{name} {unit_id}",
        contact="办公室",
        cadres=[
            CadreSpec(
                cadre_id=f"{unit_id}-c{i}", name=f"干部{i}", position="副主任", principal=i == 0
            )
            for i in range(cadres)
        ],
        **extra,
    )


def _pick(options: list[str], rng: random.Random, favourable: int = 2) -> str:
    """Mostly one of the first `favourable` options, now and then any other."""
    return rng.choice(options[:favourable]) if rng.random() < 0.85 else rng.choice(options)


def sheet_for(token: str, unit: UnitSpec, policy: BallotPolicy, rng: random.Random) -> BallotSheet:
    """A complete, valid sheet: the team, every cadre and, in scope, the 民主评议 ballots."""
    dims = policy.dimension_options
    team_items = list(dict.fromkeys(policy.team_dimensions + policy.focus_items))
    sheet = BallotSheet(
        token=token,
        team=TeamRating(
            overall=_pick(policy.team_options, rng), items={k: _pick(dims, rng) for k in team_items}
        ),
        cadres=[
            CadreRating(
                cadre_id=c.cadre_id,
                # Never 不称职: a simulated unit raises no 不称职 flag by chance (a flagged
                # cadre needs a written determination); tests that want one cast them.
                overall=_pick([o for o in policy.cadre_options if o != "不称职"], rng),
                items={
                    k: _pick(dims, rng)
                    for k in policy.cadre_dimensions
                    + (policy.principal_items if c.principal else [])
                },
            )
            for c in unit.cadres
        ],
    )
    if unit.selection_review:
        sheet.selection_work = {
            q: _pick(policy.selection_options, rng) for q in policy.selection_questions
        }
        sheet.new_cadres = [
            NewCadreRating(cadre_id=c.cadre_id, opinion=_pick(policy.new_cadre_options, rng))
            for c in unit.cadres
            if c.newly_promoted
        ]
    return sheet


def batches_of(sheets: list[BallotSheet], max_ballots: int) -> list[list[BallotSheet]]:
    """Consecutive sheets grouped so that no batch holds more than `max_ballots` ballots."""
    out: list[list[BallotSheet]] = [[]]
    for sheet in sheets:
        if out[-1] and sum(x.ballot_count() for x in out[-1]) + sheet.ballot_count() > max_ballots:
            out.append([])
        out[-1].append(sheet)
    return [b for b in out if b]


def proposal_for(
    unit: UnitSpec, policy: Policy | None = None, flagged: Iterable[str] = ()
) -> ProposeGrades:
    """A proposal the grading rules accept: 称职 for all, 优秀 for as many of the first cadres
    as the quota allows, 不确定等次 for the ungraded, and a written determination for each
    cadre flagged by 不称职票率."""
    grading = (policy or Policy()).grading
    grades = {
        c.cadre_id: CadreGrade.UNDETERMINED if c.ungraded_reason else CadreGrade.COMPETENT
        for c in unit.cadres
    }
    graded = [c for c in unit.cadres if not c.ungraded_reason]
    quota = excellent_quota(len(graded), grading.ratio_for(unit.category))
    for cadre in graded[:quota]:
        grades[cadre.cadre_id] = CadreGrade.EXCELLENT
    return ProposeGrades(
        idempotency_key=f"{unit.unit_id}-proposal",
        actor=GROUP,
        evaluation=GroupEvaluation(
            strengths="班子团结, 实绩突出",
            shortcomings="创新不够",
            cadres={
                c.cadre_id: Appraisal(strengths="履职尽责", shortcomings="调研不够深入")
                for c in graded
            },
        ),
        team_grade=TeamGrade.GOOD,
        cadre_grades=grades,
        determinations={c: "经核实, 不称职票系对工作安排的误解所致" for c in flagged},
    )


async def drive_unit(
    client: Client,
    workflow_id: str,
    unit: UnitSpec,
    *,
    tokens: TokenSource,
    talks: TalkStore | None = None,
    policy: Policy | None = None,
    pace: float = 0.0,
    returned: float = 1.0,
    batch_size: int = 500,
    publicity_timeout: float = 120.0,
    stop_at: Stage | None = None,
    seed: int = 0,
    on_step: Callable[[str, ActionResult], None] | None = None,
) -> UnitStatus:
    """Performs every action of every stage; stops on entering `stop_at` if given.

    `tokens` issues the unit's ballot tokens (workflow id -> rater group -> tokens); a
    `returned` share of them is used, and the evaluation is closed by hand when that leaves
    a group short of its plan. `talks` stores each talk's content (as kaohe's API does: the
    unit gets only its reference); it is needed when the unit is driven past its talks."""
    handle: WorkflowHandle = client.get_workflow_handle_for(UnitAssessment.run, workflow_id)
    rng = random.Random(f"{seed}-{unit.unit_id}")
    key = unit.unit_id

    async def step(update, action) -> ActionResult:  # type: ignore[no-untyped-def]
        result = await execute(handle, update, action)
        if on_step is not None:
            on_step(update.__name__, result)
        if pace:
            await asyncio.sleep(pace * rng.uniform(0.5, 1.5))
        return result

    def reached(stage: Stage) -> bool:
        return stop_at is not None and ORDER.index(stage) >= ORDER.index(stop_at)

    await step(
        UnitAssessment.acknowledge_notice,
        AcknowledgeNotice(idempotency_key=f"{key}-ack", actor=UNIT_CONTACT),
    )
    if reached(Stage.REPORT_BACK):
        return await status_of(handle)
    await step(
        UnitAssessment.submit_report,
        SubmitReport(
            idempotency_key=f"{key}-team-report",
            actor=UNIT_CONTACT,
            kind="team",
            title=f"{unit.name}领导班子年度工作总结",
            text="一年来, 班子坚持……",
        ),
    )
    for c in unit.cadres:
        await step(
            UnitAssessment.submit_report,
            SubmitReport(
                idempotency_key=f"{key}-report-{c.cadre_id}",
                actor=UNIT_CONTACT,
                kind="cadre",
                cadre_id=c.cadre_id,
                title=f"{c.name}述职述廉报告",
                text="本人认真履职……",
            ),
        )
    if reached(Stage.EVALUATION):
        return await status_of(handle)
    # A rerun (the demo started again) finds the ballots already in: skip them.
    if (await status_of(handle)).stage == Stage.EVALUATION:
        await _cast_ballots(
            client, handle, unit, step, on_step, tokens, policy, returned, batch_size, rng, key
        )
    if reached(Stage.TALKS):
        return await status_of(handle)
    if talks is None:
        raise ValueError(f"drive_unit: {unit.unit_id} goes past its talks; give talks=")
    for t in range(unit.talks_planned):
        talk = Talk(
            idempotency_key=f"{key}-talk-{t}",
            talk_id=f"t{t}",
            interviewer="考核组成员",
            interviewee_role="班子成员" if t % 2 else "中层干部",
            talk_date=dt.date(2026, 12, 15),
            content=f"{TALK_CONTENT} #{t}",
        )
        await step(
            UnitAssessment.record_talk, talk_by_reference(talk, await talks(workflow_id, talk))
        )
    if reached(Stage.GRADING):
        return await status_of(handle)
    evaluation = (await status_of(handle)).evaluation
    flagged = [f.target_id for f in evaluation.flags if f.code == "incompetent_votes"]
    await step(UnitAssessment.propose_grades, proposal_for(unit, policy, flagged))
    # A pooled 优秀 quota: the campaign calibrates the proposal before it can be approved
    # (this one keeps to the unit's own quota, so the pool always holds it).
    calibrated = await wait_for_status(
        handle, lambda s: s.grading.calibration is None or s.grading.calibration.state != "pending"
    )
    if calibrated.grading.calibration and calibrated.grading.calibration.state == "held":
        raise RuntimeError(f"{unit.unit_id}: {calibrated.grading.calibration.reason}")
    await step(
        UnitAssessment.approve_grades,
        ApproveGrades(idempotency_key=f"{key}-approve", actor=APPROVER, decision="approve"),
    )
    # The grades become final when publicity (公示) ends. A query can see the unit in result
    # use before its follow-ups are created (they are written by the activities after the
    # transition): wait for them too.
    status = await wait_for_status(
        handle,
        lambda s: s.stage != Stage.GRADING and (s.stage != Stage.RESULT_USE or s.follow_ups.items),
        publicity_timeout,
    )
    if reached(Stage.RESULT_USE):
        return status
    return await close_follow_ups(handle, key, step)


async def close_follow_ups(
    handle: WorkflowHandle,
    key: str,
    step: Callable[[Any, Any], Awaitable[ActionResult]] | None = None,
) -> UnitStatus:
    """Result use to its end: each cadre signs its feedback, the unit's contact the unit's,
    the department closes every other follow-up."""

    status = await status_of(handle)
    for _ in range(3):  # a follow-up opened meanwhile (e.g. a 复核) is closed on the next round
        if status.stage != Stage.RESULT_USE:
            break
        for f in status.follow_ups.items:
            if not f.closed:
                await (step or partial(execute, handle))(
                    UnitAssessment.close_follow_up,
                    CloseFollowUp(
                        idempotency_key=f"{key}-close-{f.follow_up_id}",
                        actor=closer_of(f),
                        follow_up_id=f.follow_up_id,
                        outcome="已签收" if f.kind == FollowUpKind.FEEDBACK else "已落实",
                    ),
                )
        status = await status_of(handle)
    return status


async def execute(handle: WorkflowHandle, update: Any, action: Any) -> ActionResult:
    """The update, with its idempotency key as the update id, so a call retried after a
    restart gets the first call's result."""
    result: ActionResult = await persist(
        lambda: handle.execute_update(update, action, id=action.idempotency_key)
    )
    return result


def closer_of(item: FollowUpView) -> Actor:
    """Who closes a follow-up: a cadre signs its own feedback, the unit's contact the unit's;
    the department closes the rest."""
    if item.kind == FollowUpKind.FEEDBACK:
        return Actor(id=item.cadre_id, role=Role.CADRE) if item.cadre_id else UNIT_CONTACT
    return DEPARTMENT


T = TypeVar("T")
# What a restarting worker or server makes a call fail with, for a while.
TRANSIENT = (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError, SheetsUnavailable)


async def persist(call: Callable[[], Awaitable[T]], seconds: float = 120.0) -> T:
    """Retries a call that failed in transit, as an integrator would while a worker or the
    server restarts; idempotency keys (and update ids) make a repeated action harmless."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + seconds, 0.2
    while True:
        try:
            return await call()
        except TRANSIENT:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# A query in flight while the server restarts can be lost without an answer (the server logs
# "query does not exist"): without a deadline the caller would wait forever.
QUERY_TIMEOUT = dt.timedelta(seconds=10)


async def status_of(handle: WorkflowHandle) -> UnitStatus:
    return await persist(lambda: handle.query(UnitAssessment.status, rpc_timeout=QUERY_TIMEOUT))


async def wait_for_status(
    handle: WorkflowHandle, condition: Callable[[UnitStatus], bool], seconds: float = 30.0
) -> UnitStatus:
    """Polls the unit's `status` until `condition` holds or `seconds` pass; returns the last
    status either way, for the caller to check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        status: UnitStatus = await status_of(handle)
        if condition(status) or loop.time() > deadline:
            return status
        await asyncio.sleep(0.1)


async def wait_started(
    client: Client, workflow_id: str, seconds: float = 60.0
) -> WorkflowExecutionDescription:
    """A campaign starts its units asynchronously: wait until this one exists."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            return await client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            if loop.time() > deadline:
                raise TimeoutError(f"{workflow_id} was not started") from None
            await asyncio.sleep(0.1)


async def wait_campaign_started(client: Client, campaign_id: str, seconds: float = 900.0) -> None:
    """Until the campaign has started all its units: one query every half second, where a
    wait_started per unit would poll the server once per unit."""
    handle = client.get_workflow_handle_for(
        AssessmentCampaign.run, campaign_workflow_id(campaign_id)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            progress = await handle.query(AssessmentCampaign.progress, rpc_timeout=QUERY_TIMEOUT)
            if progress.units_started == progress.units_total:
                return
        except (RPCError, WorkflowQueryFailedError):  # not yet started, or between two runs
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"campaign {campaign_id} did not start all its units")
        await asyncio.sleep(0.5)


async def _cast_ballots(
    client: Client,
    handle: WorkflowHandle,
    unit: UnitSpec,
    step: Callable[..., Awaitable[ActionResult]],
    on_step: Callable[[str, ActionResult], None] | None,
    tokens: TokenSource,
    policy: Policy | None,
    returned: float,
    batch_size: int,
    rng: random.Random,
    key: str,
) -> None:
    """Every token holder (or a `returned` share) sends a sheet, in batches of a ballot
    system; the evaluation is closed by hand if that leaves a group short of its plan."""
    ballot_policy = (policy or Policy()).ballots
    issued = await tokens(handle.id)
    sheets = [
        sheet_for(token, unit, ballot_policy, rng)
        for group_tokens in issued.values()
        for token in group_tokens[: max(1, round(len(group_tokens) * returned))]
    ]
    # Sheets go to PostgreSQL as kaohe's API sends them, never to the unit: it hears of
    # pool batches by count and checksum.
    intake = BallotIntake(client, tokens.pool)
    for n, batch in enumerate(batches_of(sheets, batch_size)):
        taken = await persist(
            partial(
                intake.submit,
                handle.id,
                batch,
                submission_key("sim", key, str(n)),
                actor=BALLOT_SYSTEM,
            )
        )
        for answer in taken.answers:
            if on_step is not None:
                on_step("register_ballot_batch", answer)
    if (await status_of(handle)).stage == Stage.EVALUATION:
        await step(
            UnitAssessment.close_evaluation,
            CloseEvaluation(
                idempotency_key=f"{key}-close-eval", actor=GROUP, reason="部分人员未参加测评"
            ),
        )
