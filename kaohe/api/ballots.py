"""Ballot sheets through kaohe's API, never through a workflow (issue 20).

`POST /v1/campaigns/{c}/units/{u}/ballots` (the unit's ballot system, role integrator) takes
a batch of sheets with their one-time tokens: checked against the unit's ballot, the tokens
spent and the sheets pooled (kaohe/ballot_intake.py); each sheet gets a receipt code. The
unit hears of them only as pool batches, by count and checksum.
"""

# No `from __future__ import annotations`: the routes' annotations name the Caller dependency
# create_app passes in, so they are evaluated where the routes are defined.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request

from domain.actions import ACTIONS
from kaohe.api import problems
from kaohe.api.routes import Authorized, body_as
from kaohe.ballot_intake import SheetsRefused, SheetsUnavailable, submission_key
from schemas.ballots import SheetsSubmission, SheetsTaken
from schemas.common import Role
from workflows.campaign import unit_workflow_id


def install_ballots(
    app: FastAPI,
    api: Any,  # kaohe.api.app.Api (its module imports this one)
    authorized: Authorized,
    caller: Any,
    body_of: Callable[[Request], Awaitable[dict[str, Any]]],
) -> None:
    roles = ACTIONS["register_ballot_batch"].roles

    @app.post("/v1/campaigns/{campaign}/units/{unit}/ballots", response_model=SheetsTaken)
    async def record_ballots(
        request: Request,
        campaign: str,
        unit: str,
        who: caller,  # type: ignore[valid-type]
        as_role: Annotated[Role | None, Query(alias="as")] = None,
    ) -> Any:
        """Take a batch of ballot sheets (all or none): their tokens are spent, the sheets
        pooled and counted once enough of their rater group are in; a receipt per sheet."""
        binding = await authorized(request, who, campaign, unit, "record_ballots", roles, as_role)
        submission = body_as(SheetsSubmission, await body_of(request))
        assert who is not None
        key = submission_key("batch", who.principal, submission.idempotency_key)
        try:
            intake = await api.ballots.submit(
                unit_workflow_id(campaign, unit), submission.sheets, key, actor=binding.actor()
            )
        except SheetsRefused as err:
            raise problems.rejected(str(err)) from None
        except SheetsUnavailable as err:
            raise problems.unavailable(str(err)) from None
        return SheetsTaken(
            receipts=intake.receipts,
            duplicate=intake.duplicate,
            counted_batches=len(intake.answers),
        )
