"""QR slips of ballot tokens (`kaohe tokens issue --pdf`): one decodable code per token, holding
the voting page's address with the token in the fragment, each rater group on pages of its own.

The codes are read back off rendered pages (pypdfium2 renders, zxing-cpp decodes), not
compared with what segno was asked to draw."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pypdfium2
import zxingcpp
from pypdf import PdfReader
from temporalio.client import Client

from kaohe.ingest.ballot_io import GroupTokens, IssuedTokens
from kaohe.ingest.ballot_slips import SLIPS_PER_PAGE, render_slips, spaced
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit

VOTE_URL = "https://kaohe.example.cn/vote"


def codes_per_page(pdf: bytes) -> list[list[str]]:
    doc = pypdfium2.PdfDocument(pdf)
    try:
        return [
            [r.text for r in zxingcpp.read_barcodes(page.render(scale=2).to_pil())] for page in doc
        ]
    finally:
        doc.close()


def issued(sizes: dict[str, int]) -> IssuedTokens:
    tokens = {
        g: [f"{g}tok{i:03d}-{uuid.uuid4().hex[:12]}" for i in range(n)] for g, n in sizes.items()
    }
    groups = [GroupTokens(g, f"{g}组", n, 0, n) for g, n in sizes.items()]
    return IssuedTokens("kaohe-c-u", groups, tokens)


def test_one_code_per_token_each_group_on_its_own_pages() -> None:
    batch = issued({"A": 3, "B": SLIPS_PER_PAGE + 2})
    pdf = render_slips(batch, vote_url=VOTE_URL + "/", unit_name="市卫生健康委员会", title="考核")
    pages = codes_per_page(pdf)
    # A: one page of 3; B: a full page and one of 2.
    assert [len(p) for p in pages] == [3, SLIPS_PER_PAGE, 2]
    want = [f"{VOTE_URL}#t={t}" for t in batch.tokens["A"]]
    assert sorted(pages[0]) == sorted(want)
    assert sorted(pages[1] + pages[2]) == sorted(f"{VOTE_URL}#t={t}" for t in batch.tokens["B"])
    # The token is printed too (spaced in fours) for typing, under the page's address.
    text = [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]
    assert "A 类 A组" in text[0] and "第 1/1 页" in text[0]
    assert "B 类 B组" in text[1] and "第 2/2 页" in text[2]
    for token in batch.tokens["A"]:
        assert spaced(token) in text[0]
    assert VOTE_URL in text[0] and f"#t={batch.tokens['A'][0]}" not in text[0]


async def test_tokens_issue_pdf_from_the_cli(
    client: Client, worker: str, pool: asyncpg.Pool, stack: Stack, tmp_path: Path
) -> None:
    unit = sample_unit(cadres=1)
    campaign = f"slip{uuid.uuid4().hex[:6]}"
    handle = await start_unit(client, worker, unit, campaign_id=campaign)
    for _ in range(100):
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM units WHERE workflow_id=$1", handle.id):
                break
        await asyncio.sleep(0.1)

    def issue(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from kaohe.cli.ballots import tokens_app; tokens_app()",
                "issue",
                "--campaign",
                campaign,
                "--unit",
                unit.unit_id,
                *extra,
            ],
            env={**stack.env(), "KAOHE_VOTE_URL": VOTE_URL},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    run = await asyncio.to_thread(issue, "--pdf", "slips.pdf", "--out", "tokens.csv")
    assert run.returncode == 0, run.stderr
    pdf = tmp_path / "slips.pdf"
    assert pdf.stat().st_mode & 0o077 == 0
    with (tmp_path / "tokens.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    pages = codes_per_page(pdf.read_bytes())
    # Groups A, B and C (2, 2 and 3 planned) each on a page of their own.
    by_group = {g: sorted(f"{VOTE_URL}#t={t}" for gg, t in rows if gg == g) for g in "ABC"}
    assert [sorted(p) for p in pages] == [by_group["A"], by_group["B"], by_group["C"]]
    assert unit.name in PdfReader(pdf).pages[0].extract_text()

    # --pdf alone writes no CSV; an existing file is never overwritten.
    again = await asyncio.to_thread(issue, "--pdf", "slips.pdf", "--reissue")
    assert again.returncode == 1 and "exists" in again.stderr
    only = await asyncio.to_thread(issue, "--pdf", "more.pdf", "--reissue")
    assert only.returncode == 0, only.stderr
    assert not (tmp_path / f"tokens-{campaign}-{unit.unit_id}.csv").exists()
    assert sum(len(p) for p in codes_per_page((tmp_path / "more.pdf").read_bytes())) == 7
