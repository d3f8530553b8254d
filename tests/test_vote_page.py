"""The voting page as a rater sees it on a phone (390x844, headless Chromium): a QR slip's
address opens the ballot, the rater fills it in and submits, and reads a receipt; the unit
counts the sheet once its rater group's pool lets go. The same slip again shows 已提交 with
the same receipt; a slip a ballot system already spent, and any slip once the evaluation is
closed, show a page that says so; the receipts page says 测评尚未结束 before the close and
then 已计入 or 未找到 for a typed code. Chromium is the Debian package (`make system-deps`):
without it the test is skipped, saying so."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.client import Client

from kaohe.ballot_intake import BallotIntake, submission_key
from kaohe.ingest.ballot_io import TokenSource
from kaohe.sim.simulate import sheet_for, wait_for_status
from tests.conftest import ApiStack
from tests.test_vote_api import BALLOTS, RECEIPT, in_evaluation, reviewed_unit
from workflows.unit import UnitAssessment

pytestmark = pytest.mark.timeout(240)

PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
UI_TIMEOUT_MS = 15_000


def chromium() -> str:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed: `make system-deps` installs the Debian package")


@pytest.fixture
async def phone() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> Page:
    context = await browser.new_context(
        viewport=PHONE,
        device_scale_factor=3,
        is_mobile=True,
        has_touch=True,
        locale="zh-CN",
        user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
    )
    # Nothing leaves the machine.
    await context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda r: r.abort())
    page = await context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    return page


async def fits_the_phone(page: Page) -> None:
    """No sideways scrolling at a phone's width."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide"


async def fill_ballot(page: Page) -> int:
    """Chooses an option in every question (the second where there is one); their count."""
    questions = page.locator("fieldset.q")
    await expect(questions.first).to_be_visible()
    n = await questions.count()
    for i in range(n):
        labels = questions.nth(i).locator("label")
        await labels.nth(min(1, await labels.count() - 1)).tap()
    return n


async def test_a_rater_votes_on_a_phone_and_reads_the_receipt(
    api: ApiStack,
    client: Client,
    worker: str,
    pool: asyncpg.Pool,
    tokens: TokenSource,
    phone: Browser,
    tmp_path: Path,
) -> None:
    unit = reviewed_unit()
    handle, issued = await in_evaluation(client, worker, tokens, unit)
    first, second = issued["A"]  # group A plans two sheets: both in, its pool lets go

    # The slip's address: the ballot, with the unit's cadres and the 民主评议.
    page = await open_page(phone, f"{api.url}/vote#t={first}")
    await expect(page.locator("#ballot")).to_be_visible()
    await expect(page.locator("#unit-name")).to_have_text(unit.name)
    await expect(page.locator("#title")).to_have_text("测试考核")
    for cadre in unit.cadres:
        await expect(page.locator(f'[data-cadre="{cadre.cadre_id}"]')).to_contain_text(cadre.name)
    await expect(page.locator(".cadre").first).to_contain_text("主要负责人")
    await expect(page.get_by_text("选人用人工作民主评议")).to_be_visible()
    await expect(page.get_by_text("新提拔任用干部民主评议")).to_be_visible()
    await fits_the_phone(page)

    # Submitting half a ballot is stopped on the page, naming what is left.
    await page.locator("fieldset.q").first.locator("label").first.tap()
    await page.locator("#submit").tap()
    await expect(page.locator("#form-error")).to_contain_text("项未选择")
    assert await page.locator("fieldset.q.missing").count() > 0
    questions = await fill_ballot(page)
    team = len(BALLOTS.team_dimensions) + len(BALLOTS.focus_items) + 1
    assert questions >= team + 2 + len(BALLOTS.selection_questions) + 1
    await expect(page.locator("#progress")).to_have_text(f"已填 {questions} / {questions}")
    await page.screenshot(path=tmp_path / "ballot.png", full_page=True)
    await page.locator("#submit").tap()
    await expect(page.locator("#done")).to_be_visible()
    await expect(page.locator("#done-title")).to_have_text("提交成功")
    receipt = (await page.locator("#receipt").text_content() or "").strip()
    assert re.fullmatch(RECEIPT, receipt), receipt
    await fits_the_phone(page)
    await page.screenshot(path=tmp_path / "receipt.png")

    # Nothing counts while group A waits for its second sheet; then the pool lets go.
    status = await handle.query(UnitAssessment.status)
    assert status.evaluation.sheets == 0
    second_page = await open_page(phone, f"{api.url}/vote#t={second}")
    await fill_ballot(second_page)
    await second_page.locator("#submit").tap()
    await expect(second_page.locator("#done-title")).to_have_text("提交成功")
    status = await wait_for_status(handle, lambda s: s.evaluation.sheets == 2)
    async with pool.acquire() as conn:
        marks = await conn.fetch(
            "SELECT kind, target_id, item, option FROM ballot_marks WHERE workflow_id = $1 "
            "AND item = 'overall' AND kind = 'team'",
            handle.id,
        )
    assert [m["option"] for m in marks] == [BALLOTS.team_options[1]] * 2  # what was tapped

    # The same slip again: 已提交, the same receipt.
    again = await open_page(phone, f"{api.url}/vote#t={first}")
    await expect(again.locator("#done-title")).to_have_text("已提交")
    await expect(again.locator("#receipt")).to_have_text(receipt)

    # A slip a ballot system spent: a page that says so, no ballot.
    spent = issued["B"][0]
    await BallotIntake(client, pool).submit(
        handle.id,
        [sheet_for(spent, unit, BALLOTS, random.Random(5))],
        submission_key("batch", "ballots-sys", "b1"),
    )
    used = await open_page(phone, f"{api.url}/vote#t={spent}")
    await expect(used.locator("#message-title")).to_have_text("票码已使用")
    await expect(used.locator("#message-text")).to_contain_text("已被使用")
    await expect(used.locator("#ballot")).to_be_hidden()

    # An unknown slip, typed in by hand on the page without a fragment.
    typed = await open_page(phone, f"{api.url}/vote")
    await expect(typed.locator("#enter")).to_be_visible()
    await typed.locator("#enter-token").fill("Zz" * 11)
    await typed.get_by_role("button", name="打开票面").tap()
    await expect(typed.locator("#message-title")).to_have_text("票码无效")

    # Receipts: not yet.
    receipts_url = f"{api.url}/vote/receipts?campaign=test&unit={unit.unit_id}"
    early = await open_page(phone, receipts_url)
    await expect(early.locator("#message-title")).to_have_text("测评尚未结束")

    # The evaluation closes: a slip not used yet shows that, not a ballot.
    await handle.execute_update(
        UnitAssessment.close_evaluation,
        {"idempotency_key": "close", "actor": {"id": "group", "role": "assessment_group"}},
    )
    late = await open_page(phone, f"{api.url}/vote#t={issued['C'][0]}")
    await expect(late.locator("#message-title")).to_have_text("测评已结束")
    await expect(late.locator("#message-text")).to_contain_text("不再接受投票")
    await fits_the_phone(late)

    # The receipts page: the rater's code (typed loosely) is counted, another is not.
    check = await open_page(phone, receipts_url)
    await expect(check.locator("#count")).to_contain_text("共有 3 张票")
    await check.locator("#code").fill(receipt.lower().replace("-", " "))
    await check.get_by_role("button", name="查询").tap()
    await expect(check.locator("#result")).to_contain_text("已计入")
    await check.locator("#code").fill("AAAA-BBBB-CCCC")
    await check.get_by_role("button", name="查询").tap()
    await expect(check.locator("#result")).to_contain_text("未找到")
    await fits_the_phone(check)

    for p in (page, second_page, again, used, typed, early, late, check):
        # The refusals are answers (4xx) the console reports as failed loads; nothing else.
        assert not [e for e in p.errors if "status of 4" not in e], p.errors  # type: ignore[attr-defined]
