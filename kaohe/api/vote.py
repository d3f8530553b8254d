"""The raters' voting page and the receipts (issue 20 items 4 and 5), served by kaohe's API.

`GET /vote` is the page a QR slip opens (`vote_url#t=TOKEN`, kaohe/ingest/ballot_slips.py):
plain HTML, CSS and a small script (kaohe/api/vote/). The token stays in the fragment, which
no browser sends, so it reaches no access log or proxy; the script reads it and posts it:

* `POST /v1/vote/ballot` {"token"}: the token's unit and its ballot (the team, each cadre,
  the 民主评议 where in scope, with the options of the unit's policy), or that this token has
  already voted (its receipt again);
* `POST /v1/vote` {"token", "sheet", "unit"?}: the sheet, taken by the ballot intake
  (kaohe/ballot_intake.py) under a submission key made of the token, so a retry answers
  with the first receipt and nothing is taken twice. With the unit named, as the page names
  it, a vote is one statement to PostgreSQL (`quick_vote`); the token is looked up first
  only when that is refused, to say why.

No login: the token is the credential. Both routes are public and refuse everything without
a valid token, each refusal an audit row as `Api.refused` writes them (principal None); the
token itself is never logged, audited or echoed. Answers carry `code` and a Chinese
`message` beside the problem's English detail: the page shows the message.

`GET /v1/campaigns/{c}/units/{u}/receipts` lists a closed evaluation's counted receipts
(activities/ballot_pool.counted_receipts: random codes, sorted, that say nothing of any
choice); `GET /vote/receipts?campaign=..&unit=..` is the page where a rater types theirs and
reads 已计入 or 未找到, checked in the browser against that list (the server never learns
which code was asked about).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

import asyncpg
import jinja2
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

from activities.ballot_pool import counted_receipts
from activities.ballot_store import token_hash
from kaohe.api import problems
from kaohe.api.problems import Problem
from kaohe.api.routes import read_limited
from kaohe.ballot_intake import Intake, SheetsRefused, SheetsUnavailable, submission_key
from schemas.common import Identifier, Stage
from schemas.errors import error_path
from schemas.limits import MAX_PAYLOAD_BYTES, first_bad_text, json_shape_problem, shown
from schemas.messages import BallotSheet
from schemas.policy import BallotPolicy
from schemas.roster import UnitSpec
from workflows.campaign import unit_workflow_id

log = structlog.get_logger("kaohe.vote")

MAX_VOTE_BODY_BYTES = MAX_PAYLOAD_BYTES  # as every other body of kaohe's API: 413 above it
TOKEN_MIN, TOKEN_MAX = 16, 128  # schemas.messages.Token
_IDENTIFIER = re.compile(Identifier.__metadata__[0].pattern)
_STAGES = list(Stage)

# The pages allow nothing but their own script and style, and send no referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

# code -> (HTTP status, the message a rater reads)
MESSAGES: dict[str, tuple[int, str]] = {
    "body_too_large": (413, "提交的内容过大，请刷新页面后重试。"),
    "bad_request": (422, "请求格式不正确，请刷新页面后重试。"),
    "token_missing": (422, "缺少票码：请扫描票条上的二维码，或输入二维码下方的票码。"),
    "token_unknown": (403, "票码无效：没有找到这张票码。请核对票码，或联系考核组。"),
    "token_foreign": (403, "此票码不属于本单位的测评，请使用发给您的票条。"),
    "token_spent": (409, "此票码已被使用，不能再次投票。如不是您本人所投，请联系考核组。"),
    "not_open": (409, "测评尚未开始，请在测评开始后再扫码投票。"),
    "closed": (409, "测评已结束，不再接受投票。"),
    "sheet_invalid": (422, "票面有误，请检查后重新提交："),
    "unavailable": (503, "系统暂时无法受理，请稍后重试（您的票码仍然有效）。"),
    "unit_unknown": (404, "没有找到该单位的测评。"),
    "not_closed": (409, "测评尚未结束，结束后方可查询回执。"),
    "too_many": (429, "尝试次数过多，请稍后再试。"),
}


def vote_problem(code: str, detail: str, field: str | None = None, **extra: Any) -> Problem:
    status, message = MESSAGES[code]
    if code == "sheet_invalid":
        message += detail
    kind = "vote-" + code.replace("_", "-")
    return Problem(
        status,
        kind,
        "Vote refused",
        detail,
        field,
        headers=dict(_NO_STORE),
        code=code,
        message=message,
        **extra,
    )


@dataclass(frozen=True)
class TokenOf:
    """A token's unit, whether it is spent, and the receipts of its own vote if it voted."""

    workflow_id: str
    campaign_id: str
    unit_id: str
    unit_name: str
    spent: bool
    receipts: list[str] | None


async def token_of(pool: asyncpg.Pool, token: str) -> TokenOf | None:
    """The token, by its sha256 alone (migration 018's index), in one round trip."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT t.workflow_id, t.used_at IS NOT NULL AS spent, u.campaign_id, u.unit_id,
                      u.name, s.receipts::text AS receipts
               FROM ballot_tokens t JOIN units u USING (workflow_id)
               LEFT JOIN ballot_submissions s
                 ON s.workflow_id = t.workflow_id AND s.submission_key = $2
               WHERE t.token_hash = $1""",
            token_hash(token),
            vote_key(token),
        )
    if len(rows) != 1:  # none; two units with one token is a collision of 128 random bits
        return None
    r = rows[0]
    return TokenOf(
        r["workflow_id"],
        r["campaign_id"],
        r["unit_id"],
        r["name"],
        r["spent"],
        None if r["receipts"] is None else json.loads(r["receipts"]),
    )


def vote_key(token: str) -> bytes:
    """The submission key of the voting page: the token's, and no one else's."""
    return submission_key("vote", token)


def ballot_of(unit: UnitSpec, policy: BallotPolicy) -> dict[str, Any]:
    """Everything the page shows and a sheet needs, in the unit's order and wording."""
    dimensions = list(dict.fromkeys(policy.team_dimensions))
    ballot: dict[str, Any] = {
        "items_mandatory": policy.items_mandatory,
        "team": {
            "options": policy.team_options,
            "dimensions": dimensions,
            "focus_items": [f for f in dict.fromkeys(policy.focus_items) if f not in dimensions],
            "item_options": policy.dimension_options,
        },
        "cadres": [
            {
                "cadre_id": c.cadre_id,
                "name": c.name,
                "position": c.position,
                "principal": c.principal,
                "options": policy.cadre_options,
                "items": policy.cadre_dimensions + (policy.principal_items if c.principal else []),
                "item_options": policy.dimension_options,
            }
            for c in unit.cadres
        ],
        "selection_work": None,
        "new_cadres": [],
    }
    if unit.selection_review:
        ballot["selection_work"] = {
            "questions": policy.selection_questions,
            "options": policy.selection_options,
        }
        ballot["new_cadres"] = [
            {
                "cadre_id": c.cadre_id,
                "name": c.name,
                "position": c.position,
                "options": policy.new_cadre_options,
            }
            for c in unit.cadres
            if c.newly_promoted
        ]
    return ballot


def receipts_page_url(campaign: str, unit: str) -> str:
    return f"/vote/receipts?campaign={quote(campaign)}&unit={quote(unit)}"


# ---- the page's files --------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str


_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@cache
def asset(name: str) -> Asset:
    body = (resources.files("kaohe.api") / "vote" / name).read_bytes()
    suffix = name[name.rfind(".") :]
    return Asset(body, _MEDIA[suffix], hashlib.sha256(body).hexdigest()[:12])


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("kaohe.api", "vote"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


@cache
def page(template: str, script: str) -> str:
    def url(name: str) -> str:
        return f"/vote/static/{name}?v={asset(name).version}"

    return _templates().get_template(template).render(css=url("vote.css"), js=url(script))


# ---- the routes --------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    """A JSON object within kaohe's limits, read no further than MAX_VOTE_BODY_BYTES."""
    too_large = vote_problem(
        "body_too_large",
        f"(body): over the limit of {MAX_VOTE_BODY_BYTES} bytes",
        "(body)",
        limit=MAX_VOTE_BODY_BYTES,
    )
    raw = await read_limited(request, MAX_VOTE_BODY_BYTES, too_large)
    problem = json_shape_problem(raw)
    if problem is not None:
        raise vote_problem("bad_request", problem.replace("(payload)", "(body)"), "(body)")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise vote_problem("bad_request", "(body): not JSON") from None
    if not isinstance(body, dict):
        raise vote_problem("bad_request", "(body): expected a JSON object")
    bad = first_bad_text(body, raw)
    if bad is not None:
        field = "token" if bad[0].startswith("token") else bad[0]
        raise vote_problem("bad_request", f"{field}: {bad[1]}", field)
    return body


def _token_in(body: dict[str, Any]) -> str:
    token = body.get("token")
    if not isinstance(token, str) or not token.strip():
        raise vote_problem("token_missing", "token: required, the string on the slip", "token")
    token = "".join(token.split())  # the slip prints it in groups of four
    if not TOKEN_MIN <= len(token) <= TOKEN_MAX:
        raise vote_problem(
            "token_unknown", f"token: not a token ({TOKEN_MIN} to {TOKEN_MAX} characters)", "token"
        )
    return token


def _sheet_refusal(err: SheetsRefused) -> Problem:
    text = str(err)
    if err.closed:
        return vote_problem("closed", "sheet: the evaluation is closed")
    if "already used" in text:
        return vote_problem("token_spent", "token: already used", "token")
    if "not issued for this unit" in text:
        return vote_problem("token_unknown", "token: not issued for this unit", "token")
    if "sheets are taken in evaluation" in text:
        return vote_problem("not_open", "sheet: the evaluation has not begun")
    if text.startswith("unit:"):
        return vote_problem("unavailable", "unit: its ballot could not be read")
    detail = text.replace("sheets[0]", "sheet")
    return vote_problem("sheet_invalid", detail, detail.split(":", 1)[0])


def install_vote(app: FastAPI, api: Any) -> None:  # api: kaohe.api.app.Api
    """The voting page, its two routes and the receipts (see the module)."""

    async def refused(found: TokenOf | None, what: str, problem: Problem) -> None:
        campaign, unit = (found.campaign_id, found.unit_id) if found else ("", "")
        await api.refused(None, campaign, unit, what, problem)

    def refusals_counted(handler: Callable[[Request], Awaitable[Any]]) -> Any:
        """The route, answered 429 at once (nothing looked up, nothing audited) for an address
        refused too often lately; each refusal of the client's making (4xx) counts against
        its address (kaohe/api/throttle.py)."""

        async def route(request: Request) -> Any:
            address = request.client.host if request.client is not None else ""
            wait = api.vote_throttle.retry_after(address)
            if wait is not None:
                problem = vote_problem(
                    "too_many", f"(address): refused too often; retry after {wait} s"
                )
                problem.headers["Retry-After"] = str(wait)
                raise problem
            try:
                return await handler(request)
            except Problem as problem:
                if problem.status < 500:
                    api.vote_throttle.refused(address)
                raise

        route.__name__, route.__doc__ = handler.__name__, handler.__doc__
        return route

    async def read_token(request: Request, what: str) -> tuple[dict[str, Any], str]:
        """The body and its token, or the refusal (audited)."""
        try:
            body = await _body(request)
            return body, _token_in(body)
        except Problem as problem:
            await refused(None, what, problem)
            raise

    async def valid_token(request: Request, what: str) -> tuple[dict[str, Any], str, TokenOf]:
        """The body, its token and the token's unit, or the refusal (audited)."""
        body, token = await read_token(request, what)
        return body, token, await look_up(token, what)

    async def look_up(token: str, what: str) -> TokenOf:
        """The token's unit, or the refusal (audited)."""
        try:
            found = await token_of(api.pool, token)
        except Problem as problem:
            await refused(None, what, problem)
            raise
        except (OSError, asyncpg.PostgresError):
            log.exception("token look-up failed")
            raise vote_problem("unavailable", "database: unavailable") from None
        if found is None:
            problem = vote_problem("token_unknown", "token: no such token", "token")
            await refused(None, what, problem)
            raise problem
        return found

    def unit_of(found: TokenOf) -> dict[str, str]:
        return {"campaign": found.campaign_id, "unit": found.unit_id, "name": found.unit_name}

    def submitted(found: TokenOf, *, duplicate: bool) -> dict[str, Any]:
        assert found.receipts
        return {
            "state": "submitted",
            "duplicate": duplicate,
            "receipt": found.receipts[0],
            "unit": unit_of(found),
            "receipts_page": receipts_page_url(found.campaign_id, found.unit_id),
        }

    async def stage_of(workflow_id: str) -> Stage | None:
        try:
            status = await api.client.get_workflow_handle(workflow_id).query("status")
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise vote_problem("unavailable", "unit: its status could not be read") from None
        try:
            return Stage(status.get("stage") if isinstance(status, dict) else None)
        except ValueError:
            return None

    @app.get("/vote", response_class=HTMLResponse, include_in_schema=False)
    async def vote_page() -> HTMLResponse:
        return HTMLResponse(page("vote.html.j2", "vote.js"), headers=PAGE_HEADERS)

    @app.get("/vote/receipts", response_class=HTMLResponse, include_in_schema=False)
    async def receipts_page() -> HTMLResponse:
        return HTMLResponse(page("receipts.html.j2", "receipts.js"), headers=PAGE_HEADERS)

    @app.get("/vote/static/{name}", include_in_schema=False)
    async def vote_asset(name: str) -> Response:
        if name not in ("vote.js", "receipts.js", "vote.css"):
            raise problems.not_found(f"(path): no file {shown(name)!r}")
        found = asset(name)
        return Response(
            found.body,
            media_type=found.media_type,
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    @app.post("/v1/vote/ballot")
    @refusals_counted
    async def vote_ballot(request: Request) -> Any:
        """The ballot a rater's token opens (public: the token is the credential), or its
        receipt if it has voted already."""
        _, _, found = await valid_token(request, "vote_ballot")
        if found.receipts is not None:
            return _answer(submitted(found, duplicate=True))
        try:
            if found.spent:
                raise vote_problem("token_spent", "token: already used", "token")
            stage = await stage_of(found.workflow_id)
            if stage is None:
                raise vote_problem("token_unknown", "token: its unit is gone", "token")
            if stage != Stage.EVALUATION:
                later = _STAGES.index(stage) > _STAGES.index(Stage.EVALUATION)
                code = "closed" if later else "not_open"
                raise vote_problem(code, f"unit: in stage {stage.value}")
            try:
                unit_input = await api.ballots.unit_input(found.workflow_id)
            except (SheetsRefused, SheetsUnavailable):
                raise vote_problem("unavailable", "unit: its ballot could not be read") from None
        except Problem as problem:
            await refused(found, "vote_ballot", problem)
            raise
        return _answer(
            {
                "state": "open",
                "unit": unit_of(found),
                "title": unit_input.campaign_title,
                "year": unit_input.year,
                "ballot": ballot_of(unit_input.unit, unit_input.policy.ballots),
                "receipts_page": receipts_page_url(found.campaign_id, found.unit_id),
            }
        )

    def accepted(found: TokenOf, intake: Intake) -> Response:
        taken = dataclasses.replace(found, spent=True, receipts=intake.receipts)
        answer = submitted(taken, duplicate=intake.duplicate)
        return _answer(answer if intake.duplicate else {**answer, "state": "accepted"})

    async def quick_vote(body: dict[str, Any], token: str) -> Response | None:
        """The page's usual vote in one statement (ballot_pool_take): the unit it names, the
        token that unit's and unspent, the sheet valid. Anything else is None, and the vote
        goes the long way (the token looked up first), which finds out what and answers it:
        the same answers either way, only fewer round trips. Only for a unit whose ballot
        the intake holds already: a name sent with a made-up token costs no Temporal call."""
        named = body.get("unit")
        if not (
            isinstance(named, dict)
            and named.keys() == {"campaign", "unit"}
            and all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in named.values())
        ):
            return None
        workflow_id = unit_workflow_id(named["campaign"], named["unit"])
        if not api.ballots.knows(workflow_id):
            return None
        try:
            intake = await api.ballots.submit(
                workflow_id, [_sheet_in(body, token)], vote_key(token)
            )
            name = (await api.ballots.unit_input(workflow_id)).unit.name
        except (Problem, SheetsRefused, SheetsUnavailable, OSError, asyncpg.PostgresError):
            return None
        found = TokenOf(workflow_id, named["campaign"], named["unit"], name, True, None)
        return accepted(found, intake)

    @app.post("/v1/vote")
    @refusals_counted
    async def vote(request: Request) -> Any:
        """A rater's sheet, once per token; the same token again answers its receipt."""
        body, token = await read_token(request, "vote")
        quick = await quick_vote(body, token)
        if quick is not None:
            return quick
        found = await look_up(token, "vote")
        if found.receipts is not None:
            return _answer(submitted(found, duplicate=True))
        try:
            named = body.get("unit")
            if named is not None and named != {
                "campaign": found.campaign_id,
                "unit": found.unit_id,
            }:
                if not isinstance(named, dict):
                    raise vote_problem("bad_request", "unit: {campaign, unit} or leave it out")
                raise vote_problem("token_foreign", "token: not issued for this unit", "token")
            if found.spent:
                raise vote_problem("token_spent", "token: already used", "token")
            sheet = _sheet_in(body, token)
            try:
                intake = await api.ballots.submit(found.workflow_id, [sheet], vote_key(token))
            except SheetsRefused as err:
                raise _sheet_refusal(err) from None
            except (SheetsUnavailable, OSError, asyncpg.PostgresError):
                log.exception("vote not taken", workflow_id=found.workflow_id)
                raise vote_problem("unavailable", "database: unavailable") from None
        except Problem as problem:
            await refused(found, "vote", problem)
            raise
        return accepted(found, intake)

    @app.get("/v1/campaigns/{campaign}/units/{unit}/receipts")
    async def receipts(campaign: str, unit: str) -> Any:
        """A closed evaluation's counted receipts (public: they tell nothing of any choice);
        409 `not_closed` before the evaluation closes."""
        for name, value in (("campaign", campaign), ("unit", unit)):
            if not _IDENTIFIER.fullmatch(value):
                detail = f"{name}: {shown(value)!r} is not an id"
                raise vote_problem("unit_unknown", detail, name)
        workflow_id = unit_workflow_id(campaign, unit)
        async with api.pool.acquire() as conn:
            name = await conn.fetchval(
                "SELECT name FROM units WHERE workflow_id = $1 AND campaign_id = $2 "
                "AND unit_id = $3",
                workflow_id,
                campaign,
                unit,
            )
            if name is None:
                raise vote_problem("unit_unknown", f"unit: no unit {unit} in campaign {campaign}")
            counted = await counted_receipts(conn, workflow_id)
        if counted is None:
            raise vote_problem("not_closed", "receipts: the evaluation is not closed yet")
        return _answer(
            {
                "campaign": campaign,
                "unit": unit,
                "name": name,
                "closed": True,
                "count": len(counted),
                "receipts": counted,
            }
        )


def _sheet_in(body: dict[str, Any], token: str) -> BallotSheet:
    sheet = body.get("sheet")
    if not isinstance(sheet, dict):
        raise vote_problem("sheet_invalid", "sheet: required, an object", "sheet")
    try:
        return BallotSheet.model_validate({**sheet, "token": token})
    except ValidationError as err:
        first = err.errors(include_input=False)[0]
        field = "sheet." + error_path(first["loc"])
        raise vote_problem("sheet_invalid", f"{field}: {first['msg']}", field) from None


def _answer(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        media_type="application/json",
        headers=dict(_NO_STORE),
    )
