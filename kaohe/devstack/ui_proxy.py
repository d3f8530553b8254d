"""The dev UI's front: `kaohe dev` serves the Temporal UI through this proxy, which passes
every request to the dev server's UI unchanged except its settings, where it turns on the
codec's ``IncludeCredentials``.

Why: the dev UI decodes through kaohe's API (``/v1/codec``, kaohe/api/codec.py) as the
developer who logged in with the link ``kaohe dev`` prints, by an HttpOnly cookie of kaohe's
API. A browser sends that cookie on the UI's cross-origin codec requests only with
``credentials: "include"``, which the UI does when its settings say ``IncludeCredentials``;
``temporal server start-dev`` sets nothing but the endpoint (``--ui-codec-endpoint``). What the
settings hold is the endpoint's URL and that flag: no token, no key (issue 20 item 7).
"""

from __future__ import annotations

import json

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from kaohe.listening import listen

SETTINGS_PATH = "/api/v1/settings"
# Hop-by-hop headers (RFC 9110 7.6.1) and what aiohttp sets itself.
_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        "Keep-Alive",
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.CONTENT_LENGTH,
    )
)


def with_credentials(settings: dict[str, object]) -> dict[str, object]:
    """The UI's settings with the codec's IncludeCredentials on (when it has an endpoint)."""
    codec = settings.get("Codec")
    if isinstance(codec, dict) and codec.get("Endpoint"):
        settings = {**settings, "Codec": {**codec, "IncludeCredentials": True}}
    return settings


class UiProxy:
    """host:port in front of the UI at `upstream` (http://host:port): start(), stop()."""

    def __init__(self, host: str, port: int, upstream: str) -> None:
        self.host = host
        self.port = port
        self.upstream = upstream.rstrip("/")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        settings = request.path == SETTINGS_PATH and request.method == hdrs.METH_GET
        if settings:
            headers[hdrs.ACCEPT_ENCODING] = "identity"
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            out = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP]
            if settings and upstream.status == 200:
                body = json.dumps(with_credentials(json.loads(body))).encode()
        response = web.Response(status=upstream.status, body=body)
        for key, value in out:
            response.headers.add(key, value)
        return response

    async def start(self) -> str:
        """Listens (OSError if the port is taken); returns the URL."""
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        try:
            self._runner = await listen(app, self.host, self.port, reuse_address=True)
        except BaseException:
            await self._session.close()
            raise
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
