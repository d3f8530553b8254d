"""Starting a campaign: its roster goes in the workflow input, or into PostgreSQL first when
it is too large for one (Temporal refuses payloads over 2 MB; a campaign's input is also
carried over every continue-as-new)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.rosters import store_roster
from domain.calendar import campaign_years, with_package_years
from kaohe.access.bindings import grant_many, roster_bindings
from kaohe.ingest.roster_io import load_policy
from schemas.policy import Policy
from schemas.roster import Roster
from schemas.workflow_io import CampaignInput
from workflows.campaign import AssessmentCampaign, campaign_workflow_id

# Rosters above this (about 200 units) are stored, not inlined.
INLINE_ROSTER_BYTES = 256 * 1024
# A campaign continues as new past this many events: a worker that lost it from its cache
# replays at most this much (about 0.4 s; 2,300 events took 0.9 s, 2 to 10 s on a loaded
# 2-core machine, where a workflow task times out after 10 s and is replayed again).
CAMPAIGN_HISTORY_LIMIT = 1000


class RosterTooLarge(Exception):
    """A roster that must be stored, with no database to store it in."""


async def start_campaign(
    client: Client,
    roster: Roster,
    task_queue: str,
    policy: Policy | None = None,
    *,
    database_url: str | None = None,
    inline_limit: int = INLINE_ROSTER_BYTES,
    max_concurrent_starts: int | None = None,
    history_limit: int | None = CAMPAIGN_HISTORY_LIMIT,
) -> tuple[str, bool]:
    """Starts the campaign workflow; (workflow id, False) if it already exists. With a
    database, the roster's people get their role bindings (granting again changes nothing)."""
    workflow_id = campaign_workflow_id(roster.campaign_id)
    policy = policy or load_policy(None, roster.year)
    # The years the campaign reaches travel with it (calendar_warnings says which are missing).
    policy, _ = with_package_years(policy, campaign_years(roster.year, dt.date.today()))
    # Built (and so validated) once, with either the roster or where it is stored.
    options: dict[str, Any] = {"policy": policy, "history_limit": history_limit}
    if max_concurrent_starts is not None:
        options["max_concurrent_starts"] = max_concurrent_starts
    size = len(roster.model_dump_json())
    if size <= inline_limit:
        options["roster"] = roster
    elif database_url is None:
        raise RosterTooLarge(
            f"the roster is {size // 1024} kB, above the {inline_limit // 1024} kB a workflow "
            "input takes: it is stored in PostgreSQL first, so give the database "
            "(KAOHE_DATABASE_URL)"
        )
    if database_url is not None:
        conn = await asyncpg.connect(database_url)
        try:
            if "roster" not in options:
                options["stored_roster"] = await store_roster(conn, roster)
            # Who the roster names as department, group, approver, contact and cadres.
            await grant_many(conn, roster_bindings(roster), f"roster:{roster.campaign_id}")
        finally:
            await conn.close()
    try:
        await client.start_workflow(
            AssessmentCampaign.run,
            CampaignInput(**options),
            id=workflow_id,
            task_queue=task_queue,
            # A terminated or failed campaign may be started again (its units are not
            # restarted: they are rejected as duplicates); a running or completed one not.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"{roster.title} · {len(roster.units)} units",
        )
    except WorkflowAlreadyStartedError:
        return workflow_id, False
    return workflow_id, True
