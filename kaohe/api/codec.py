"""Temporal's remote codec, in kaohe's API, for the Temporal UI and ``temporal
--codec-endpoint`` (issue 20 item 7): no master key or token in the browser, each request
decoded as the person who asks, with their own role.

``POST /v1/codec/decode`` and ``POST /v1/codec/encode`` take and answer
``{"payloads": [{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}]}`` (proto
JSON of ``temporal.api.common.v1.Payloads``, the protocol of samples-python
``encryption/codec_server.py``; the UI's ``?preserveStorageRefs=true`` is ignored). The payload
keys stay in this process (the client's data converter, kaohe/codec/payloads.py).

Who: the caller's ``Authorization: Bearer <token>`` (the site's OIDC access token, which a
deployed Temporal UI sends with ``TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true``; or ``kaohe token
mint``'s) or ``X-API-Key``, checked as on every other route; or, for the dev stack's UI, which
has no login of its own, the HttpOnly session cookie ``GET /v1/codec/login`` sets in exchange
for a one-time ticket that ``kaohe dev`` prints (``kaohe token codec-login NAME`` makes
another). The cookie is a token of the dev issuer for the codec's own audience, good for
nothing but these two routes, SameSite=Strict, path /v1/codec, 12 hours.

What: ``codec_decode`` to decode, ``codec_encode`` to encode, two bindings of their own
(``kaohe access grant NAME codec_decode``). A payload names neither its campaign nor its unit,
so a codec binding is for every payload of the namespace (kaohe/access/bindings.py); whoever
holds codec_decode reads every history as the workers do, and is granted it as such.

Every answered request leaves an audit row (``codec_decode`` / ``codec_encode``: the
principal, how it authenticated, how many payloads; never their content) under the workflow
id ``kaohe-codec``; a refused one an ``api_refused`` row with the reason. CORS allows the
Temporal UI's origins (the dev UI's, ``KAOHE_CODEC_CORS_ORIGINS``) with credentials, on these
routes only.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
import jwt
import structlog
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from activities.audit_log import write_unattributed
from kaohe.access.bindings import codec_roles
from kaohe.access.identity import Identity, TokenVerifier, Unauthenticated
from kaohe.access.issuer import DevIssuer
from kaohe.api import problems
from kaohe.api.problems import Problem
from kaohe.api.routes import read_limited
from kaohe.codec.payloads import PayloadKeyError
from schemas.common import Role

log = structlog.get_logger("kaohe.api.codec")

PREFIX = "/v1/codec"
SESSION_COOKIE = "kaohe_codec"
SESSION_TTL = 12 * 3600
LOGIN_TTL = 24 * 3600  # the ticket `kaohe dev` prints at start; one use
AUDIT_WORKFLOW = "kaohe-codec"
MAX_CODEC_BODY = 64 * 1024 * 1024  # a history page of large payloads
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras, X-API-Key"
OPERATIONS: dict[str, Role] = {"decode": Role.CODEC_DECODE, "encode": Role.CODEC_ENCODE}


def session_audience(audience: str) -> str:
    return f"{audience}:codec-session"


def login_audience(audience: str) -> str:
    return f"{audience}:codec-login"


def login_link(api_url: str, issuer: DevIssuer, principal: str, audience: str) -> str:
    """A one-time link that logs PRINCIPAL into the codec (the session cookie), for a browser
    on the dev UI: it carries no key, and decodes only what PRINCIPAL's bindings allow."""
    ticket = issuer.mint(principal, ttl=LOGIN_TTL, audience=login_audience(audience))
    return f"{api_url.rstrip('/')}{PREFIX}/login?ticket={ticket}"


@dataclass(frozen=True)
class CodecAccess:
    """What the codec routes need besides the Api: the browser origins CORS allows, the dev
    issuer (the login ticket and session cookie exist only with it) and where the login
    sends the browser next (the UI)."""

    cors_origins: Sequence[str] = ()
    issuer: DevIssuer | None = None
    ui_url: str | None = None


def install_codec(app: FastAPI, api: Any, access: CodecAccess) -> None:
    """The codec routes on kaohe's API app (`api`: kaohe.api.app.Api)."""
    cors = frozenset(access.cors_origins)
    verifier: TokenVerifier = api.verifier
    sessions = verifier.for_audience(session_audience(verifier.audience))
    tickets = verifier.for_audience(login_audience(verifier.audience))
    login_lock = asyncio.Lock()

    def cors_headers(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in cors:
            return {}
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = "600"
            if request.headers.get("access-control-request-private-network") == "true":
                headers["Access-Control-Allow-Private-Network"] = "true"
        return headers

    @app.middleware("http")
    async def codec_cors(request: Request, call_next: Any) -> Response:
        if not request.url.path.startswith(PREFIX + "/"):
            return await call_next(request)
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            headers = cors_headers(request)
            return Response(status_code=204 if headers else 403, headers=headers)
        response = await call_next(request)
        response.headers.update(cors_headers(request))
        return response

    async def audit(kind: str, detail: dict[str, Any]) -> None:
        try:
            await write_unattributed(
                api.pool,
                workflow_id=AUDIT_WORKFLOW,
                campaign_id="",
                unit_id="",
                stage="",
                kind=kind,
                detail=detail,
            )
        except (OSError, asyncpg.PostgresError):
            log.exception("could not record a codec request", kind=kind, **detail)
            raise problems.Problem(
                503, "audit-unavailable", "Audit unavailable", "the request cannot be recorded"
            ) from None

    async def refused(who: Identity | None, what: str, problem: Problem) -> None:
        await api.refused(who, "", "", what, problem, workflow_id=AUDIT_WORKFLOW)

    async def who_calls(
        request: Request, authorization: str | None, api_key: str | None
    ) -> tuple[Identity, Literal["bearer", "api-key", "session"]]:
        if authorization or api_key:
            via: Literal["bearer", "api-key"] = "api-key" if api_key else "bearer"
            return await api.identify(authorization, api_key), via
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                return await asyncio.to_thread(sessions.verify, cookie), "session"
            except Unauthenticated as err:
                raise Unauthenticated(f"the codec session cookie: {err}") from None
        raise Unauthenticated(
            "no credentials: send Authorization: Bearer <token> (the Temporal UI: "
            "TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true), or log in to the codec first "
            f"({PREFIX}/login, the link kaohe dev prints)"
        )

    async def read_payloads(request: Request) -> list[Payload]:
        too_large = problems.too_large(
            f"(body): over the limit of {MAX_CODEC_BODY} bytes", MAX_CODEC_BODY
        )
        raw = await read_limited(request, MAX_CODEC_BODY, too_large)
        try:
            parsed = json_format.Parse(raw, Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError):
            raise problems.invalid(
                '(body): expected {"payloads": [...]} (proto JSON of Payloads)', "payloads"
            ) from None
        return list(parsed.payloads)

    async def code(
        operation: str,
        request: Request,
        authorization: str | None,
        api_key: str | None,
        namespace: str | None,
    ) -> Response:
        need = OPERATIONS[operation]
        who: Identity | None = None
        try:
            try:
                who, via = await who_calls(request, authorization, api_key)
            except Unauthenticated as err:
                raise problems.unauthenticated(str(err)) from None
            async with api.pool.acquire() as conn:
                held = await codec_roles(conn, who.principal)
            if need not in held:
                have = ", ".join(sorted(r.value for r in held)) or "no codec role"
                raise problems.forbidden(
                    f"{who.principal} has {have}; to {operation} payloads needs {need.value} "
                    f"(kaohe access grant {who.principal} {need.value})"
                )
        except Problem as problem:
            await refused(who, f"codec_{operation}", problem)
            raise
        payloads = await read_payloads(request)
        codec = api.client.data_converter.payload_codec
        try:
            if codec is None:
                result = payloads  # no encryption configured: payloads pass through
            elif operation == "decode":
                result = await codec.decode(payloads)
            else:
                result = await codec.encode(payloads)
        except PayloadKeyError as err:
            raise problems.invalid(f"payloads: {err}", "payloads") from None
        # Who asked for how many, never what they were.
        detail = {
            "principal": who.principal,
            "kind": who.kind,
            "via": via,
            "payloads": len(payloads),
            "namespace": namespace,
        }
        await audit(f"codec_{operation}", detail)
        log.info(f"codec {operation}", **detail)
        body = json_format.MessageToJson(Payloads(payloads=result))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.post(f"{PREFIX}/decode", tags=["codec"])
    async def decode(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
        x_namespace: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Temporal's remote codec: decrypts `{"payloads": [...]}` for a caller bound
        `codec_decode` (every payload of the namespace); audited, never the content."""
        return await code("decode", request, authorization, x_api_key, x_namespace)

    @app.post(f"{PREFIX}/encode", tags=["codec"])
    async def encode(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
        x_namespace: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Temporal's remote codec: encrypts `{"payloads": [...]}` for a caller bound
        `codec_encode`; audited, never the content."""
        return await code("encode", request, authorization, x_api_key, x_namespace)

    def cookie_headers(request: Request) -> dict[str, Any]:
        return {
            "key": SESSION_COOKIE,
            "path": PREFIX,
            "httponly": True,
            "samesite": "strict",
            "secure": request.url.scheme == "https",
        }

    @app.get(f"{PREFIX}/login", tags=["codec"])
    async def login(request: Request, ticket: Annotated[str, Query()] = "") -> Response:
        """The dev stack's codec login: a one-time ticket (`kaohe dev` prints the link)
        becomes an HttpOnly session cookie the Temporal UI's codec requests carry."""
        issuer = access.issuer
        if issuer is None:
            raise problems.not_found(
                "the codec login is the dev stack's; a deployed Temporal UI sends its user's "
                "OIDC access token (TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true)"
            )
        who: Identity | None = None
        try:
            try:
                who = await asyncio.to_thread(tickets.verify, ticket)
                claims = jwt.decode(ticket, options={"verify_signature": False})
            except Unauthenticated as err:
                raise problems.unauthenticated(f"the login ticket: {err}") from None
            jti = str(claims.get("jti", ""))
            async with login_lock:
                async with api.pool.acquire() as conn:
                    used = await conn.fetchval(
                        """SELECT true FROM audit_log
                           WHERE workflow_id = $1 AND kind = 'codec_login'
                             AND detail->>'ticket' = $2 LIMIT 1""",
                        AUDIT_WORKFLOW,
                        jti,
                    )
                if used or not jti:
                    raise problems.unauthenticated(
                        "the login ticket was used already: ask for a new one "
                        f"(kaohe token codec-login {who.principal})"
                    )
                await audit("codec_login", {"principal": who.principal, "ticket": jti})
        except Problem as problem:
            await refused(who, "codec_login", problem)
            raise
        session = issuer.mint(
            who.principal,
            ttl=SESSION_TTL,
            name=who.name,
            audience=session_audience(verifier.audience),
        )
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        response: Response
        if access.ui_url:
            response = RedirectResponse(access.ui_url, status_code=303, headers=headers)
        else:
            response = JSONResponse(
                {"principal": who.principal, "expires_in": SESSION_TTL}, headers=headers
            )
        response.set_cookie(value=session, max_age=SESSION_TTL, **cookie_headers(request))
        log.info("codec login", principal=who.principal, expires=int(time.time()) + SESSION_TTL)
        return response

    @app.post(f"{PREFIX}/logout", tags=["codec"])
    async def logout(request: Request) -> Response:
        """Forget the codec session cookie of this browser."""
        response = Response(status_code=204)
        response.delete_cookie(**cookie_headers(request))
        return response
