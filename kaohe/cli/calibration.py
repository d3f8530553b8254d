"""`kaohe calibration ...`: the department's view and decisions on cross-unit calibration
(a policy with grading.excellent_quota_scope = "category"; see schemas/calibration.py).

kaohe/cli/main.py mounts it as `calibration`. With KAOHE_API_TOKEN both go through kaohe's
API as the token's principal (kaohe/cli/api_client.py), else straight to Temporal.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.service import RPCError

from kaohe.cli.api_client import FROM_TOKEN, DirectOption, api_errors, route, via_api
from kaohe.cli.common import console, fail, parse_actor, run, run_update
from kaohe.client import connect
from kaohe.settings import get_settings
from schemas.calibration import CategoryCalibration, DecideCalibration
from schemas.errors import format_validation_error
from schemas.messages import ActionResult
from workflows.campaign import AssessmentCampaign, campaign_workflow_id

calibration_app = typer.Typer(
    help="Cross-unit calibration of 优秀 (a quota pooled per category).", no_args_is_help=True
)

Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit table).")]
Actor = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="ID:ROLE of the department, straight to Temporal (default department:department).",
    ),
]
DEPARTMENT = "department:department"


@calibration_app.command("show")
def show(campaign: str, direct: DirectOption = False) -> None:
    """Each category's pooled quota, the 优秀 cleared against it and the proposals on hold."""
    settings = get_settings()
    api = via_api(direct, None, settings)

    async def go() -> list[CategoryCalibration]:
        handle = (await connect(settings)).get_workflow_handle_for(
            AssessmentCampaign.run, campaign_workflow_id(campaign)
        )
        return await handle.query(AssessmentCampaign.calibration)

    try:
        if api is not None:
            with api_errors():
                found = api.call("GET", route("/v1/campaigns/{}/calibration", campaign))
            views = [CategoryCalibration.model_validate(v) for v in found]
        else:
            views = run(go())
    except RPCError as err:
        raise fail(str(err)) from err
    table = Table(title=f"calibration of {campaign}")
    for column in ("category", "ratio", "graded", "quota", "优秀 cleared", "on hold"):
        table.add_column(column)
    for v in views:
        row = (v.category, v.ratio, str(v.graded), str(v.quota), str(v.reserved))
        table.add_row(*row, ", ".join(v.held) or "-")
    console.print(table)


def _decide(
    campaign: str, unit: str, decision: str, reason: str, actor: str | None, direct: bool
) -> None:
    settings = get_settings()
    api = via_api(direct, actor, settings)
    try:
        action = DecideCalibration(
            idempotency_key=f"calibration-{uuid.uuid4()}",
            actor=FROM_TOKEN if api else parse_actor(actor or DEPARTMENT),
            unit_id=unit,
            decision=decision,  # type: ignore[arg-type]
            reason=reason,
        )
    except ValidationError as err:
        raise fail(format_validation_error(err)) from err
    if api is not None:  # the API puts in the actor of the token's binding
        body = action.model_dump(mode="json", exclude={"actor"})
        with api_errors():
            answer = api.call(
                "POST", route("/v1/campaigns/{}/calibration/decisions", campaign), body
            )
        console.print(ActionResult.model_validate(answer).message)
        return

    async def go() -> ActionResult:
        handle = (await connect(settings)).get_workflow_handle_for(
            AssessmentCampaign.run, campaign_workflow_id(campaign)
        )
        return await handle.execute_update(
            AssessmentCampaign.decide_calibration, action, id=action.idempotency_key
        )

    console.print(run_update(go(), "decide_calibration").message)


@calibration_app.command("allow")
def allow(
    campaign: str, unit: str, reason: Reason, actor: Actor = None, direct: DirectOption = False
) -> None:
    """Allow a held proposal beyond the category's pooled quota."""
    _decide(campaign, unit, "allow", reason, actor, direct)


@calibration_app.command("return")
def return_(
    campaign: str, unit: str, reason: Reason, actor: Actor = None, direct: DirectOption = False
) -> None:
    """Return a held proposal to the unit's assessment group."""
    _decide(campaign, unit, "return", reason, actor, direct)
