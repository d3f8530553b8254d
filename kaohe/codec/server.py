"""The codec server: the Temporal UI (and ``temporal --codec-endpoint``) decode payloads here.

Protocol (Temporal's remote codec, as in samples-python ``encryption/codec_server.py``):
``POST <anything>/decode`` and ``POST <anything>/encode`` with a body of
``{"payloads": [{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}]}`` (proto
JSON of ``temporal.api.common.v1.Payloads``) answer the same shape. Only the last path
segment counts, and the UI's ``?preserveStorageRefs=true`` query is ignored.

Authentication: every request needs the token, from ``KAOHE_CODEC_TOKEN`` or else from
``<data_dir>/codec.token`` (created on first use, mode 0600), in one of two places:

* ``Authorization: Bearer <token>``: the temporal CLI (``--codec-auth "Bearer $(cat
  .kaohe/codec.token)"``), integrators and scripts;
* the path, ``/t/<token>/decode``: for the Temporal UI, which cannot send a header of its own
  (it sends ``Content-Type`` and ``X-Namespace``; its "pass the user access token" option
  sends an OIDC token, and only to https). ``kaohe dev`` gives the dev server
  ``--ui-codec-endpoint http://127.0.0.1:8234/t/<token>``; whoever can read that setting can
  open the UI, which shows the decoded payloads anyway. For a deployed UI with OIDC, put an
  authenticating proxy in front (https, passAccessToken) and give it the token.

A request without a valid token is refused with 401, whatever its origin or address.

CORS: preflight ``OPTIONS`` is answered without authentication for the dev UI's origins and
``KAOHE_CODEC_CORS_ORIGINS``; responses carry ``Access-Control-Allow-Origin`` for those
origins only (with credentials allowed, so the UI's "include credentials" works too).

Payloads, keys and the token are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import hdrs, web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from kaohe.codec.payloads import (
    EncryptionCodec,
    PayloadKeyError,
    codec_from_settings,
    create_secret_file,
)
from kaohe.listening import listen
from kaohe.settings import Settings

log = structlog.get_logger("kaohe.codec_server")

TOKEN_FILE_NAME = "codec.token"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a history page of large payloads
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"

Coder = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def codec_token(settings: Settings) -> str:
    """KAOHE_CODEC_TOKEN, else the token file in the data dir (created on first use)."""
    if settings.codec_token is not None:
        return settings.codec_token.get_secret_value()
    path = settings.data_dir / TOKEN_FILE_NAME
    if not path.exists():
        create_secret_file(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def build_app(
    codec: EncryptionCodec | None, token: str, *, cors_origins: Sequence[str]
) -> web.Application:
    """The aiohttp app; `cors_origins` get CORS headers. A None codec passes payloads
    through both ways."""
    cors = frozenset(cors_origins)
    expected = f"Bearer {token}".encode()
    expected_path = token.encode()

    async def passthrough(payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    coders: dict[str, Coder] = {
        "encode": codec.encode if codec is not None else passthrough,
        "decode": codec.decode if codec is not None else passthrough,
    }

    def cors_headers(request: web.Request) -> dict[str, str]:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin not in cors:
            return {}
        headers = {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true",
            hdrs.VARY: "Origin",
        }
        if request.method == hdrs.METH_OPTIONS:
            headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "POST, OPTIONS"
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOWED_HEADERS
            headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
            # Chrome's Private Network Access preflight (a page on a less private address).
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                headers["Access-Control-Allow-Private-Network"] = "true"
        return headers

    def authorized(request: web.Request) -> bool:
        given = request.headers.get(hdrs.AUTHORIZATION, "").encode()
        if given and hmac.compare_digest(given, expected):
            return True
        # .../t/<token>/<operation>: the UI's endpoint carries the token in its path.
        parts = request.path.rstrip("/").split("/")
        return (
            len(parts) >= 3
            and parts[-3] == "t"
            and hmac.compare_digest(parts[-2].encode(), expected_path)
        )

    def error(request: web.Request, status: int, message: str, **headers: str) -> web.Response:
        return web.json_response(
            {"error": message}, status=status, headers={**cors_headers(request), **headers}
        )

    async def handle(request: web.Request) -> web.Response:
        if request.method == hdrs.METH_OPTIONS:
            if not cors_headers(request):
                return web.Response(status=403)
            return web.Response(status=204, headers=cors_headers(request))
        operation = request.path.rstrip("/").rsplit("/", 1)[-1]
        if operation not in coders:
            return error(request, 404, "not found: POST .../encode or .../decode")
        if request.method != hdrs.METH_POST:
            return error(request, 405, "method not allowed", Allow="POST, OPTIONS")
        if not authorized(request):
            log.info(
                "codec request refused",
                operation=operation,
                origin=request.headers.get(hdrs.ORIGIN),
            )
            return error(
                request,
                401,
                "a valid token is required: Authorization: Bearer <token>, or .../t/<token>/"
                f"{operation}",
                **{hdrs.WWW_AUTHENTICATE: 'Bearer realm="kaohe-codec"'},
            )
        try:
            payloads = json_format.Parse(
                await request.read(), Payloads(), ignore_unknown_fields=True
            )
        except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError):
            return error(request, 400, 'the body must be {"payloads": [...]} (proto JSON)')
        try:
            result = await coders[operation](payloads.payloads)
        except PayloadKeyError as err:
            return error(request, 422, str(err))
        log.debug("codec request", operation=operation, payloads=len(result))
        return web.Response(
            text=json_format.MessageToJson(Payloads(payloads=result)),
            content_type="application/json",
            headers=cors_headers(request),
        )

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class CodecServer:
    """The codec server on host:port in this process's event loop: start(), stop()."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int | None = None):
        self.settings = settings
        self.host = host
        self.port = settings.codec_port if port is None else port
        self.token_file = (
            None if settings.codec_token is not None else settings.data_dir / TOKEN_FILE_NAME
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ui_endpoint(self) -> str:
        """The endpoint to give the Temporal UI: the token in the path (see the module doc)."""
        return f"{self.url}/t/{codec_token(self.settings)}"

    async def start(self) -> str:
        """Listens (raises OSError if the port is taken); returns the URL."""
        settings = self.settings
        ui_origins = settings.temporal_ui_origins
        app = build_app(
            codec_from_settings(settings),
            codec_token(settings),
            cors_origins=[*ui_origins, *settings.codec_cors_origins],
        )
        self._runner = await listen(app, self.host, self.port, reuse_address=True)
        log.info(
            "codec server started",
            url=self.url,
            token_file=str(self.token_file) if self.token_file else "KAOHE_CODEC_TOKEN",
        )
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def run_codec_server(
    settings: Settings, host: str = "127.0.0.1", port: int | None = None
) -> None:
    """`kaohe codec-server`: serve until cancelled (Ctrl-C under asyncio.run)."""
    server = CodecServer(settings, host, port)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
