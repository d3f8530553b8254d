"""Ballot tokens as QR slips to cut out (`kaohe tokens issue --pdf`): A4 pages of ten slips,
each rater group (票类) on pages of its own, so the slips of group A go to group A's raters.

A slip's QR code holds the voting page's address with the token in the fragment
(`https://host/vote#t=TOKEN`): a browser never sends a fragment, so the token reaches no
access log or proxy; the page's script posts it. The token is printed under the code too, for
a rater whose phone does not open the address or who has scripts off: the slip is the
credential either way, so the text tells nothing the code does not.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import segno
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from kaohe.ingest.ballot_io import IssuedTokens

COLUMNS, ROWS = 2, 5
SLIPS_PER_PAGE = COLUMNS * ROWS
PAGE_W, PAGE_H = A4
MARGIN_X, HEADER_H = 10 * mm, 16 * mm
SLIP_W, SLIP_H = (PAGE_W - 2 * MARGIN_X) / COLUMNS, 55 * mm
QR_SIZE = 40 * mm  # with its quiet zone
QR_BORDER = 4  # modules of quiet zone, as the standard asks
TOKEN_FONT = "Courier-Bold"
HOW_TO = "用手机扫码即可投票, 每码只能提交一次。请勿转借, 投后可丢弃。"
# An embedded CJK font if the machine has one (`make system-deps` installs WenQuanYi Zen Hei);
# else reportlab's built-in CID font, which PDF readers substitute.
CJK_FONT_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def vote_link(vote_url: str, token: str) -> str:
    """The address a slip's QR code holds: the token in the fragment, never in the path."""
    return f"{vote_url.rstrip('/')}#t={token}"


def spaced(token: str, every: int = 4) -> str:
    """The token in groups of four, for typing (the page ignores the spaces)."""
    return " ".join(token[i : i + every] for i in range(0, len(token), every))


def _cjk_font() -> str:
    for path in CJK_FONT_FILES:
        if os.path.exists(path):
            name = "KaoheCJK"
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
            return name
    name = "STSong-Light"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


def _wrap(text: str, font: str, size: float, width: float) -> Iterator[str]:
    """Lines of `text` no wider than `width` (by characters: Chinese has no spaces)."""
    line = ""
    for ch in text:
        if line and pdfmetrics.stringWidth(line + ch, font, size) > width:
            yield line
            line = ""
        line += ch
    if line:
        yield line


def _draw_qr(c: Canvas, data: str, x: float, y: float, size: float) -> None:
    """The QR code of `data` as vector rectangles (crisp on any printer), one per dark run of
    a row, with a white quiet zone; (x, y) is the lower left corner."""
    qr = segno.make(data, error="m", micro=False)
    matrix = qr.matrix
    n = len(matrix) + 2 * QR_BORDER
    module = size / n
    c.setFillColorRGB(1, 1, 1)
    c.rect(x, y, size, size, stroke=0, fill=1)
    c.setFillColorRGB(0, 0, 0)
    for r, row in enumerate(matrix):
        top = y + size - (r + QR_BORDER + 1) * module
        start = None
        for col, dark in enumerate([*row, 0]):
            if dark and start is None:
                start = col
            elif not dark and start is not None:
                c.rect(
                    x + (start + QR_BORDER) * module,
                    top,
                    (col - start) * module,
                    module,
                    stroke=0,
                    fill=1,
                )
                start = None


def _cut_lines(c: Canvas, rows: int) -> None:
    c.saveState()
    c.setDash(3, 3)
    c.setLineWidth(0.3)
    c.setStrokeColorRGB(0.5, 0.5, 0.5)
    top = PAGE_H - HEADER_H
    bottom = top - rows * SLIP_H
    for i in range(COLUMNS + 1):
        x = MARGIN_X + i * SLIP_W
        c.line(x, top, x, bottom)
    for j in range(rows + 1):
        y = top - j * SLIP_H
        c.line(MARGIN_X, y, PAGE_W - MARGIN_X, y)
    c.restoreState()


def _slip(
    c: Canvas, font: str, x: float, y: float, lines: list[str], link: str, token: str
) -> None:
    """One slip with its lower left corner at (x, y)."""
    pad = 3 * mm
    _draw_qr(c, link, x + pad, y + SLIP_H - pad - QR_SIZE, QR_SIZE)
    tx = x + pad + QR_SIZE + 2 * mm
    width = x + SLIP_W - pad - tx
    ty = y + SLIP_H - pad - 4 * mm
    c.setFont(font, 11)
    c.drawString(tx, ty, "民主测评 · 无记名")
    ty -= 6 * mm
    for i, text in enumerate(lines):
        size = 9 if i == 0 else 8
        c.setFont(font, size)
        for line in _wrap(text, font, size, width):
            c.drawString(tx, ty, line)
            ty -= size * 1.5
        ty -= 2 * mm
    c.setFont(font, 7)
    for line in _wrap(HOW_TO, font, 7, width):
        c.drawString(tx, ty, line)
        ty -= 3.4 * mm
    # Under the code: the token for typing, and where to type it.
    c.setFont(font, 7)
    c.drawString(x + pad, y + 7.5 * mm, "无法扫码时, 打开下面的网址并输入测评码:")
    c.drawString(x + pad, y + 4.5 * mm, link.split("#", 1)[0])
    c.drawString(x + pad, y + 1.8 * mm, "测评码:")
    c.setFont(TOKEN_FONT, 9)
    c.drawRightString(x + SLIP_W - pad, y + 1.5 * mm, spaced(token))


def render_slips(issued: IssuedTokens, *, vote_url: str, unit_name: str, title: str) -> bytes:
    """The PDF of a unit's slips: ten to an A4 page, each rater group from a new page."""
    buf = io.BytesIO()
    c = Canvas(buf, pagesize=A4, pageCompression=1)
    c.setTitle(f"{title} {unit_name} 测评码")
    c.setCreator("kaohe")
    font = _cjk_font()
    labels = {g.group_id: g.label for g in issued.groups}
    pages = 0
    for group, tokens in issued.tokens.items():
        label = labels.get(group, group)
        chunks = [tokens[i : i + SLIPS_PER_PAGE] for i in range(0, len(tokens), SLIPS_PER_PAGE)]
        for n, chunk in enumerate(chunks, start=1):
            c.setFont(font, 10)
            c.drawString(
                MARGIN_X,
                PAGE_H - 10 * mm,
                f"{title} · {unit_name} · {group} 类 {label} · 第 {n}/{len(chunks)} 页 "
                f"({len(tokens)} 张) · 沿虚线剪开, 一人一张",
            )
            rows = (len(chunk) + COLUMNS - 1) // COLUMNS
            _cut_lines(c, rows)
            for i, token in enumerate(chunk):
                col, row = i % COLUMNS, i // COLUMNS
                x = MARGIN_X + col * SLIP_W
                y = PAGE_H - HEADER_H - (row + 1) * SLIP_H
                lines = [unit_name, f"{group} 类: {label}"]
                _slip(c, font, x, y, lines, vote_link(vote_url, token), token)
            c.showPage()
            pages += 1
    if pages == 0:
        c.setFont(font, 12)
        c.drawString(MARGIN_X, PAGE_H - 20 * mm, f"{unit_name}: 本次没有发放测评码")
        c.showPage()
    c.save()
    return buf.getvalue()


def write_tokens_pdf(
    path: Path, issued: IssuedTokens, *, vote_url: str, unit_name: str, title: str
) -> None:
    """The slips, to a new file readable by its owner only (like the tokens CSV)."""
    data = render_slips(issued, vote_url=vote_url, unit_name=unit_name, title=title)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
