"""`kaohe demo`: the sample campaign, driven live by simulated integrators.

Units move at staggered times so the Temporal UI shows every stage at once; the last unit
is left waiting in `talks`, so `KaoheStage="talks"` always finds one to look at.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rich.console import Console
from temporalio.client import WorkflowExecutionStatus

from activities.db import create_pool
from kaohe.client import connect
from kaohe.ingest.ballot_io import token_source
from kaohe.ingest.roster_io import load_policy
from kaohe.keys import talk_cipher
from kaohe.settings import Settings
from kaohe.sim.simulate import drive_unit, talk_store, wait_started
from schemas.common import Stage
from schemas.messages import ActionResult
from schemas.policy import DemoClock
from schemas.roster import Roster
from schemas.search_attributes import STAGE
from workflows.campaign import unit_workflow_id

console = Console()


async def run_demo(settings: Settings, roster: Roster, *, pace: float = 2.0) -> None:
    from kaohe.starter import start_campaign

    client = await connect(settings)
    policy = load_policy(None, roster.year)
    pool = await create_pool(settings.effective_database_url, 1, 2)
    # reissue: a rerun of the demo replaces the unused tokens of the run before.
    tokens = token_source(pool, reissue=True)
    talks = talk_store(pool, talk_cipher(settings))
    # A short publicity (公示) so the demo's units finish while you watch.
    demo_policy = policy.model_copy(update={"demo_clock": DemoClock(publicity_seconds=pace * 5)})
    workflow_id, new = await start_campaign(client, roster, settings.task_queue, demo_policy)
    console.print(
        f"[bold]demo campaign[/] {workflow_id} "
        f"{'started' if new else 'already exists: driving its units on'}"
    )
    ui = f"http://127.0.0.1:{settings.temporal_ui_port}"
    query = f'KaoheCampaign="{roster.campaign_id}"'
    # soft_wrap: never break the URL or the command (rich wraps at 80 columns in a log file).
    console.print(
        f"  watch it: {ui}/namespaces/{settings.temporal_namespace}/workflows?query={query}",
        soft_wrap=True,
    )
    temporal = Path(sys.executable).parent / "temporal"
    console.print(f"  or: {temporal} workflow list --query '{query}'", soft_wrap=True)

    async def drive(i: int) -> None:
        unit = roster.units[i]
        await asyncio.sleep(i * pace * 2)
        hold = Stage.TALKS if i == len(roster.units) - 1 and len(roster.units) > 1 else None
        wf_id = unit_workflow_id(roster.campaign_id, unit.unit_id)
        described = await wait_started(client, wf_id)
        if described.status != WorkflowExecutionStatus.RUNNING:
            # A rerun of the demo: a closed unit takes no more updates.
            stage = described.typed_search_attributes.get(STAGE)
            console.print(f"[green]{unit.unit_id}[/] already [bold]{stage}[/]")
            return

        def show(name: str, result: ActionResult) -> None:
            console.print(
                f"  {unit.unit_id:>8} {name:<20} -> {result.stage.value:<11} {result.message}"
            )

        status = await drive_unit(
            client,
            wf_id,
            unit,
            tokens=tokens,
            talks=talks,
            policy=policy,
            pace=pace,
            stop_at=hold,
            on_step=show,
        )
        console.print(f"[green]{unit.unit_id}[/] now in [bold]{status.stage.value}[/]")

    try:
        await asyncio.gather(*(drive(i) for i in range(len(roster.units))))
    finally:
        await pool.close()
    console.print(
        "[bold green]demo done[/]: units completed; the last one waits in talks. "
        "Ctrl-C stops the stack."
    )
