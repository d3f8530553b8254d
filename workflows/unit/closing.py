"""close_stage: a stage closed early, with a reason (not grading; result use only once its
follow-ups are closed; domain/actions.py checks that)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.common import Stage
    from schemas.messages import CloseStage
    from workflows.unit import evaluation
    from workflows.unit.context import Unit


async def close_stage(u: Unit, a: CloseStage) -> str:
    closed = u.state.stage
    if closed == Stage.EVALUATION:
        await evaluation.finish(u, a.reason)
    await u.advance(a.reason, a.actor)
    return f"stage {closed.value} closed early: {a.reason}"
