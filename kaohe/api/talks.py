"""Talks through kaohe's API: their content is stored here, encrypted, and never sent to a
workflow (issue 20).

`POST /v1/campaigns/{c}/units/{u}/talks` (a role that may record_talk on the unit) stores the
talk with the talk key (activities/talk_store.py) and sends the unit a `record_talk` update
with the reference, the digest and the metadata, under the actor the caller's binding gives:
one call, answered with the unit's ActionResult, the reference and the digest. `GET
.../talks/{talk_ref}` is for the unit's assessment group alone, and each read leaves a
`talk_read` audit row naming the reader.
"""

# No `from __future__ import annotations`: the routes' annotations name the Caller dependency
# create_app passes in, so they are evaluated where the routes are defined.

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse

from activities.talk_store import Reader, TalkConflict, UnknownUnit, read_talk, store_talk
from domain.actions import ACTIONS
from kaohe.api import problems
from kaohe.api.routes import Authorized, body_as
from schemas.common import Role
from schemas.messages import TalkRef
from schemas.talks import Talk, TalkRecorded, TalkView
from workflows.campaign import unit_workflow_id

READERS = frozenset({Role.ASSESSMENT_GROUP})
TALK_REF = re.compile(TalkRef.__metadata__[0].pattern)


def install_talks(
    app: FastAPI,
    api: Any,  # kaohe.api.app.Api (its module imports this one)
    authorized: Authorized,
    caller: Any,
    body_of: Callable[[Request], Awaitable[dict[str, Any]]],
) -> None:
    record_roles = ACTIONS["record_talk"].roles

    def cipher():  # type: ignore[no-untyped-def]
        if api.talk_cipher is None:
            raise problems.Problem(
                503, "no-talk-keys", "Talks unavailable", "this API runs without talk keys"
            )
        return api.talk_cipher

    @app.post(
        "/v1/campaigns/{campaign}/units/{unit}/talks",
        response_model=TalkRecorded,
        responses={202: {"description": "Stored and queued (Prefer: respond-async)"}},
    )
    async def record_talk(
        request: Request,
        campaign: str,
        unit: str,
        who: caller,  # type: ignore[valid-type]
        as_role: Annotated[Role | None, Query(alias="as")] = None,
        prefer: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Record an individual talk: its content is stored encrypted, and the unit gets a
        `record_talk` with its reference and digest (never the content)."""
        binding = await authorized(
            request, who, campaign, unit, "record_talk", record_roles, as_role
        )
        talk = body_as(Talk, await body_of(request))
        workflow_id = unit_workflow_id(campaign, unit)
        assert who is not None
        try:
            stored = await store_talk(api.pool, cipher(), workflow_id, talk, who.principal)
        except UnknownUnit:
            raise problems.not_found(f"no unit {unit} in campaign {campaign}") from None
        except TalkConflict as err:
            raise problems.rejected(str(err)) from None
        payload = {
            **talk.model_dump(mode="json", exclude={"content"}),
            **stored.model_dump(mode="json"),
            "actor": binding.actor().model_dump(mode="json"),
        }
        if prefer and "respond-async" in prefer.lower():
            queued = await api.queue.put(who.principal, workflow_id, "record_talk", payload)
            return JSONResponse(
                {"request": queued, "state": "queued", **stored.model_dump(mode="json")},
                status_code=202,
                headers={"Location": f"/v1/requests/{queued}"},
            )
        result = await api.send(workflow_id, "record_talk", payload)
        return TalkRecorded(**result.model_dump(), **stored.model_dump())

    @app.get("/v1/campaigns/{campaign}/units/{unit}/talks/{talk_ref}", response_model=TalkView)
    async def read(
        request: Request,
        campaign: str,
        unit: str,
        talk_ref: str,
        who: caller,  # type: ignore[valid-type]
    ) -> Any:
        """A talk's content, for the unit's assessment group; the read is audited."""
        binding = await authorized(request, who, campaign, unit, "read_talk", READERS, None)
        assert who is not None
        if not TALK_REF.fullmatch(talk_ref):
            raise problems.invalid(
                "talk_ref: not a talk reference (talk- and 32 hex digits)", "talk_ref"
            )
        reader = Reader(who.principal, binding.role, who.kind)
        found = await read_talk(
            api.pool, cipher(), unit_workflow_id(campaign, unit), talk_ref, reader
        )
        if found is None:
            raise problems.not_found(f"no talk {talk_ref} on unit {unit} of {campaign}")
        return found
