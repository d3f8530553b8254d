"""The Temporal Web UI as a person sees it, in headless Chromium, against `kaohe dev`.

`kaohe dev` runs as a subprocess (free ports, its own data dir), `kaohe demo` drives the
sample campaign (two units completed, `wjw` left in talks) and the simulated integrators put
a second campaign's units in evaluation and report-back. Then the browser checks that

* the workflow list filtered by `KaoheStage` shows exactly the units the visibility API finds
  in that stage;
* a unit's page shows its summary, its details and its current details (workflows/details.py);
* without a codec login, inputs are shown as history holds them, `binary/encrypted` (the
  UI's settings give the page nothing that decodes: kaohe's API answers 401);
* once the browser opened the one-time login link `kaohe dev` prints (the dev user, bound
  codec_decode), inputs, results and update arguments are shown decoded through kaohe's API
  (`/v1/codec`, by its HttpOnly cookie), with no failed codec request.

Screenshots are taken on every run; with KAOHE_UPDATE_SCREENSHOTS=1 (`make screenshots`) they
replace docs/screenshots/ when everything passed. Chromium is the
Debian package (`make system-deps`): the test fails, never skips, without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import psutil
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from activities.db import create_pool
from kaohe.client import connect
from kaohe.devstack.processes import die_with_parent
from kaohe.ingest.ballot_io import token_source
from kaohe.ingest.roster_io import load_policy
from kaohe.keys import talk_cipher
from kaohe.listening import free_port
from kaohe.settings import Settings
from kaohe.sim.simulate import drive_unit, talk_store, wait_started
from kaohe.starter import start_campaign
from schemas.common import Stage
from schemas.roster import Roster
from workflows.campaign import unit_workflow_id
from workflows.details import STAGE_LABELS
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(180)

KAOHE = str(Path(sys.executable).parent / "kaohe")
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "docs" / "screenshots"
# Wide enough for the event history table without a horizontal scrollbar.
VIEWPORT = {"width": 1680, "height": 1050}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 30_000
METADATA_QUERY = "__temporal_workflow_metadata"  # summary and current details
ENCRYPTED = ("binary/encrypted", base64.b64encode(b"binary/encrypted").decode())

# A second campaign whose units the simulated integrators leave in earlier stages.
EXTRA = Roster.model_validate(
    {
        "campaign_id": "ui-2026",
        "year": 2026,
        "title": "2026年度市管领导班子考核 (UI test)",
        "units": [
            {
                "unit_id": unit_id,
                "name": name,
                "contact": "办公室",
                "cadres": [
                    {"cadre_id": f"{unit_id}-01", "name": a, "position": "局长", "principal": True},
                    {"cadre_id": f"{unit_id}-02", "name": b, "position": "副局长"},
                ],
            }
            for unit_id, name, a, b in (
                ("czj", "市财政局", "陈刚", "林燕"),
                ("sfj", "市司法局", "黄磊", "何琳"),
                ("sjj", "市审计局", "罗斌", "梁红"),
            )
        ],
    }
)
EXTRA_STOPS = {"czj": Stage.EVALUATION, "sfj": Stage.EVALUATION, "sjj": Stage.REPORT_BACK}


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: `make system-deps` installs the Debian package")


# ---- the stack -------------------------------------------------------------------------------


@dataclass
class DevStack:
    data_dir: Path
    env: dict[str, str]
    proc: Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "kaohe-dev.log"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.env['KAOHE_TEMPORAL_UI_PORT']}"

    def settings(self) -> Settings:
        return Settings(
            _env_file=None,
            data_dir=self.data_dir,
            temporal_address=self.env["KAOHE_TEMPORAL_ADDRESS"],
            postgres_port=int(self.env["KAOHE_POSTGRES_PORT"]),
            temporal_ui_port=int(self.env["KAOHE_TEMPORAL_UI_PORT"]),
            api_port=int(self.env["KAOHE_API_PORT"]),
            database_url=None,
            payload_keys=None,
            payload_encryption=True,
        )

    def login_link(self) -> str:
        """The one-time codec login `kaohe dev` printed for its dev user."""
        found = re.findall(r"http://\S+/v1/codec/login\?ticket=\S+", self.log.read_text())
        assert found, f"kaohe dev printed no codec login link:\n{self.log_tail()}"
        return found[-1]

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def stack_env(data_dir: Path) -> dict[str, str]:
    # Nothing of the developer's KAOHE_* settings (a database, keys, ports) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAOHE_")}
    return {
        **env,
        "KAOHE_DATA_DIR": str(data_dir),
        "KAOHE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "KAOHE_TEMPORAL_UI_PORT": str(free_port()),
        "KAOHE_TEMPORAL_HTTP_PORT": str(free_port()),
        "KAOHE_POSTGRES_PORT": str(free_port()),
        "KAOHE_API_PORT": str(free_port()),
        "KAOHE_METRICS_PORT": "0",
        "KAOHE_LOG_FORMAT": "json",
    }


async def stop_process(proc: Process, grace: float) -> None:
    """SIGTERM (kaohe dev then stops its worker and API, Temporal and PostgreSQL), and
    SIGKILL to the whole tree after `grace` seconds."""
    if proc.returncode is not None:
        return
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    for child in tree:  # what outlived kaohe dev (its servers also die with it: PDEATHSIG)
        with contextlib.suppress(psutil.Error):
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()


@contextlib.asynccontextmanager
async def kaohe_dev(root: Path, attempts: int = 3) -> AsyncIterator[DevStack]:
    """`kaohe dev` on free ports; started again on new ports if one was taken meanwhile."""
    for attempt in range(attempts):
        stack = DevStack(root / f"dev-{attempt}", {})
        stack.data_dir.mkdir(parents=True)
        stack.env = stack_env(stack.data_dir)
        with stack.log.open("ab") as log:
            stack.proc = proc = await asyncio.create_subprocess_exec(
                KAOHE,
                "dev",
                env=stack.env,
                cwd=stack.data_dir,  # no .env of the checkout
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest reaches it through us only
                # Even if pytest is killed outright, kaohe dev stops (and stops its servers).
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        try:
            deadline = time.monotonic() + 60
            while "worker started" not in stack.log_tail() and proc.returncode is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"kaohe dev did not start in 60 s:\n{stack.log_tail()}")
                await asyncio.sleep(0.2)
            if proc.returncode is None:
                break
            if attempt == attempts - 1 or "in use" not in stack.log_tail():
                pytest.fail(f"kaohe dev exited ({proc.returncode}):\n{stack.log_tail()}")
        except BaseException:
            await stop_process(proc, 40)
            raise
    try:
        yield stack
    finally:
        assert stack.proc is not None
        await stop_process(stack.proc, 40)


async def run_cli(stack: DevStack, *args: str, seconds: float = 60) -> str:
    """`kaohe ARGS` against the stack; its output."""
    proc = await asyncio.create_subprocess_exec(
        KAOHE,
        *args,
        env={**stack.env, "COLUMNS": "200"},
        cwd=stack.data_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"kaohe {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


async def drive_extra_campaign(stack: DevStack, client: Client) -> None:
    """The simulated integrators stop each unit of EXTRA at its EXTRA_STOPS stage."""
    settings = stack.settings()
    pool = await create_pool(settings.effective_database_url, 1, 2)
    try:
        await start_campaign(client, EXTRA, settings.task_queue, load_policy(None, EXTRA.year))
        tokens = token_source(pool)
        talks = talk_store(pool, talk_cipher(settings))

        async def drive(unit_index: int) -> None:
            unit = EXTRA.units[unit_index]
            wf_id = unit_workflow_id(EXTRA.campaign_id, unit.unit_id)
            await wait_started(client, wf_id)
            status = await drive_unit(
                client, wf_id, unit, tokens=tokens, talks=talks, stop_at=EXTRA_STOPS[unit.unit_id]
            )
            assert status.stage == EXTRA_STOPS[unit.unit_id]

        await asyncio.gather(*(drive(i) for i in range(len(EXTRA.units))))
    finally:
        await pool.close()


async def in_stage(client: Client, stage: Stage) -> set[str]:
    query = f'KaoheStage="{stage.value}"'
    ids = {w.id async for w in client.list_workflows(query)}
    count = (await client.count_workflows(query)).count
    assert count == len(ids), f"count_workflows({query}) = {count}, list found {sorted(ids)}"
    return ids


async def settled(client: Client, expected: dict[Stage, set[str]]) -> None:
    """Visibility is eventually consistent: wait until list and count show the stages set
    just now (the stack is new: nothing else is there)."""
    deadline = time.monotonic() + 20
    while True:
        found = {stage: await in_stage(client, stage) for stage in expected}
        if found == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"visibility never showed {expected}: {found}")
        await asyncio.sleep(0.2)


# ---- the browser -----------------------------------------------------------------------------


@dataclass
class Watch:
    """What the page did besides rendering: codec calls, failed requests, console errors."""

    decode_ok: int = 0
    problems: list[str] = field(default_factory=list)

    def attach(self, page: Page, api_port: str) -> None:
        codec = f"127.0.0.1:{api_port}/v1/codec"

        def on_response(response) -> None:  # type: ignore[no-untyped-def]
            if codec in response.url:
                if response.status == 200:
                    self.decode_ok += response.url.split("?")[0].endswith("/decode")
                else:
                    self.problems.append(f"codec answered {response.status}: {response.url}")

        def on_failed(request) -> None:  # type: ignore[no-untyped-def]
            # Requests cut short by the next page.goto() are aborted: that is no failure.
            if request.url.startswith("http://127.0.0.1") and request.failure != "net::ERR_ABORTED":
                self.problems.append(f"request failed: {request.url} {request.failure}")

        def on_console(message) -> None:  # type: ignore[no-untyped-def]
            # What the UI says about the codec (a CORS refusal, a decoding error); not its
            # other noise, e.g. "Could not parse payload" for every empty binary/null one.
            text = message.text
            if any(k in text.lower() for k in ("cors", "codec", "decode", codec)):
                self.problems.append(f"console {message.type}: {text[:300]}")

        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("console", on_console)

    def report(self) -> str:
        return "\n".join(self.problems)

    def check(self) -> None:
        assert not self.problems, self.report()


async def poll(
    what: str, probe: Callable[[], Awaitable[object]], ok: Callable[[object], bool]
) -> object:
    """Expect-style: probe until ok(value) or UI_TIMEOUT_MS, then fail showing the last value."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        value = await probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the UI showed {value!r}")
        await asyncio.sleep(0.25)


async def shown_workflow_ids(page: Page) -> set[str]:
    hrefs = await page.locator(
        "tr[data-testid=workflows-summary-configurable-table-row] a[href*='/workflows/']"
    ).evaluate_all("links => links.map(a => a.getAttribute('href'))")
    return {unquote(urlsplit(h).path.split("/workflows/", 1)[1].split("/")[0]) for h in hrefs}


async def configure_columns(page: Page) -> None:
    """As a person would: the table shows Kaohe columns instead of the run id."""
    await page.get_by_test_id("workflows-summary-table-configuration-button").click()
    for name in ("Run ID", "Type", "End"):
        await page.get_by_test_id(f"orderable-list-item-{name}-remove-button").click()
    for name in ("KaoheCampaign", "KaoheUnit", "KaoheStage", "KaoheDeadline"):
        await page.get_by_test_id(f"orderable-list-item-{name}-add-button").click()
    await page.get_by_label("Close Workflows Table configuration").click()


async def list_by_stage(page: Page, ui: str, stage: Stage, expected: set[str]) -> None:
    query = quote(f'KaoheStage="{stage.value}"')
    await page.goto(f"{ui}/namespaces/default/workflows?query={query}")
    await expect(page.get_by_test_id("workflow-count")).to_have_text(
        str(len(expected)), timeout=UI_TIMEOUT_MS
    )
    await poll(
        f'the list for KaoheStage="{stage.value}" (expected {sorted(expected)})',
        lambda: shown_workflow_ids(page),
        lambda ids: ids == expected,
    )
    # The filter is applied as a filter, not only typed into the URL.
    await expect(page.get_by_role("button", name=f'KaoheStage = "{stage.value}"')).to_be_visible()


def markdown_texts(markdown: str) -> list[str]:
    """The texts a markdown document shows: each line without its markup, each table cell."""
    texts = []
    for line in markdown.splitlines():
        line = line.strip()
        if not line or re.fullmatch(r"\|(\s*-+\s*\|)+", line):
            continue
        if line.startswith("|"):
            texts += [cell.strip() for cell in line.strip("|").split("|") if cell.strip()]
        else:
            texts.append(re.sub(r"^#+\s*|\*\*|~~|`", "", line))
    return [" ".join(t.split()) for t in texts]


async def frame_text(page: Page, frame_id: str) -> str:
    """The text of one of the UI's markdown frames; its renderer sets 4/6 as a fraction (4⁄6)."""
    frame = page.frame_locator(f"#{frame_id}")
    await expect(frame.locator("body")).not_to_be_empty(timeout=UI_TIMEOUT_MS)
    text = await frame.locator("body").inner_text()
    return " ".join(text.replace("\u2044", "/").split())


async def main_text(page: Page) -> str:
    return await page.locator("main").inner_text()


async def scroll_below_sticky(page: Page, row: Locator, above: int = 2) -> None:
    """Scrolls the UI's content pane (not the window) so `row`, with `above` rows before it,
    sits just under the sticky "Event History" bar."""
    bar = page.get_by_role("heading", name="Event History")
    await row.evaluate(
        """(el, [bar, above]) => {
            for (let i = 0; i < above && el.previousElementSibling; i++) {
                el = el.previousElementSibling;
            }
            const pane = document.querySelector('#content-wrapper');
            const sticky = bar.closest('.sticky') || bar;
            pane.scrollTop += el.getBoundingClientRect().top - pane.getBoundingClientRect().top;
            // Now the bar is stuck at the top, over the row: uncover it.
            const hidden = sticky.getBoundingClientRect().bottom - el.getBoundingClientRect().top;
            pane.scrollTop -= hidden;
            pane.scrollLeft = 0;
        }""",
        [await bar.element_handle(), above],
    )


async def screenshot(page: Page, path: Path) -> None:
    await page.evaluate("document.fonts.ready.then(() => true)")
    await page.screenshot(path=str(path))


async def wait_ui(ui: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{ui}/api/v1/settings") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                pytest.fail(f"the Temporal UI did not answer at {ui}")
            await asyncio.sleep(0.2)


# ---- the test --------------------------------------------------------------------------------


@pytest.fixture
def data_root() -> Iterator[Path]:
    """Not under pytest's tmp_path: a concurrent pytest session resets pytest-of-<user> to
    0700, and PostgreSQL (run as another user when we are root) must traverse the path."""
    root = Path(tempfile.mkdtemp(prefix="kaohe-ui-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_temporal_ui_shows_stages_details_and_decoded_payloads(
    data_root: Path, tmp_path: Path
) -> None:
    executable = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with kaohe_dev(data_root) as stack:
        await run_cli(stack, "demo", "--pace", "0.1", seconds=90)
        client = await connect(stack.settings())
        await drive_extra_campaign(stack, client)
        demo_wjw = unit_workflow_id("demo-2026", "wjw")
        demo_fgw = unit_workflow_id("demo-2026", "fgw")
        extra = {u.unit_id: unit_workflow_id(EXTRA.campaign_id, u.unit_id) for u in EXTRA.units}
        await settled(
            client,
            {
                Stage.EVALUATION: {extra["czj"], extra["sfj"]},
                Stage.TALKS: {demo_wjw},
                Stage.REPORT_BACK: {extra["sjj"]},
                Stage.COMPLETED: {demo_fgw, unit_workflow_id("demo-2026", "jyj")},
            },
        )
        expected = {stage: await in_stage(client, stage) for stage in Stage}

        # History holds only ciphertext: whatever plaintext the UI shows came via the codec.
        raw = await Client.connect(stack.env["KAOHE_TEMPORAL_ADDRESS"])
        started = (await raw.get_workflow_handle(demo_wjw).fetch_history()).events[0]
        payload = started.workflow_execution_started_event_attributes.input.payloads[0]
        assert payload.metadata["encoding"] == b"binary/encrypted"
        assert "市卫生健康委员会".encode() not in payload.data

        wjw = client.get_workflow_handle_for(UnitAssessment.run, demo_wjw)
        wjw_described = await wjw.describe()
        # What workflows/details.py rendered in the workflow, as the UI gets it.
        metadata = await wjw.query(METADATA_QUERY, result_type=WorkflowMetadata)
        wjw_details = metadata.current_details
        assert "个别谈话 talks" in wjw_details and "| Talks | 0/" in wjw_details
        fgw_run = (await client.get_workflow_handle(demo_fgw).describe()).run_id

        await wait_ui(stack.ui)
        watch = Watch()
        base = f"{stack.ui}/namespaces/default/workflows/{demo_wjw}/{wjw_described.run_id}"
        async with async_playwright() as pw:
            browser: Browser = await pw.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )

            async def new_context():  # type: ignore[no-untyped-def]
                context = await browser.new_context(
                    viewport=VIEWPORT, locale="en-US", timezone_id="Asia/Shanghai"
                )
                # Nothing leaves the machine (the UI's news feed, analytics).
                await context.route(
                    re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort()
                )
                return context

            try:
                # 0) Without the codec login the page has nothing that decodes: kaohe's API
                # refuses, and the input is shown as history holds it.
                anonymous = await new_context()
                stranger = await anonymous.new_page()
                answers: list[int] = []
                stranger.on(
                    "response",
                    lambda r: answers.append(r.status) if "/v1/codec/decode" in r.url else None,
                )
                await stranger.goto(f"{base}/timeline")
                await poll(
                    "the input of wjw, still encrypted",
                    lambda: main_text(stranger),
                    lambda text: any(e in str(text) for e in ENCRYPTED),
                )
                assert "市卫生健康委员会" not in await main_text(stranger)
                assert answers and set(answers) == {401}, answers
                await anonymous.close()

                # The developer opens the link kaohe dev printed: kaohe's API sets its cookie
                # and sends the browser on to the UI.
                context = await new_context()
                page = await context.new_page()
                await page.goto(stack.login_link())
                assert page.url.startswith(stack.ui), page.url
                cookies = await context.cookies()
                assert [c["httpOnly"] for c in cookies if c["name"] == "kaohe_codec"] == [True]
                watch.attach(page, stack.env["KAOHE_API_PORT"])

                # a) the list filtered by stage: exactly the units visibility finds there.
                await list_by_stage(page, stack.ui, Stage.TALKS, expected[Stage.TALKS])
                await expect(page.get_by_label("Codec Server is configured")).to_be_attached()
                await configure_columns(page)
                for stage in (Stage.REPORT_BACK, Stage.COMPLETED, Stage.EVALUATION):
                    await list_by_stage(page, stack.ui, stage, expected[stage])
                rows = page.get_by_test_id("workflows-summary-configurable-table-row")
                for row in await rows.all():
                    await expect(row).to_contain_text("evaluation")
                    await expect(row).to_contain_text("ui-2026")
                await screenshot(page, shots / "workflow-list-by-stage.png")

                # b) a unit's summary, details and current details (workflows/details.py).
                await page.goto(f"{base}/user-metadata")
                summary = await frame_text(page, "user-metadata-summary")
                assert summary == await wjw_described.static_summary()
                details = await frame_text(page, "user-metadata-details")
                for text in markdown_texts(await wjw_described.static_details() or ""):
                    assert text in details, f"details: {text!r} not in {details!r}"
                current = await poll(
                    "current details",
                    lambda: frame_text(page, "user-metadata-current-details"),
                    lambda text: all(t in str(text) for t in markdown_texts(wjw_details)),
                )
                assert f"Stage 4/6: {STAGE_LABELS[Stage.TALKS]}" in str(current)
                trail = page.frame_locator("#user-metadata-current-details")
                await expect(trail.locator("del")).to_have_text(
                    ["notice", "report_back", "evaluation"]
                )
                # Fully loaded: the tab bar's counts come from requests of their own.
                # (The Workers count shows pollers seen lately: under load it can lag.)
                history_tab = page.get_by_role("tab", name=re.compile(r"Event History\s*\d+"))
                await expect(history_tab).to_be_visible(timeout=20_000)
                await screenshot(page, shots / "unit-summary-details.png")

                # ... its input decoded (the running unit has no result yet).
                await page.goto(f"{base}/timeline")
                await poll(
                    "the decoded input of wjw",
                    lambda: main_text(page),
                    lambda text: '"name": "市卫生健康委员会"' in str(text),
                )
                shown = await main_text(page)
                assert not [e for e in ENCRYPTED if e in shown], shown

                # c) a completed unit's history: input, result and update arguments decoded.
                fgw = f"{stack.ui}/namespaces/default/workflows/{demo_fgw}/{fgw_run}/history"
                await page.goto(fgw)
                await poll(
                    "the decoded input and result of fgw",
                    lambda: main_text(page),
                    lambda text: (
                        '"unit_name": "市发展和改革委员会"' in str(text)
                        and '"stage": "completed"' in str(text)
                        and '"name": "张明"' in str(text)
                    ),
                )
                accepted = (
                    page.get_by_test_id("event-summary-row")
                    .filter(has_text="Workflow Execution Update Accepted")
                    .first
                )
                await accepted.click()
                await poll(
                    "the decoded arguments of an update",
                    lambda: main_text(page),
                    # The update's decoded body (its first lines: kaohe's assertion header
                    # comes first and the UI folds the rest).
                    lambda text: (
                        re.search(r'"idempotency_key": "fgw-[^"]+",\s*"actor"', str(text))
                        is not None
                    ),
                )
                shown = await main_text(page)
                assert not [e for e in ENCRYPTED if e in shown], shown
                await scroll_below_sticky(page, accepted)
                await screenshot(page, shots / "unit-history-decoded.png")

                assert watch.decode_ok > 0, "the UI never asked kaohe's API to decode"
                watch.check()
            except Exception as err:
                if not watch.problems:
                    raise
                # Why the UI showed less than it should: e.g. a codec request refused by CORS.
                pytest.fail(f"{err}\n\nthe page reported:\n{watch.report()}")
            finally:
                await browser.close()

    # Everything passed. `make screenshots` makes them the committed ones; a plain test run
    # leaves them in its temp dir (they change every run: times, run ids).
    if os.environ.get("KAOHE_UPDATE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for shot in sorted(shots.iterdir()):
        partial = SCREENSHOTS / f".{shot.name}.tmp"
        shutil.copyfile(shot, partial)
        os.replace(partial, SCREENSHOTS / shot.name)
