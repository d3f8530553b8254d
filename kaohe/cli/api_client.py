"""The `kaohe` CLI through kaohe's API: with an API identity (KAOHE_API_TOKEN, a bearer token
or a system's API key) the acting commands and the reads go to kaohe's API at KAOHE_API_URL,
which takes the actor from the token and its role binding, as for every other caller. Without
one, or with --direct, they go straight to Temporal, signed with the workers' assertion keys
and with an explicit --actor: the operators' path.

`via_api` is the one place that chooses; kaohe/cli/main.py and calibration.py branch on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape

from kaohe.access.api_keys import PREFIX as API_KEY_PREFIX
from kaohe.cli.common import console, fail
from kaohe.settings import Settings, get_settings
from schemas.common import Actor, Role

DirectOption = Annotated[
    bool,
    typer.Option(
        "--direct",
        help="Straight to Temporal with the workers' assertion keys (operators), even with "
        "KAOHE_API_TOKEN set.",
    ),
]
# What a payload is checked with before it goes to the API, which puts in the real actor.
FROM_TOKEN = Actor(id="api-token", role=Role.DEPARTMENT)
PROBLEM = "application/problem+json"  # RFC 9457, as kaohe/api/problems.py answers
TIMEOUT_SECONDS = 70.0  # the API waits for the unit's answer to an update


class ApiError(Exception):
    """What the CLI prints when kaohe's API did not do what was asked."""


class ApiRefused(ApiError):
    """The API answered no (an RFC 9457 problem: 401, 403, 404, 409, 422): asking again
    changes nothing."""


class ApiUnavailable(ApiError):
    """No answer, or a server error: a later attempt may succeed."""


class ApiClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        # A system's API key goes in X-Api-Key, a person's token as a bearer token.
        key = token.startswith(API_KEY_PREFIX)
        self._headers = {"X-Api-Key": token} if key else {"Authorization": f"Bearer {token}"}
        self._units: dict[str, tuple[str, str]] = {}

    def call(
        self, method: str, path: str, body: Any = None, *, params: Any = None, queue: bool = False
    ) -> Any:
        """The answer's JSON; a problem raises ApiRefused, no answer ApiUnavailable."""
        headers = {**self._headers, **({"Prefer": "respond-async"} if queue else {})}
        try:
            answer = httpx.request(
                method,
                f"{self.url}{path}",
                json=body,
                params=params,
                headers=headers,
                timeout=TIMEOUT_SECONDS,
            )
        except httpx.HTTPError as err:
            raise ApiUnavailable(
                f"kaohe's API at {self.url}: {err or type(err).__name__}"
            ) from None
        if answer.is_success:
            return answer.json()
        error = ApiUnavailable if answer.status_code >= 500 else ApiRefused
        raise error(_describe(answer))

    def unit(self, target: str) -> tuple[str, str]:
        """(campaign, unit) of CAMPAIGN/UNIT or of a unit's workflow id (asked of the API)."""
        campaign, slash, unit = target.partition("/")
        if slash:
            return campaign, unit
        if target not in self._units:
            found = self.call("GET", route("/v1/units/{}", target))
            self._units[target] = found["campaign"], found["unit"]
        return self._units[target]

    def act(self, target: str, action: str, body: dict[str, Any], **kwargs: Any) -> Any:
        campaign, unit = self.unit(target)
        path = route("/v1/campaigns/{}/units/{}/actions/{}", campaign, unit, action)
        return self.call("POST", path, body, **kwargs)

    def status(self, target: str) -> Any:
        campaign, unit = self.unit(target)
        return self.call("GET", route("/v1/campaigns/{}/units/{}/status", campaign, unit))


def route(template: str, *ids: str) -> str:
    """A path of kaohe's API with each id quoted (a slash or a ? in one stays in it)."""
    return template.format(*(quote(i, safe="") for i in ids))


def _describe(answer: httpx.Response) -> str:
    """`title (status): detail`, and the field it names, from a problem; else the body."""
    if answer.headers.get("content-type", "").startswith(PROBLEM):
        p = answer.json()
        field = f"\nfield: {p['field']}" if p.get("field") else ""
        return f"{p.get('title')} ({p.get('status')}): {p.get('detail')}{field}"
    return f"HTTP {answer.status_code} from {answer.request.url}: {answer.text[:500]}"


def via_api(direct: bool, actor: str | None, settings: Settings | None = None) -> ApiClient | None:
    """The path a command takes: kaohe's API (this client) when an API token is configured
    and --direct is not given, else None: straight to Temporal. On the API path the actor
    comes from the token, so an --actor is refused."""
    settings = settings or get_settings()
    if direct or not (settings.api_token and settings.api_token.get_secret_value()):
        return None
    if actor is not None:
        raise fail(
            "--actor: through kaohe's API the actor is your token's principal with its role "
            "binding (KAOHE_API_TOKEN); leave --actor out, or use --direct (operators, with "
            "the workers' assertion keys)",
            code=2,
        )
    return ApiClient(settings.effective_api_url, settings.api_token.get_secret_value())


@contextmanager
def api_errors() -> Iterator[None]:
    """An ApiError ends the command with its message (exit 1)."""
    try:
        yield
    except ApiError as err:
        raise fail(escape(str(err))) from None


def print_queued(client: ApiClient, answer: dict[str, Any]) -> None:
    """A 202: the request id, and how to read what the unit answers."""
    request = answer["request"]
    console.print(
        f"queued: request {request}; read it with `kaohe request {request}` "
        f"(GET {client.url}/v1/requests/{request})",
        markup=False,
        soft_wrap=True,
    )
