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
from domain.actions import ACTIONS
from kaohe.access import api_keys
from kaohe.access.bindings import Binding, bindings_on
from kaohe.access.identity import Identity, TokenVerifier, Unauthenticated
from kaohe.api import problems
from kaohe.api.problems import Problem
from kaohe.api.queue import RequestQueue
from schemas.calibration import CategoryCalibration
from schemas.common import Role
from schemas.messages import ActionResult
from schemas.status import CampaignProgress, UnitStatus
from workflows.campaign import AssessmentCampaign, campaign_workflow_id, unit_workflow_id
from workflows.unit import UnitAssessment

log = structlog.get_logger("kaohe.api")

MAX_BODY_BYTES = 2_000_000  # Temporal's own limit for one payload


class Api:
    """What the routes share: the Temporal client (which signs), the database, the verifier."""

    def __init__(self, client: Client, pool: asyncpg.Pool, verifier: TokenVerifier) -> None:
        self.client = client
        self.pool = pool
        self.verifier = verifier
        self.queue = RequestQueue(pool, self.send)

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
        self, who: Identity | None, campaign: str, unit: str, what: str, problem: Problem
    ) -> None:
        """The audit row of an attempt the API refused: who (if known) tried what, and why."""
        workflow_id = unit_workflow_id(campaign, unit) if unit else campaign_workflow_id(campaign)
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
        try:
            # The update id makes a retry of the same action harmless (Temporal answers it
            # with the first outcome); the action's name in it lets the unit itself refuse a
            # key reused for another action.
            update_id = f"{update}:{payload['idempotency_key']}"
            return await handle.execute_update(
                update, payload, id=update_id, result_type=ActionResult
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == "Unauthorized":
                raise problems.forbidden(cause.message) from None
            raise problems.rejected(
                cause.message if isinstance(cause, ApplicationError) else str(cause)
            ) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise problems.not_found(f"no workflow {workflow_id}") from None
            raise


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise problems.invalid(f"(body): over {MAX_BODY_BYTES} bytes", None)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise problems.invalid("(body): not JSON", None) from None
    if not isinstance(body, dict):
        raise problems.invalid("(body): expected a JSON object", None)
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


def create_app(api: Api, *, jwks: dict[str, Any] | None = None) -> FastAPI:
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
        if rule is None:
            raise problems.not_found(f"action: no action {action!r}; actions: {', '.join(ACTIONS)}")
        binding = await authorized(request, who, campaign, unit, action, rule.roles, as_role)
        body = await _body(request)
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
        found = await api.queue.get(request_id, who.principal)
        if found is None:
            raise problems.not_found(f"no request {request_id} of yours")
        return found

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

    if jwks is not None:

        @app.get("/.well-known/jwks.json", include_in_schema=False)
        async def keys() -> dict[str, Any]:
            return jwks

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
