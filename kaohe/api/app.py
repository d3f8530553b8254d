"""kaohe's API: the one door people and integrating systems use. Stateless (identities in
tokens, bindings and queued requests in PostgreSQL), so it scales by running more of it.

Every action is authenticated (a bearer token, or a system's API key), authorized against the
caller's role binding on that unit, and sent to the unit as an update carrying the actor the
binding gives and kaohe's assertion (the client's interceptor signs it). A caller who wants
no answer sends `Prefer: respond-async`: 202, and the request is retried durably until the
unit answers (kaohe/api/queue.py). Errors are RFC 9457 problem+json naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import structlog
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.audit_log import write_unattributed
from activities.talk_cipher import TalkCipher
from domain.actions import ACTIONS
from kaohe.access import api_keys
from kaohe.access.bindings import Binding, bindings_on, list_bindings
from kaohe.access.identity import Identity, TokenVerifier, Unauthenticated
from kaohe.api import problems
from kaohe.api.ballots import install_ballots
from kaohe.api.codec import CodecAccess, install_codec
from kaohe.api.problems import Problem
from kaohe.api.queue import RequestQueue
from kaohe.api.routes import read_limited
from kaohe.api.talks import install_talks
from kaohe.api.throttle import RefusalThrottle
from kaohe.api.vote import install_vote
from kaohe.ballot_intake import BallotIntake
from schemas.calibration import CategoryCalibration
from schemas.common import Identifier, Role
from schemas.limits import MAX_PAYLOAD_BYTES, first_bad_text, json_shape_problem, shown
from schemas.messages import ActionResult
from schemas.status import CampaignProgress, UnitStatus
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id
from workflows.unit import UnitAssessment

log = structlog.get_logger("kaohe.api")

MAX_BODY_BYTES = MAX_PAYLOAD_BYTES  # Temporal's own limit for one payload: 413 above it
_IDENTIFIER = re.compile(Identifier.__metadata__[0].pattern)
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_UPDATE_IDS = 100  # update ids a request may use up on transient storage failures (send)
FRESH_FAILURE_SECONDS = 5.0  # below the unit's storage retry (workflows/unit/io.STORAGE_RETRY)


class Api:
    """What the routes share: the Temporal client (which signs), the database, the verifier."""

    def __init__(
        self,
        client: Client,
        pool: asyncpg.Pool,
        verifier: TokenVerifier,
        talk_cipher: TalkCipher | None = None,
        *,
        vote_refusals_per_minute: int = 60,
    ) -> None:
        self.client = client
        self.pool = pool
        self.verifier = verifier
        self.talk_cipher = talk_cipher  # seals and opens talks (kaohe/api/talks.py)
        self.vote_throttle = RefusalThrottle(vote_refusals_per_minute)  # kaohe/api/vote.py
        self.queue = RequestQueue(pool, self.send)
        self.ballots = BallotIntake(client, pool)  # sheets (kaohe/api/ballots.py)

    # ---- who -------------------------------------------------------------------------------

    async def identify(self, authorization: str | None, api_key: str | None) -> Identity:
        if api_key:
            async with self.pool.acquire() as conn:
                return await api_keys.verify_key(conn, api_key)
        if not authorization:
            raise Unauthenticated("no credentials: send Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization: use the Bearer scheme")
        return await asyncio.to_thread(self.verifier.verify, token.strip())

    async def binding_for(
        self, who: Identity, campaign: str, unit: str, roles: frozenset[Role], as_role: Role | None
    ) -> Binding:
        async with self.pool.acquire() as conn:
            mine = await bindings_on(conn, who.principal, campaign, unit)
        fitting = [b for b in mine if b.role in roles and (as_role is None or b.role == as_role)]
        if fitting:
            return fitting[0]
        have = ", ".join(sorted({b.role.value for b in mine})) or "no role"
        need = ", ".join(sorted(r.value for r in roles))
        raise problems.forbidden(
            f"{who.principal} has {have} on unit {unit} of {campaign}; this needs {need}"
        )

    async def refused(
        self,
        who: Identity | None,
        campaign: str,
        unit: str,
        what: str,
        problem: Problem,
        *,
        workflow_id: str | None = None,
    ) -> None:
        """The audit row of an attempt the API refused: who (if known) tried what, and why;
        under the unit's (or campaign's) workflow id, or `workflow_id` for what has neither
        (the codec)."""
        # The path's ids as the caller sent them, shown safe (they may be anything).
        campaign, unit, what = shown(campaign), shown(unit), shown(what)
        if workflow_id is None:
            workflow_id = (
                unit_workflow_id(campaign, unit) if unit else campaign_workflow_id(campaign)
            )
        detail = {
            "principal": who.principal if who else None,
            "kind": who.kind if who else None,
            "attempted": what,
            "status": problem.status,
            "reason": problem.detail,
        }
        try:
            await write_unattributed(
                self.pool,
                workflow_id=workflow_id,
                campaign_id=campaign,
                unit_id=unit,
                stage="",
                kind="api_refused",
                detail=detail,
            )
        except (OSError, asyncpg.PostgresError):
            log.exception("could not record a refused request", **detail)
        log.warning("request refused", campaign=campaign, unit=unit, **detail)

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, workflow_id: str, update: str, payload: dict[str, Any]) -> ActionResult:
        handle = self.client.get_workflow_handle(workflow_id)
        # The update id makes a retry of the same action harmless (Temporal answers it with
        # the first outcome); the action's name in it lets the unit itself refuse a key
        # reused for another action. A transient storage failure is such an outcome too, so a
        # retry that gets it back at once asks the unit again under the next id (the unit's
        # idempotency key keeps that harmless): a failure of the unit's own now takes its whole
        # storage retry (over 15 s), an old one comes back in milliseconds.
        base = f"{update}:{payload['idempotency_key']}"
        loop = asyncio.get_running_loop()
        for n in range(MAX_UPDATE_IDS):
            began = loop.time()
            try:
                return await handle.execute_update(
                    update, payload, id=base if n == 0 else f"{base}:{n}", result_type=ActionResult
                )
            except WorkflowUpdateFailedError as err:
                cause = err.cause
                stale = loop.time() - began < FRESH_FAILURE_SECONDS
                if _storage_unavailable(cause) and stale and n < MAX_UPDATE_IDS - 1:
                    continue
                raise _problem_of(cause) from None
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    raise problems.not_found(f"no workflow {workflow_id}") from None
                raise
        raise AssertionError("unreachable")


def _storage_unavailable(cause: BaseException | None) -> bool:
    return (
        isinstance(cause, ApplicationError)
        and cause.type == "StorageUnavailable"
        and not cause.non_retryable
    )


def _problem_of(cause: BaseException | None) -> Problem:
    """The problem a unit's refusal of an update is (its retryable flag the unit's)."""
    if not isinstance(cause, ApplicationError):
        return problems.rejected(str(cause))
    if cause.type == "Unauthorized":
        return problems.forbidden(cause.message)
    if _storage_unavailable(cause):
        return problems.unavailable(cause.message)
    return problems.rejected(cause.message, retryable=not cause.non_retryable)


async def _raw_body(request: Request) -> bytes:
    """The body, read no further than MAX_BODY_BYTES (413 beyond)."""
    too_large = problems.too_large(
        f"(body): over the limit of {MAX_BODY_BYTES} bytes", MAX_BODY_BYTES
    )
    return await read_limited(request, MAX_BODY_BYTES, too_large)


async def _body(request: Request) -> dict[str, Any]:
    """The action's fields: a JSON object within the limits (schemas/limits.py: size, depth,
    text), checked before it is parsed or sent on."""
    raw = await _raw_body(request)
    problem = json_shape_problem(raw)
    if problem is not None:
        raise problems.invalid(problem.replace("(payload)", "(body)"), "(body)")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise problems.invalid("(body): not JSON", None) from None
    if not isinstance(body, dict):
        raise problems.invalid("(body): expected a JSON object", None)
    bad = first_bad_text(body, raw)
    if bad is not None:
        raise problems.invalid(f"{bad[0]}: {bad[1]}", bad[0])
    if "actor" in body:
        raise problems.invalid(
            "actor: comes from your credentials and your role on the unit; leave it out",
            "actor",
        )
    if not isinstance(body.get("idempotency_key"), str) or not body["idempotency_key"]:
        raise problems.invalid("idempotency_key: required, a string", "idempotency_key")
    return body


async def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Identity | None:
    """Who calls, or None with the reason kept for the refusal (recorded with the target)."""
    try:
        return await request.app.state.api.identify(authorization, x_api_key)
    except Unauthenticated as err:
        request.state.unauthenticated = str(err)
        return None


Caller = Annotated[Identity | None, Depends(caller)]


def _unit_of(b: Binding, workflow_id: str) -> tuple[str, str] | None:
    """(campaign, unit) if `workflow_id` is the workflow of a unit this binding reaches."""
    if b.unit_id:
        hit = unit_workflow_id(b.campaign_id, b.unit_id) == workflow_id
        return (b.campaign_id, b.unit_id) if hit else None
    prefix = unit_workflow_id(b.campaign_id, "")
    unit = workflow_id[len(prefix) :] if workflow_id.startswith(prefix) else ""
    return (b.campaign_id, unit) if unit else None


def create_app(
    api: Api, *, jwks: dict[str, Any] | None = None, codec: CodecAccess | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with api.queue.running():
            yield

    app = FastAPI(
        title="kaohe",
        version="0.1.0",
        summary="The annual assessment's API: actions, status and progress, per identity.",
        lifespan=lifespan,
    )
    app.state.api = api
    problems.install(app)

    async def authorized(
        request: Request,
        who: Identity | None,
        campaign: str,
        unit: str,
        what: str,
        roles: frozenset[Role],
        as_role: Role | None,
    ) -> Binding:
        try:
            for name, value in (("campaign", campaign), ("unit", unit)):
                if value and not _IDENTIFIER.fullmatch(value):
                    raise problems.invalid(
                        f"{name}: {shown(value)!r} is not an id (letters, digits, _ . -)", name
                    )
            if who is None:
                raise problems.unauthenticated(request.state.unauthenticated)
            return await api.binding_for(who, campaign, unit, roles, as_role)
        except Problem as problem:
            await api.refused(who, campaign, unit, what, problem)
            raise

    @app.post(
        "/v1/campaigns/{campaign}/units/{unit}/actions/{action}",
        response_model=ActionResult,
        responses={202: {"description": "Queued (Prefer: respond-async)"}},
    )
    async def act(
        request: Request,
        campaign: str,
        unit: str,
        action: str,
        who: Caller,
        as_role: Annotated[Role | None, Query(alias="as")] = None,
        prefer: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Take an action on a unit, as the role your binding gives you there (`as` picks one
        if you have several). The body is the action's fields, without `actor`."""
        rule = ACTIONS.get(action)
        if action == "record_ballots":
            raise problems.not_found(
                "action: ballot sheets never go to the unit; send them to "
                f"POST /v1/campaigns/{campaign}/units/{unit}/ballots"
            )
        if rule is None:
            raise problems.not_found(f"action: no action {action!r}; actions: {', '.join(ACTIONS)}")
        binding = await authorized(request, who, campaign, unit, action, rule.roles, as_role)
        body = await _body(request)
        if action == "record_talk" and "content" in body:
            raise problems.invalid(
                "content: a talk's content never goes to the unit; send the talk to "
                f"POST /v1/campaigns/{campaign}/units/{unit}/talks",
                "content",
            )
        payload = {**body, "actor": binding.actor().model_dump(mode="json")}
        workflow_id = unit_workflow_id(campaign, unit)
        if prefer and "respond-async" in prefer.lower():
            assert who is not None
            queued = await api.queue.put(who.principal, workflow_id, action, payload)
            return JSONResponse(
                {"request": queued, "state": "queued"},
                status_code=202,
                headers={"Location": f"/v1/requests/{queued}"},
            )
        return await api.send(workflow_id, action, payload)

    @app.get("/v1/requests/{request_id}")
    async def request_state(request: Request, request_id: str, who: Caller) -> dict[str, Any]:
        """A queued request: queued, accepted (with the unit's answer) or rejected (why)."""
        if who is None:
            raise problems.unauthenticated(request.state.unauthenticated)
        found = (
            await api.queue.get(request_id, who.principal)
            if _REQUEST_ID.fullmatch(request_id)
            else None
        )
        if found is None:
            raise problems.not_found(f"no request {request_id} of yours")
        return found

    @app.get("/v1/units/{workflow_id}")
    async def which_unit(request: Request, workflow_id: str, who: Caller) -> dict[str, str]:
        """The campaign and unit of a unit's workflow id (`kaohe-CAMPAIGN-UNIT` does not
        split by itself when the ids have hyphens), among the units you have a role on."""
        if who is None:
            raise problems.unauthenticated(request.state.unauthenticated)
        async with api.pool.acquire() as conn:
            mine = await list_bindings(conn, principal=who.principal)
        found = sorted({pair for b in mine if (pair := _unit_of(b, workflow_id))})
        if not found:
            raise problems.not_found(f"no unit {workflow_id} that you have a role on")
        if len(found) > 1:
            named = " or ".join(f"{c}/{u}" for c, u in found)
            raise problems.invalid(f"workflow_id: {workflow_id} is {named}; name one", None)
        (campaign, unit), *_ = found
        return {"workflow_id": workflow_id, "campaign": campaign, "unit": unit}

    @app.get("/v1/campaigns/{campaign}/units/{unit}/status", response_model=UnitStatus)
    async def unit_status(request: Request, campaign: str, unit: str, who: Caller) -> Any:
        """The unit's status, for anyone with a role on it (grades stay sealed until
        published)."""
        await authorized(request, who, campaign, unit, "status", frozenset(Role), None)
        handle = api.client.get_workflow_handle_for(
            UnitAssessment.run, unit_workflow_id(campaign, unit)
        )
        try:
            return await handle.query(UnitAssessment.status)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise problems.not_found(f"no unit {unit} in campaign {campaign}") from None
            raise

    def campaign_handle(campaign: str):
        return api.client.get_workflow_handle_for(
            AssessmentCampaign.run, campaign_workflow_id(campaign)
        )

    department = frozenset({Role.DEPARTMENT})

    @app.get("/v1/campaigns/{campaign}/progress", response_model=CampaignProgress)
    async def progress(request: Request, campaign: str, who: Caller) -> Any:
        await authorized(request, who, campaign, "", "progress", department, None)
        return await campaign_handle(campaign).query(AssessmentCampaign.progress)

    @app.get("/v1/campaigns/{campaign}/calibration", response_model=list[CategoryCalibration])
    async def calibration(request: Request, campaign: str, who: Caller) -> Any:
        await authorized(request, who, campaign, "", "calibration", department, None)
        return await campaign_handle(campaign).query(AssessmentCampaign.calibration)

    @app.post("/v1/campaigns/{campaign}/calibration/decisions", response_model=ActionResult)
    async def decide(request: Request, campaign: str, who: Caller) -> Any:
        """The department allows a held proposal beyond the pooled quota, or returns it."""
        binding = await authorized(
            request, who, campaign, "", "decide_calibration", department, None
        )
        body = await _body(request)
        payload = {**body, "actor": binding.actor().model_dump(mode="json")}
        return await api.send(campaign_workflow_id(campaign), "decide_calibration", payload)

    install_talks(app, api, authorized, Caller, _body)
    install_ballots(app, api, authorized, Caller, _body)
    # The Temporal UI's codec, as the caller (kaohe/api/codec.py): `codec` names the UI
    # origins CORS allows and, on the dev stack, the issuer of its login.
    install_codec(app, api, codec or CodecAccess())
    install_vote(app, api)  # the raters' voting page and the receipts (public)

    if jwks is not None:

        @app.get("/.well-known/jwks.json", include_in_schema=False)
        async def keys() -> dict[str, Any]:
            return jwks

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
