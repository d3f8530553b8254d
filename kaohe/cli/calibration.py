"""`kaohe calibration ...`: the department's view and decisions on cross-unit calibration
(a policy with grading.excellent_quota_scope = "category"; see schemas/calibration.py).

kaohe/cli/main.py mounts it as `calibration`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.service import RPCError

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
Actor = Annotated[str, typer.Option("--actor", help="ID:ROLE of the department.")]


@calibration_app.command("show")
def show(campaign: str) -> None:
    """Each category's pooled quota, the 优秀 cleared against it and the proposals on hold."""
    settings = get_settings()

    async def go() -> list[CategoryCalibration]:
        handle = (await connect(settings)).get_workflow_handle_for(
            AssessmentCampaign.run, campaign_workflow_id(campaign)
        )
        return await handle.query(AssessmentCampaign.calibration)

    try:
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


def _decide(campaign: str, unit: str, decision: str, reason: str, actor: str) -> None:
    try:
        action = DecideCalibration(
            idempotency_key=f"calibration-{uuid.uuid4()}",
            actor=parse_actor(actor),
            unit_id=unit,
            decision=decision,  # type: ignore[arg-type]
            reason=reason,
        )
    except ValidationError as err:
        raise fail(format_validation_error(err)) from err
    settings = get_settings()

    async def go() -> ActionResult:
        handle = (await connect(settings)).get_workflow_handle_for(
            AssessmentCampaign.run, campaign_workflow_id(campaign)
        )
        return await handle.execute_update(
            AssessmentCampaign.decide_calibration, action, id=action.idempotency_key
        )

    console.print(run_update(go(), "decide_calibration").message)


@calibration_app.command("allow")
def allow(campaign: str, unit: str, reason: Reason, actor: Actor = "department:department") -> None:
    """Allow a held proposal beyond the category's pooled quota."""
    _decide(campaign, unit, "allow", reason, actor)


@calibration_app.command("return")
def return_(
    campaign: str, unit: str, reason: Reason, actor: Actor = "department:department"
) -> None:
    """Return a held proposal to the unit's assessment group."""
    _decide(campaign, unit, "return", reason, actor)
