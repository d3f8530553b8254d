"""docs/integrator-guide.md, run: every `sh` example with `curl` against kaohe's API (the
`api` fixture, in this process on the session's stack), on a unit brought to the stage it
needs, with the guide's credentials bound on it; every update and query has a section and a
tested example, every signal a section; the shipped JSON Schemas are `kaohe schema export`'s
and the examples' bodies (with the actor their credentials give) and answers validate
against them; the Python example runs.

Conventions of the guide (see its top):

* `<!-- prelude -->` before a ```sh block: shell helpers prepended to every example run;
* `<!-- run: given=STATE expect=WHAT [http=N] [after="PATH OP VALUE; ..."] [changed=PATH]
  [schema=invalid] [grant="PRINCIPAL=ROLE ..."] -->` before a ```sh block: run it on a unit
  in STATE (see GIVENS), the principals of CREDENTIALS bound on it (and `grant`'s extra
  roles on the unit), expecting WHAT (see EXPECTS) of its last action or read; `after`
  checks the unit's `status` once it has run (OP `=`, `!=`, or `~` for "its JSON
  contains"), `changed` that a status field moved; the bodies of actions must fit their JSON
  Schema with the caller's actor (but for rejections), or must not with `schema=invalid`;
  a line `# -> PATTERN` in the block is output it must print (`…` matches anything);
* `<!-- python -->` before a ```python block: the Python example, run on a unit in `notice`;
* `<!-- internal -->` under a section's heading: a signal between the workflows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import jsonschema
import jwt
import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle

import kaohe
from domain.actions import ACTIONS
from kaohe.access import api_keys
from kaohe.access.bindings import Binding, grant_many
from kaohe.cli.main import schema_export
from kaohe.ingest.ballot_csv import write_ballot_csv
from kaohe.ingest.ballot_io import import_ballots
from kaohe.ingest.roster_io import load_policy, load_roster
from kaohe.sim.simulate import (
    APPROVER,
    DEPARTMENT,
    UNIT_CONTACT,
    TalkStore,
    TokenSource,
    drive_unit,
    execute,
    proposal_for,
    sheet_for,
    status_of,
    talk_by_reference,
    wait_for_status,
    wait_started,
)
from kaohe.starter import start_campaign
from schemas.common import CadreGrade, Role, Stage
from schemas.messages import ApproveGrades, PauseUnit, RaiseObjection
from schemas.policy import DemoClock, Policy
from schemas.roster import Roster, UnitSpec
from schemas.talks import Talk
from tests.conftest import ApiStack, Stack
from tests.helpers import SMALL_GROUPS, start_unit
from workflows.campaign import AssessmentCampaign, unit_workflow_id
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


# What kaohe's API reads itself, not through a workflow's query: a talk's content (talk_store).
API_READS = {"talk"}
# What it takes itself, never sending it to a workflow: ballot sheets (kaohe/ballot_intake.py).
API_INTAKES = {"ballots"}


def handler_names() -> dict[str, set[str]]:
    """kind ('update', 'signal', 'query', 'read') -> names, over both workflows and the
    API's own reads."""
    return {
        "update": set(UNIT.updates) | set(CAMPAIGN.updates),
        "signal": set(UNIT.signals) | set(CAMPAIGN.signals),
        "query": set(UNIT.queries) | set(CAMPAIGN.queries),
        "read": set(API_READS),
        "intake": set(API_INTAKES),
    }


# kaohe's API paths -> the handler each one reaches: an action is the unit's update of that
# name, a talk the unit's record_talk (the API stores its content and sends the reference),
# the calibration decisions the campaign's update, the reads their queries, a talk's content
# the API's own read.
API_PATH = re.compile(
    r"/v1/campaigns/[^/\s\"?]+/(?:units/[^/\s\"?]+/)?"
    r"(actions/(\w+)|calibration/decisions|status|progress|calibration"
    r"|talks/[^/\s\"?]+|talks|ballots)(?=[/\s\"?]|$)"
)
TALKS_PATH = re.compile(r"/units/[^/]+/talks$")


def handler_of(found: re.Match[str]) -> tuple[str, str]:
    what, action = found.group(1), found.group(2)
    if action:
        return ("update", action)
    if what == "calibration/decisions":
        return ("update", "decide_calibration")
    if what == "talks":
        return ("update", "record_talk")
    if what.startswith("talks/"):
        return ("read", "talk")
    if what == "ballots":
        return ("intake", "ballots")
    return ("query", what)


def calls_in(text: str) -> set[tuple[str, str]]:
    """(kind, name) of each handler an API call written in a block reaches."""
    return {handler_of(m) for m in API_PATH.finditer(text)}


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
            elif kind != "signal" and (name, (kind, name)) not in tested:
                missing.append(f"{kind} {name}: no tested curl example in its section")
    assert not missing, (
        "docs/integrator-guide.md does not cover every handler of UnitAssessment and "
        "AssessmentCampaign:\n" + "\n".join(missing)
    )
    # Internal is for the signals the workflows send each other, never the public contract;
    # the other signals are the unit's actions, in the action's own section.
    public = set(ACTIONS) | set(CAMPAIGN.updates) | handler_names()["query"]
    assert not internal & public, f"public handlers marked internal: {internal & public}"
    assert internal <= handler_names()["signal"], internal - handler_names()["signal"]
    assert handler_names()["signal"] - internal <= set(ACTIONS)
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


def test_the_roles_table_is_the_transition_table() -> None:
    """The guide's table of who may send what is domain/actions.py's."""
    rows = re.findall(
        r"^\| (`\w+`(?:, `\w+`)*)(?: \(campaign\))? \| (.*) \|$",
        GUIDE.read_text(encoding="utf-8"),
        re.M,
    )
    table: dict[str, set[str]] = {}
    for actions, roles in rows:
        for action in re.findall(r"`(\w+)`", actions):
            table[action] = set(re.findall(r"`(\w+)`", roles))
    for name, rule in ACTIONS.items():
        assert table.get(name) == {r.value for r in rule.roles}, f"{name}: {table.get(name)}"
    assert table.get("decide_calibration") == {"department"}


def test_run_markers_are_well_formed() -> None:
    assert len(GUIDE_DOC.marked("prelude")) == 1
    for block in GUIDE_DOC.runnable:
        where = f"line {block.line}"
        assert block.lang == "sh", where
        assert block.options.get("given") in GIVENS, f"{where}: given= one of {sorted(GIVENS)}"
        assert block.options.get("expect") in EXPECTS, f"{where}: expect= one of {EXPECTS}"
        allowed = {"given", "expect", "http", "after", "changed", "schema", "grant"}
        assert set(block.options) <= allowed, where
        assert block.options.get("schema", "invalid") == "invalid", where
        for check in split_checks(block.options.get("after", "")):
            assert CHECK.match(check), f"{where}: after check {check!r}"
        for extra in extra_grants(block):
            assert extra.principal in {p for p, _, _ in CREDENTIALS.values()}, where
        for name in re.findall(r"\$\{?((?:TOKEN|API_KEY|OA_API_KEY)\w*)", block.text):
            assert name in CREDENTIALS, f"{where}: ${name} is not one of the guide's credentials"


def test_every_example_names_a_real_call() -> None:
    """Each runnable block calls the API on a handler that exists."""
    names = handler_names()
    for block in GUIDE_DOC.runnable:
        assert calls_in(block.text), f"line {block.line}: no call to kaohe's API"
        for kind, name in calls_in(block.text):
            assert name in names[kind], f"line {block.line}: {kind} {name} does not exist"


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


# ---- the credentials the examples use --------------------------------------------------------

# The guide's variable -> (principal, role on the example's unit, cadre it is). Variables
# TOKEN_* are bearer tokens of the session's issuer; the others API keys of systems.
CREDENTIALS: dict[str, tuple[str, Role, str]] = {
    "TOKEN_UNIT": ("jyj-office", Role.UNIT, ""),
    "TOKEN_GROUP": ("group-leader", Role.ASSESSMENT_GROUP, ""),
    "TOKEN_APPROVER": ("org-approver", Role.APPROVER, ""),
    "TOKEN_DEPARTMENT": ("org-department", Role.DEPARTMENT, ""),
    "TOKEN_JYJ_01": ("jyj-01", Role.CADRE, "jyj-01"),
    "TOKEN_JYJ_02": ("jyj-02", Role.CADRE, "jyj-02"),
    "API_KEY": ("ballot-system", Role.INTEGRATOR, ""),
    "OA_API_KEY": ("oa-system", Role.INTEGRATOR, ""),
}


def extra_grants(block: Block) -> list[Binding]:
    """A marker's `grant="PRINCIPAL=ROLE ..."`: more roles on the unit (campaign filled in)."""
    out = []
    for item in block.options.get("grant", "").split():
        principal, _, role = item.partition("=")
        out.append(Binding("", principal, Role(role), "jyj"))
    return out


@dataclass
class Credentials:
    env: dict[str, str]
    principal_of_key: dict[str, str]
    bindings: list[Binding]

    def principal(self, headers: list[str]) -> str | None:
        for header in headers:
            name, _, value = header.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "authorization" and value.lower().startswith("bearer "):
                claims = jwt.decode(value[7:], options={"verify_signature": False})
                return str(claims["sub"])
            if name == "x-api-key":
                return self.principal_of_key.get(value)
        return None

    def actor(self, principal: str, roles: set[Role], as_role: str | None) -> dict[str, str]:
        """The actor the API gives this principal for an action of these roles."""
        mine = sorted(
            (b for b in self.bindings if b.principal == principal), key=lambda b: b.role.value
        )
        fitting = [b for b in mine if b.role in roles and as_role in (None, b.role.value)]
        [chosen, *_] = fitting or mine
        return chosen.actor().model_dump(mode="json")


async def bind_credentials(ctx: Context, block: Block) -> Credentials:
    """The guide's principals bound on the example's unit, each with its token or key."""
    env: dict[str, str] = {}
    keys: dict[str, str] = {}
    bindings: list[Binding] = []
    async with ctx.pool.acquire() as conn:
        for name, (principal, role, cadre) in CREDENTIALS.items():
            unit = "" if role == Role.DEPARTMENT else ctx.unit.unit_id
            bindings.append(Binding(ctx.campaign_id, principal, role, unit, cadre))
            if name.startswith("TOKEN_"):
                env[name] = ctx.api.issuer.mint(principal)
            else:
                env[name] = await api_keys.create_key(conn, principal, "test")
                keys[env[name]] = principal
        for extra in extra_grants(block):
            bindings.append(Binding(ctx.campaign_id, extra.principal, extra.role, extra.unit_id))
        await grant_many(conn, bindings, "test")
    return Credentials(env, keys, bindings)


# ---- the Python example ----------------------------------------------------------------------


async def test_python_example_runs(context: Context, bin_dir: Path, tmp_path: Path) -> None:
    [block] = GUIDE_DOC.marked("python")
    handle = await started(context)
    credentials = await bind_credentials(context, block)
    script = tmp_path / "example.py"
    script.write_text(block.text, encoding="utf-8")
    env = {**environment(bin_dir, context, tmp_path / "curl.jsonl"), **credentials.env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["report_back"], (out.decode(), err.decode())
    status = await status_json(handle)
    assert status["stage"] == "report_back" and status["acknowledgements"] == 1


# ---- running the curl examples ---------------------------------------------------------------

CURL_WRAPPER = r'''#!{python}
"""curl, recording each request and answer (JSON lines in $CURL_LOG) for the test."""
import json, os, subprocess, sys, tempfile

DATA = {{"-d", "--data", "--data-binary", "--data-ascii"}}
args, body, feed, method, headers = sys.argv[1:], None, None, None, []
for i, arg in enumerate(args[:-1]):
    value = args[i + 1]
    if arg in ("-X", "--request"):
        method = value
    elif arg in ("-H", "--header"):
        headers.append(value)
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
with tempfile.NamedTemporaryFile(suffix=".headers") as dump:
    done = subprocess.run(
        [{curl!r}, *args, "-D", dump.name],
        input=feed,
        stdin=None if feed is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    lines = open(dump.name, "rb").read().decode("latin-1").splitlines()
statuses = [int(line.split()[1]) for line in lines if line.startswith("HTTP/")]
answer_headers = {{
    name.strip().lower(): value.strip()
    for name, sep, value in (line.partition(":") for line in lines)
    if sep
}}
sys.stdout.buffer.write(done.stdout)
sys.stdout.flush()
with open(os.environ["CURL_LOG"], "a", encoding="utf-8") as log:
    record = {{
        "url": url,
        "method": method or ("POST" if body is not None else "GET"),
        "headers": headers,
        "body": body,
        "status": statuses[-1] if statuses else None,
        "answer": done.stdout.decode("utf-8", "replace"),
        "content_type": answer_headers.get("content-type"),
        "location": answer_headers.get("location"),
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
    talks: TalkStore
    tmp_path: Path
    api: ApiStack
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
        ctx.client,
        handle.id,
        ctx.unit,
        tokens=ctx.tokens,
        talks=ctx.talks,
        policy=policy,
        stop_at=stop_at,
    )
    return handle


def unit_env(handle: WorkflowHandle, **extra: str) -> Given:
    return Given(dict(extra), handle)


async def given_notice(ctx: Context) -> Given:
    return unit_env(await started(ctx))


async def given_report_back(ctx: Context) -> Given:
    return unit_env(await driven(ctx, Stage.REPORT_BACK))


async def given_evaluation(ctx: Context) -> Given:
    handle = await driven(ctx, Stage.EVALUATION)
    issued = await ctx.tokens(handle.id)
    return unit_env(handle, BALLOT_TOKEN=issued["A"][0], BALLOT_TOKEN2=issued["A"][1])


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


async def given_talk_recorded(ctx: Context) -> Given:
    """Talks, with one talk recorded (t0, stored by the group as the API stores it)."""
    handle = await driven(ctx, Stage.TALKS)
    talk = Talk(
        idempotency_key="talk-t0",
        talk_id="t0",
        interviewer="考核组 王组长",
        interviewee_role="中层干部",
        talk_date=dt.date(2026, 12, 15),
        content="谈话内容(保密) #0",
    )
    stored = await ctx.talks(handle.id, talk)
    await execute(handle, UnitAssessment.record_talk, talk_by_reference(talk, stored))
    return unit_env(handle, TALK_REF=stored.talk_ref)


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
        ctx.client,
        workflow_id,
        ctx.unit,
        tokens=ctx.tokens,
        talks=ctx.talks,
        policy=policy,
        stop_at=Stage.GRADING,
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
    return unit_env(handle)


GIVENS: dict[str, Callable[[Context], Any]] = {
    "notice": given_notice,
    "report_back": given_report_back,
    "evaluation": given_evaluation,
    "imported": given_imported,
    "talks": given_talks,
    "talk_recorded": given_talk_recorded,
    "grading": given_grading,
    "proposed": given_proposed,
    "publicity": given_publicity,
    "objection": given_objection,
    "result_use": given_result_use,
    "paused": given_paused,
    "held": given_held,
}
# What the block's last action or read answers: an ActionResult (accepted; duplicate true),
# a problem (status `http`, 409 unless given), 202 with a Location, or a read's JSON.
EXPECTS = ("accepted", "duplicate", "rejected", "queued", "answered")

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


# The schema of each read's answer.
READ_SCHEMAS = {
    "status": "status",
    "progress": "campaign_progress",
    "calibration": "calibration",
    "talk": "talk_view",
}


@dataclass
class Call:
    url: str
    method: str
    headers: list[str]
    body: str | None
    status: int | None
    answer: str
    content_type: str | None
    location: str | None

    @property
    def handler(self) -> tuple[str, str] | None:
        """The handler an action or a read reaches; None for a queued request's GET."""
        found = API_PATH.search(urlsplit(self.url).path + " ")
        return handler_of(found) if found else None

    @property
    def is_talk(self) -> bool:
        """A talk sent to POST .../talks: its body is a talk, its answer a TalkRecorded."""
        return TALKS_PATH.search(urlsplit(self.url).path) is not None

    @property
    def as_role(self) -> str | None:
        return parse_qs(urlsplit(self.url).query).get("as", [None])[0]

    def json_body(self) -> Any:
        return json.loads(self.body or "null")

    def json_answer(self) -> Any:
        return json.loads(self.answer)


def validator_of(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        schema_of(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@pytest.fixture
async def context(
    stack: Stack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    talks: TalkStore,
    tmp_path: Path,
    api: ApiStack,
) -> Context:
    return Context(stack, client, worker, pool, tokens, talks, tmp_path, api)


def environment(bin_dir: Path, ctx: Context, log: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "CURL_LOG": str(log),
        "KAOHE_API": ctx.api.url,
        "CAMPAIGN": ctx.campaign_id,
        "UNIT": ctx.unit.unit_id,
        "PYTHONIOENCODING": "utf-8",
    }


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    return [Call(**json.loads(line)) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("block", GUIDE_DOC.runnable, ids=block_id)
async def test_example_runs_as_the_guide_says(
    block: Block, context: Context, bin_dir: Path
) -> None:
    opts = block.options
    where = f"docs/integrator-guide.md line {block.line} ({block_id(block)})"
    given = await GIVENS[opts["given"]](context)
    credentials = await bind_credentials(context, block)
    handle = given.handle
    changed = opts.get("changed")
    before = lookup(await status_json(handle), changed) if handle and changed else None

    log = context.tmp_path / "curl.jsonl"
    env = {**environment(bin_dir, context, log), **credentials.env, **given.env}
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
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{shown}"

    # The output the guide shows.
    output = out.splitlines() + err.splitlines()
    missing = missing_lines(block.expected_lines, output)
    assert not missing, f"expected output not printed: {missing}\n{shown}"

    # The last action or read answered as the guide says; every other call succeeded.
    expect = opts["expect"]
    targets = [c for c in calls if c.handler is not None]
    assert targets, f"no call to kaohe's API\n{shown}"
    last = targets[-1]
    for call in calls:
        if call is not last:
            assert call.status is not None and call.status < 300, f"{call.url}\n{shown}"
    kind, name = last.handler or ("", "")
    if expect in ("accepted", "duplicate") and kind == "intake":
        assert last.status == 200, shown
        result = last.json_answer()
        assert not list(validator_of("sheets_taken").iter_errors(result)), shown
        assert result["receipts"] and result["duplicate"] is (expect == "duplicate"), shown
        body = last.json_body()
        assert not list(validator_of("sheets_submission").iter_errors(body)), shown
    elif expect in ("accepted", "duplicate"):
        assert last.status == 200 and kind == "update", shown
        result = last.json_answer()
        answer_schema = "talk_recorded" if last.is_talk else "action_result"
        assert not list(validator_of(answer_schema).iter_errors(result)), shown
        assert result["accepted"] is True, shown
        assert result["duplicate"] is (expect == "duplicate"), f"{result}\n{shown}"
    elif expect == "rejected":
        status = int(opts.get("http", 409))
        assert last.status == status, f"HTTP {last.status}, not {status}\n{shown}"
        assert (last.content_type or "").startswith("application/problem+json"), shown
        problem = last.json_answer()
        assert {"type", "title", "status", "detail"} <= problem.keys(), shown
        assert problem["status"] == status, shown
    elif expect == "queued":
        assert last.status == 202 and kind == "update", f"HTTP {last.status}\n{shown}"
        assert re.fullmatch(r"/v1/requests/\w+", last.location or ""), shown
    elif expect == "answered":
        assert last.status == 200 and kind in ("query", "read"), shown
        problems = [
            e.message for e in validator_of(READ_SCHEMAS[name]).iter_errors(last.json_answer())
        ]
        assert not problems, f"{name} answer not valid: {problems}\n{shown}"

    # Every action's body is its schema's, with the actor the caller's binding gives (and
    # without `actor` of its own).
    for call in calls:
        if call.handler is None or call.handler[0] != "update":
            continue
        name = call.handler[1]
        body = call.json_body()
        if expect == "rejected":
            continue
        assert isinstance(body, dict) and "actor" not in body, f"{name}: actor in the body"
        principal = credentials.principal(call.headers)
        assert principal is not None, f"{name}: sent without the guide's credentials\n{shown}"
        rule = ACTIONS.get(name)
        roles = set(rule.roles) if rule else {Role.DEPARTMENT}
        actor = credentials.actor(principal, roles, call.as_role)
        if call.is_talk:  # the talk as sent; the unit gets a record_talk without its content
            problems = [e.message for e in validator_of("talk").iter_errors(body)]
        else:
            problems = [e.message for e in validator_of(name).iter_errors({**body, "actor": actor})]
        if opts.get("schema") == "invalid":
            assert problems, f"{name} body valid, but marked schema=invalid\n{shown}"
        else:
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
