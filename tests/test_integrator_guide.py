"""docs/integrator-guide.md, run: every `sh` example with `curl` against the session's dev
server, on a unit brought to the stage it needs; every update and signal has a section and
a tested example; the shipped JSON Schemas are `kaohe schema export`'s and the examples'
bodies validate against them; the Python calls build valid messages.

Conventions of the guide (see its top):

* `<!-- prelude -->` before a ```sh block: shell helpers prepended to every example run;
* `<!-- run: given=STATE expect=WHAT [http=N] [after="PATH OP VALUE; ..."] [changed=PATH]
  [schema=invalid] -->` before a ```sh block: run it on a unit in STATE (see GIVENS),
  expecting WHAT (see EXPECTS) of its last call to Temporal; `after` checks the unit's
  `status` once it has run (OP `=`, `!=`, or `~` for "its JSON contains"), `changed` that a
  status field moved; the bodies of updates and signals must fit their JSON Schema (but for
  rejections), or must not with `schema=invalid`; a line `# -> PATTERN` in the block is
  output it must print (`…` matches anything);
* `<!-- python: setup -->` and `<!-- python -->` before a ```python block: the imports, and
  a section's Python call (run with stand-in handles);
* `<!-- internal -->` under a section's heading: a signal between the workflows.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import random
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
from google.protobuf import json_format
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle

import kaohe
from domain.actions import ACTIONS
from kaohe.cli.main import schema_export
from kaohe.client import data_converter
from kaohe.codec.server import CodecServer, codec_token
from kaohe.ingest.ballot_csv import write_ballot_csv
from kaohe.ingest.ballot_io import import_ballots
from kaohe.ingest.roster_io import load_policy, load_roster
from kaohe.listening import free_port
from kaohe.sim.simulate import (
    APPROVER,
    DEPARTMENT,
    UNIT_CONTACT,
    TokenSource,
    drive_unit,
    execute,
    proposal_for,
    sheet_for,
    status_of,
    wait_for_status,
    wait_started,
)
from kaohe.starter import start_campaign
from schemas.calibration import DecideCalibration
from schemas.common import CadreGrade, Stage
from schemas.messages import (
    ActionResult,
    ApproveGrades,
    PauseUnit,
    RaiseObjection,
)
from schemas.policy import DemoClock, Policy
from schemas.roster import Roster, UnitSpec
from tests.conftest import Stack
from tests.helpers import SMALL_GROUPS, start_unit
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id
from workflows.unit import UnitAssessment

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "integrator-guide.md"
SCHEMAS = ROOT / "docs" / "schemas"
WAIT_SECONDS = 30.0

# ---- the guide, parsed -----------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the opening fence
    section: str  # the name of the `### \`name\`` it is under ("" before any)
    marker: str  # the HTML comment right before it, without <!-- -->, or ""
    options: dict[str, str] = field(default_factory=dict)  # of a `run:` marker

    @property
    def expected_lines(self) -> list[str]:
        return [line[5:] for line in self.text.splitlines() if line.startswith("# -> ")]


@dataclass
class Guide:
    blocks: list[Block]
    sections: dict[str, str]  # name -> its text

    def marked(self, marker: str) -> list[Block]:
        return [b for b in self.blocks if b.marker == marker]

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.marker.startswith("run:")]


HEADING = re.compile(r"^#{2,3} ")
SECTION = re.compile(r"^### `(\w+)`\s*$")
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")


def parse_guide(text: str) -> Guide:
    blocks: list[Block] = []
    sections: dict[str, list[str]] = {}
    section, marker, fence = "", "", None
    body: list[str] = []
    start = 0
    for n, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.strip() == "```":
                blocks.append(Block(fence, "\n".join(body), start, section, marker))
                if marker.startswith("run:"):
                    blocks[-1].options = dict(
                        item.split("=", 1) for item in shlex.split(marker[4:])
                    )
                fence, marker, body = None, "", []
            else:
                body.append(line)
            if section:
                sections[section].append(line)
            continue
        if HEADING.match(line):
            found = SECTION.match(line)
            section = found.group(1) if found else ""
            if section:
                assert section not in sections, f"line {n}: a second section {section}"
                sections[section] = []
            marker = ""
            continue
        if section:
            sections[section].append(line)
        if line.startswith("```"):
            fence, start, body = line[3:].strip(), n, []
        elif m := MARKER.match(line.strip()):
            marker = m.group(1)
        elif line.strip():
            marker = ""
    return Guide(blocks, {name: "\n".join(lines) for name, lines in sections.items()})


GUIDE_DOC = parse_guide(GUIDE.read_text(encoding="utf-8"))


def block_id(block: Block) -> str:
    same = [b for b in GUIDE_DOC.runnable if b.section == block.section]
    return f"{block.section or 'common'}-{same.index(block) + 1}"


# ---- registered handlers ---------------------------------------------------------------------

UNIT = workflow._Definition.from_class(UnitAssessment)
CAMPAIGN = workflow._Definition.from_class(AssessmentCampaign)
assert UNIT is not None and CAMPAIGN is not None


def handler_names() -> dict[str, set[str]]:
    """kind ('update', 'signal', 'query') -> names, over both workflows."""
    return {
        "update": set(UNIT.updates) | set(CAMPAIGN.updates),
        "signal": set(UNIT.signals) | set(CAMPAIGN.signals),
        "query": set(UNIT.queries) | set(CAMPAIGN.queries),
    }


def calls_in(text: str) -> set[tuple[str, str]]:
    """(kind, name) of each HTTP API call written in a block."""
    return set(re.findall(r"/workflows/[^/\s]+/(update|signal|query)/(\w+)", text))


def internal_sections() -> set[str]:
    return {
        name
        for name, text in GUIDE_DOC.sections.items()
        if any(line.strip() == "<!-- internal -->" for line in text.splitlines())
    }


def test_every_handler_has_a_section_and_a_tested_example() -> None:
    internal = internal_sections()
    tested = {
        (block.section, call) for block in GUIDE_DOC.runnable for call in calls_in(block.text)
    }
    missing: list[str] = []
    for kind, names in handler_names().items():
        for name in sorted(names):
            if name not in GUIDE_DOC.sections:
                missing.append(f"{kind} {name}: no section `### \\`{name}\\``")
            elif name not in internal and (name, (kind, name)) not in tested:
                missing.append(f"{kind} {name}: no tested curl example of .../{kind}/{name}")
    assert not missing, (
        "docs/integrator-guide.md does not cover every handler of UnitAssessment and "
        "AssessmentCampaign:\n" + "\n".join(missing)
    )
    # Internal is for the signals the workflows send each other, never the public contract.
    public = set(ACTIONS) | set(CAMPAIGN.updates) | handler_names()["query"]
    assert not internal & public, f"public handlers marked internal: {internal & public}"
    assert internal <= handler_names()["signal"], internal - handler_names()["signal"]
    stray = set(GUIDE_DOC.sections) - set().union(*handler_names().values())
    assert not stray, f"sections for handlers that do not exist: {stray}"


def test_sections_give_the_stages_and_roles_of_the_transition_table() -> None:
    for name, rule in ACTIONS.items():
        text = GUIDE_DOC.sections[name]
        found = re.search(r"\*\*Stage:\*\*(.*?)·\s*\*\*Roles:\*\*(.*?)·", text, re.S)
        assert found, f"{name}: no '**Stage:** ... · **Roles:** ... ·' line"
        stages = set(re.findall(r"`(\w+)`", found.group(1)))
        roles = set(re.findall(r"`(\w+)`", found.group(2)))
        assert stages == {s.value for s in rule.stages}, f"{name}: stages {stages}"
        assert roles == {r.value for r in rule.roles}, f"{name}: roles {roles}"
        assert f"(schemas/{name}.json)" in text, f"{name}: no link to its schema"


def test_run_markers_are_well_formed() -> None:
    assert len(GUIDE_DOC.marked("prelude")) == 1
    for block in GUIDE_DOC.runnable:
        where = f"line {block.line}"
        assert block.lang == "sh", where
        assert block.options.get("given") in GIVENS, f"{where}: given= one of {sorted(GIVENS)}"
        assert block.options.get("expect") in EXPECTS, f"{where}: expect= one of {EXPECTS}"
        assert set(block.options) <= {"given", "expect", "http", "after", "changed", "schema"}
        assert block.options.get("schema", "invalid") == "invalid", where
        for check in split_checks(block.options.get("after", "")):
            assert CHECK.match(check), f"{where}: after check {check!r}"


# ---- the schemas shipped in docs/schemas -----------------------------------------------------


def test_shipped_schemas_are_the_exported_ones(tmp_path: Path) -> None:
    schema_export(tmp_path)
    exported = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    shipped = {p.name: p.read_bytes() for p in SCHEMAS.glob("*.json")}
    stale = sorted(
        name for name in exported.keys() | shipped.keys() if exported.get(name) != shipped.get(name)
    )
    assert not stale, f"docs/schemas is out of date ({', '.join(stale)}): run `make schemas`"
    assert {f"{name}.json" for name in ACTIONS} <= shipped.keys()


def schema_of(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return schema


def test_schemas_reject_what_the_models_reject() -> None:
    """The shipped schemas are strict as the models are: a typo'd field fails."""
    validator = jsonschema.Draft202012Validator(schema_of("acknowledge_notice"))
    actor = {"id": "jyj-office", "role": "unit"}
    assert validator.is_valid({"idempotency_key": "k", "actor": actor})
    assert not validator.is_valid({"idempotency_key": "k", "actor": actor, "nots": "x"})
    assert not validator.is_valid({"idempotency_key": "k", "actor": {**actor, "role": "boss"}})


# ---- the Python calls ------------------------------------------------------------------------


@dataclass
class Recorded:
    kind: str
    target: Any
    arg: Any
    id: str | None = None


class StandIn:
    """A workflow handle that records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[Recorded] = []

    async def execute_update(self, update: Any, arg: Any, *, id: str | None = None) -> Any:
        self.calls.append(Recorded("update", update, arg, id))
        return ActionResult(accepted=True, stage=Stage.NOTICE, message="")

    async def signal(self, signal: Any, arg: Any) -> None:
        self.calls.append(Recorded("signal", signal, arg))

    async def query(self, query: Any) -> None:
        self.calls.append(Recorded("query", query, None))


async def run_python(source: str, namespace: dict[str, Any]) -> None:
    code = compile(source, str(GUIDE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # the guide's own examples
    if asyncio.iscoroutine(result):
        await result


async def test_python_calls_send_valid_messages() -> None:
    [setup] = GUIDE_DOC.marked("python: setup")
    namespace: dict[str, Any] = {}
    await run_python(setup.text, namespace)
    internal = internal_sections()
    for name in GUIDE_DOC.sections.keys() - internal:
        [block] = [b for b in GUIDE_DOC.marked("python") if b.section == name] or [None]
        assert block is not None, f"{name}: no Python call (<!-- python --> block)"
        handle, campaign = StandIn(), StandIn()
        await run_python(block.text, {**namespace, "handle": handle, "campaign": campaign})
        calls = handle.calls + campaign.calls
        where = f"{name} (line {block.line})"
        if name in handler_names()["query"]:
            workflow_class = UnitAssessment if name in UNIT.queries else AssessmentCampaign
            assert [c.target for c in calls] == [getattr(workflow_class, name)], where
            continue
        model = DecideCalibration if name in CAMPAIGN.updates else ACTIONS[name].model
        kinds = ["update", "signal"] if name in UNIT.signals else ["update"]
        assert [c.kind for c in calls] == kinds, where
        for call in calls:
            assert isinstance(call.arg, model), where
            if call.kind == "update":
                owner = UnitAssessment if name in UNIT.updates else AssessmentCampaign
                assert call.target is getattr(owner, name), where
                assert call.id == call.arg.idempotency_key, f"{where}: id= the idempotency key"
            else:
                assert call.target == name, where


# ---- running the curl examples ---------------------------------------------------------------

CURL_WRAPPER = r'''#!{python}
"""curl, recording each request and answer (JSON lines in $CURL_LOG) for the test."""
import json, os, subprocess, sys, tempfile

DATA = {{"-d", "--data", "--data-binary", "--data-ascii"}}
args, body, feed, method = sys.argv[1:], None, None, None
for i, arg in enumerate(args[:-1]):
    value = args[i + 1]
    if arg in ("-X", "--request"):
        method = value
    elif arg in DATA or arg == "--data-raw":
        if arg != "--data-raw" and value.startswith("@"):
            raw = sys.stdin.buffer.read() if value == "@-" else open(value[1:], "rb").read()
            if value == "@-":
                feed = raw
            if arg != "--data-binary":
                raw = raw.replace(b"\r", b"").replace(b"\n", b"")
        else:
            raw = value.encode()
        body = raw.decode()
url = next(a for a in args if a.startswith(("http://", "https://")))
with tempfile.NamedTemporaryFile(suffix=".headers") as headers:
    done = subprocess.run(
        [{curl!r}, *args, "-D", headers.name],
        input=feed,
        stdin=None if feed is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    lines = open(headers.name, "rb").read().decode("latin-1").splitlines()
statuses = [int(line.split()[1]) for line in lines if line.startswith("HTTP/")]
sys.stdout.buffer.write(done.stdout)
sys.stdout.flush()
with open(os.environ["CURL_LOG"], "a", encoding="utf-8") as log:
    record = {{
        "url": url,
        "method": method,
        "body": body,
        "status": statuses[-1] if statuses else None,
        "answer": done.stdout.decode("utf-8", "replace"),
    }}
    log.write(json.dumps(record, ensure_ascii=False) + "\n")
sys.exit(done.returncode)
'''


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`curl` (recording, in front of the real one) and `python3` for the examples."""
    real = shutil.which("curl")
    if real is None:
        pytest.fail("the integrator guide's examples need curl: `make system-deps` installs it")
    path = tmp_path_factory.mktemp("guide-bin")
    wrapper = path / "curl"
    wrapper.write_text(CURL_WRAPPER.format(python=sys.executable, curl=real))
    wrapper.chmod(0o755)
    (path / "python3").symlink_to(sys.executable)
    return path


@pytest.fixture(scope="module")
async def codec(stack: Stack) -> AsyncIterator[CodecServer]:
    """A codec server with the worker's keys, as `make run` has on :8234."""
    server = CodecServer(stack.settings.model_copy(update={"codec_port": free_port()}))
    await server.start()
    yield server
    await server.stop()


# ---- the units the examples run on -----------------------------------------------------------


def demo_unit(unit_id: str = "jyj") -> UnitSpec:
    """The demo roster's unit (the guide's cadre ids), with small rater groups (2, 2, 3)."""
    roster = load_roster(Path(kaohe.__file__).parent / "samples" / "demo-roster.yaml")
    [unit] = [u for u in roster.units if u.unit_id == unit_id]
    return unit.model_copy(update={"rater_groups": SMALL_GROUPS})


def demo_policy(publicity_seconds: float = 0.2, **grading: Any) -> Policy:
    """The 2026 policy the demo runs with, with a publicity (公示) of seconds."""
    policy = load_policy(None, 2026)
    return policy.model_copy(
        update={
            "grading": policy.grading.model_copy(update=grading),
            "demo_clock": DemoClock(publicity_seconds=publicity_seconds),
        }
    )


@dataclass
class Context:
    stack: Stack
    client: Client
    task_queue: str
    pool: asyncpg.Pool
    tokens: TokenSource
    tmp_path: Path
    campaign_id: str = field(default_factory=lambda: f"guide{uuid.uuid4().hex[:10]}")
    unit: UnitSpec = field(default_factory=demo_unit)


@dataclass
class Given:
    env: dict[str, str]
    handle: WorkflowHandle | None = None


async def started(ctx: Context, policy: Policy | None = None) -> WorkflowHandle:
    return await start_unit(
        ctx.client, ctx.task_queue, ctx.unit, ctx.campaign_id, policy or demo_policy()
    )


async def driven(ctx: Context, stop_at: Stage, policy: Policy | None = None) -> WorkflowHandle:
    policy = policy or demo_policy()
    handle = await started(ctx, policy)
    await drive_unit(
        ctx.client, handle.id, ctx.unit, tokens=ctx.tokens, policy=policy, stop_at=stop_at
    )
    return handle


def unit_env(handle: WorkflowHandle, **extra: str) -> Given:
    return Given({"WF": handle.id, **extra}, handle)


async def given_none(ctx: Context) -> Given:
    return Given({"WF": unit_workflow_id(ctx.campaign_id, ctx.unit.unit_id)})


async def given_notice(ctx: Context) -> Given:
    return unit_env(await started(ctx))


async def given_report_back(ctx: Context) -> Given:
    return unit_env(await driven(ctx, Stage.REPORT_BACK))


async def given_evaluation(ctx: Context) -> Given:
    handle = await driven(ctx, Stage.EVALUATION)
    issued = await ctx.tokens(handle.id)
    return unit_env(handle, TOKEN=issued["A"][0], TOKEN2=issued["A"][1])


async def given_imported(ctx: Context) -> Given:
    """Evaluation, with two sheets imported by `kaohe ballots import` as scan-2026-01."""
    handle = await driven(ctx, Stage.EVALUATION)
    issued = await ctx.tokens(handle.id)
    rng = random.Random(1)
    policy = demo_policy().ballots
    path = ctx.tmp_path / "ballots.csv"
    write_ballot_csv(
        path, [(f"s{i}", sheet_for(t, ctx.unit, policy, rng)) for i, t in enumerate(issued["A"])]
    )
    result = await import_ballots(
        ctx.client, ctx.pool, path, ctx.campaign_id, ctx.unit.unit_id, batch_id="scan-2026-01"
    )
    return unit_env(
        handle,
        BALLOTS=str(result.ballots),
        SHEETS=str(result.sheets),
        CHECKSUM=result.checksum,
    )


async def given_talks(ctx: Context) -> Given:
    return unit_env(await driven(ctx, Stage.TALKS))


async def given_grading(ctx: Context) -> Given:
    return unit_env(await driven(ctx, Stage.GRADING))


LONG_PUBLICITY = 3600.0  # the grades stay in publicity while the example runs


async def proposed(ctx: Context) -> WorkflowHandle:
    policy = demo_policy(LONG_PUBLICITY)
    handle = await driven(ctx, Stage.GRADING, policy)
    await execute(handle, UnitAssessment.propose_grades, proposal_for(ctx.unit, policy))
    return handle


async def given_proposed(ctx: Context) -> Given:
    return unit_env(await proposed(ctx))


async def in_publicity(ctx: Context) -> WorkflowHandle:
    handle = await proposed(ctx)
    approval = ApproveGrades(idempotency_key="approve", actor=APPROVER, decision="approve")
    await execute(handle, UnitAssessment.approve_grades, approval)
    return handle


async def given_publicity(ctx: Context) -> Given:
    return unit_env(await in_publicity(ctx))


async def given_objection(ctx: Context) -> Given:
    handle = await in_publicity(ctx)
    objection = RaiseObjection(
        idempotency_key="objection-1",
        actor=UNIT_CONTACT,
        objection_id="obj-1",
        raised_by="职工来信",
        cadre_id="jyj-02",
        reason="反映该同志年度实绩材料有出入",
    )
    await execute(handle, UnitAssessment.raise_objection, objection)
    return unit_env(handle)


async def given_result_use(ctx: Context) -> Given:
    return unit_env(await driven(ctx, Stage.RESULT_USE))


async def given_paused(ctx: Context) -> Given:
    handle = await driven(ctx, Stage.REPORT_BACK)
    pause = PauseUnit(idempotency_key="paused", actor=DEPARTMENT, reason="单位机构改革")
    await execute(handle, UnitAssessment.pause, pause)
    return unit_env(handle)


async def given_held(ctx: Context) -> Given:
    """A campaign pooling the 优秀 quota (2 graded cadres: none) and its unit's proposal of
    one 优秀, held for the department."""
    policy = demo_policy(excellent_quota_scope="category")
    roster = Roster(campaign_id=ctx.campaign_id, year=2026, title="考核指南", units=[ctx.unit])
    await start_campaign(ctx.client, roster, ctx.task_queue, policy)
    workflow_id = unit_workflow_id(ctx.campaign_id, ctx.unit.unit_id)
    await wait_started(ctx.client, workflow_id)
    await drive_unit(
        ctx.client, workflow_id, ctx.unit, tokens=ctx.tokens, policy=policy, stop_at=Stage.GRADING
    )
    handle = ctx.client.get_workflow_handle(workflow_id)
    proposal = proposal_for(ctx.unit, policy)
    proposal.cadre_grades["jyj-01"] = CadreGrade.EXCELLENT
    await execute(handle, UnitAssessment.propose_grades, proposal)
    status = await wait_for_status(
        handle,
        lambda s: s.grading.calibration is not None and s.grading.calibration.state == "held",
    )
    assert status.grading.calibration and status.grading.calibration.state == "held", status
    return unit_env(handle, CAMPAIGN_WF=campaign_workflow_id(ctx.campaign_id))


GIVENS: dict[str, Callable[[Context], Any]] = {
    "none": given_none,
    "notice": given_notice,
    "report_back": given_report_back,
    "evaluation": given_evaluation,
    "imported": given_imported,
    "talks": given_talks,
    "grading": given_grading,
    "proposed": given_proposed,
    "publicity": given_publicity,
    "objection": given_objection,
    "result_use": given_result_use,
    "paused": given_paused,
    "held": given_held,
}
# What the block's last call to Temporal answers.
EXPECTS = ("accepted", "duplicate", "rejected", "signalled", "answered", "error", "output")

# ---- checks ----------------------------------------------------------------------------------

CHECK = re.compile(r"^([\w.]+)\s*(!=|=|~)\s*(.*)$")


def split_checks(after: str) -> list[str]:
    return [c.strip() for c in after.split(";") if c.strip()]


def lookup(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def holds(status: dict[str, Any], check: str) -> bool:
    m = CHECK.match(check)
    assert m, check
    path, op, raw = m.groups()
    try:
        actual = lookup(status, path)
    except (KeyError, IndexError, TypeError):
        return False
    if op == "~":
        return raw in json.dumps(actual, ensure_ascii=False, separators=(",", ":"))
    try:
        expected = json.loads(raw)
    except ValueError:
        expected = raw
    return (actual == expected) == (op == "=")


def matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("…"))
    return re.fullmatch(regex, line.rstrip()) is not None


def missing_lines(expected: list[str], output: list[str]) -> list[str]:
    """The expected lines not found in order (each one a later line than the one before)."""
    rest = iter(output)
    return [p for p in expected if not any(matches(p, line) for line in rest)]


async def status_json(handle: WorkflowHandle) -> dict[str, Any]:
    status = await status_of(handle)
    return status.model_dump(mode="json")


async def decoded(stack: Stack, payloads: dict[str, Any]) -> list[Any]:
    codec = data_converter(stack.settings).payload_codec
    assert codec is not None
    protos = [json_format.ParseDict(p, Payload()) for p in payloads["payloads"]]
    return [json.loads(p.data) for p in await codec.decode(protos)]


@dataclass
class Call:
    url: str
    method: str | None
    body: str | None
    status: int | None
    answer: str

    @property
    def kind_name(self) -> tuple[str, str] | None:
        m = re.search(r"/workflows/[^/]+/(update|signal|query)/(\w+)$", self.url)
        return (m.group(1), m.group(2)) if m else None

    def json_body(self) -> Any:
        return json.loads(self.body or "null")

    def json_answer(self) -> Any:
        return json.loads(self.answer)


def plaintexts(calls: list[Call]) -> dict[str, Any]:
    """Encrypted payload data (base64) -> the JSON body it was encoded from, by /encode."""
    out: dict[str, Any] = {}
    for call in calls:
        if call.url.endswith("/encode") and call.status == 200:
            sent = call.json_body()["payloads"]
            got = call.json_answer()["payloads"]
            for plain, secret in zip(sent, got, strict=True):
                out[secret["data"]] = json.loads(base64.b64decode(plain["data"]))
    return out


def action_bodies(call: Call, encoded: dict[str, Any]) -> list[Any]:
    """The action bodies an update or signal call carried, encrypted ones as encoded."""
    body = call.json_body()
    payloads = body["request"]["input"]["args"] if "request" in body else body["input"]
    if isinstance(payloads, dict):
        payloads = payloads["payloads"]
    out = []
    for p in payloads:
        if isinstance(p, dict) and set(p) == {"metadata", "data"}:
            assert p["data"] in encoded, "an encrypted payload not made by the codec's /encode"
            out.append(encoded[p["data"]])
        else:
            out.append(p)
    return out


@pytest.fixture
async def context(
    stack: Stack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    tmp_path: Path,
) -> Context:
    return Context(stack, client, worker, pool, tokens, tmp_path)


def environment(bin_dir: Path, stack: Stack, codec: CodecServer, log: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "CURL_LOG": str(log),
        "TEMPORAL_HTTP": stack.temporal.http_url,
        "CODEC": codec.url,
        "CODEC_TOKEN": codec_token(stack.settings),
        "CAMPAIGN_WF": campaign_workflow_id("guide-none"),
        "PYTHONIOENCODING": "utf-8",
    }


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    return [Call(**json.loads(line)) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("block", GUIDE_DOC.runnable, ids=block_id)
async def test_example_runs_as_the_guide_says(
    block: Block, context: Context, bin_dir: Path, codec: CodecServer
) -> None:
    opts, stack = block.options, context.stack
    where = f"docs/integrator-guide.md line {block.line} ({block_id(block)})"
    given = await GIVENS[opts["given"]](context)
    handle = given.handle
    changed = opts.get("changed")
    before = lookup(await status_json(handle), changed) if handle and changed else None

    log = context.tmp_path / "curl.jsonl"
    env = {**environment(bin_dir, stack, codec, log), **given.env}
    [prelude] = GUIDE_DOC.marked("prelude")
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"{prelude.text}\n{block.text}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()
    calls = read_calls(log)
    shown = f"{where}\n--- stdout\n{out}\n--- stderr\n{err}\n--- calls\n" + "\n".join(
        f"{c.method} {c.url} -> {c.status} {c.answer[:600]}" for c in calls
    )

    # Every call answered as expected: Temporal with 200 (or the marked status), the codec 200.
    temporal = [c for c in calls if c.url.startswith(stack.temporal.http_url)]
    assert temporal or opts["expect"] == "output", f"no call to Temporal\n{shown}"
    for call in calls:
        want = int(opts.get("http", 200)) if call in temporal else 200
        assert call.status == want, f"HTTP {call.status} for {call.url}\n{shown}"
    if opts["expect"] not in ("rejected", "error"):
        assert proc.returncode == 0, f"exit status {proc.returncode}\n{shown}"

    # The output the guide shows.
    output = out.splitlines() + err.splitlines()
    missing = missing_lines(block.expected_lines, output)
    assert not missing, f"expected output not printed: {missing}\n{shown}"

    # The last call to Temporal answered as the guide says.
    expect = opts["expect"]
    if expect != "output":
        last = temporal[-1]
        answer = last.json_answer()
        kind = last.kind_name[0] if last.kind_name else None
        if expect in ("accepted", "duplicate"):
            assert kind == "update" and "success" in answer.get("outcome", {}), shown
            [result] = await decoded(stack, answer["outcome"]["success"])
            assert result["accepted"] is True, shown
            assert result["duplicate"] is (expect == "duplicate"), f"{result}\n{shown}"
        elif expect == "rejected":
            assert kind == "update" and "failure" in answer.get("outcome", {}), shown
        elif expect == "signalled":
            assert kind == "signal" and "code" not in answer, shown
        elif expect == "answered":
            assert kind == "query" and "queryResult" in answer, shown
        elif expect == "error":
            assert "code" in answer and "message" in answer, shown

    # Every update and signal body is the action's schema; an update's id is its key.
    encoded = plaintexts(calls)
    for call in temporal:
        if call.kind_name is None or call.kind_name[0] == "query":
            continue
        kind, name = call.kind_name
        bodies = action_bodies(call, encoded)
        if kind == "update":
            update_id = call.json_body()["request"]["meta"]["updateId"]
            keys = [b.get("idempotency_key") for b in bodies]
            same = keys == [update_id] or expect == "duplicate"
            assert same, f"updateId {update_id!r} is not the idempotency key {keys}\n{shown}"
        validator = jsonschema.Draft202012Validator(
            schema_of(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        problems = [e.message for body in bodies for e in validator.iter_errors(body)]
        if opts.get("schema") == "invalid":
            assert problems, f"{name} body valid, but marked schema=invalid\n{shown}"
        elif expect not in ("rejected", "error"):
            assert not problems, f"{name} body not valid: {problems}\n{shown}"

    # The unit's status moved as the guide says.
    checks = split_checks(opts.get("after", ""))
    if handle is not None and (checks or changed):

        def done(status: dict[str, Any]) -> bool:
            moved = changed is None or lookup(status, changed) != before
            return moved and all(holds(status, c) for c in checks)

        status = await status_json(handle)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while not done(status) and loop.time() < deadline:
            await asyncio.sleep(0.1)
            status = await status_json(handle)
        failed = [c for c in checks if not holds(status, c)]
        assert not failed, f"status after the example: {failed} do not hold\n{status}\n{shown}"
        if changed:
            assert lookup(status, changed) != before, f"{changed} did not change\n{shown}"


def test_every_example_names_a_real_call() -> None:
    """Each runnable block calls Temporal on a handler that exists (or only the codec)."""
    names = handler_names()
    for block in GUIDE_DOC.runnable:
        for kind, name in calls_in(block.text):
            assert name in names[kind], f"line {block.line}: {kind} {name} does not exist"
