"""Rosters too large for a workflow input: stored by `kaohe start`, read back by the campaign.

`store_roster` runs on the client side (the CLI, a script); `load_roster_units` is the
campaign's activity reading one page of units.
"""

from __future__ import annotations

import hashlib

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.rules import graded_by_category
from schemas.roster import Roster
from schemas.workflow_io import RosterPage, RosterUnit, StoredRoster


async def store_roster(conn: asyncpg.Connection, roster: Roster) -> StoredRoster:
    """Stores the roster's units (once per digest: storing it again writes nothing) and
    returns the reference a campaign input carries instead of the roster."""
    digest = hashlib.sha256(roster.model_dump_json().encode()).hexdigest()
    stored = StoredRoster(
        header=roster.header(),
        digest=digest,
        units_total=len(roster.units),
        graded_by_category=graded_by_category(roster.units),
    )
    async with conn.transaction():
        # One writer per roster at a time; a second one finds it complete and leaves.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1 || $2))", roster.campaign_id, digest
        )
        have = await conn.fetchval(
            "SELECT count(*) FROM campaign_roster_units WHERE campaign_id = $1 AND digest = $2",
            roster.campaign_id,
            digest,
        )
        if have == len(roster.units):
            return stored
        await conn.execute(
            "DELETE FROM campaign_roster_units WHERE campaign_id = $1 AND digest = $2",
            roster.campaign_id,
            digest,
        )
        await conn.copy_records_to_table(
            "campaign_roster_units",
            columns=["campaign_id", "digest", "unit_no", "unit_id", "spec"],
            records=(
                (
                    roster.campaign_id,
                    digest,
                    no,
                    unit.unit_id,
                    RosterUnit(unit=unit, contacts=roster.contacts_of(unit)).model_dump_json(),
                )
                for no, unit in enumerate(roster.units)
            ),
        )
    return stored


class RosterActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def load_roster_units(self, page: RosterPage) -> list[RosterUnit]:
        """Units `offset` .. `offset + count - 1` of a stored roster, in roster order."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT spec::text FROM campaign_roster_units
                   WHERE campaign_id = $1 AND digest = $2 AND unit_no >= $3
                   ORDER BY unit_no LIMIT $4""",
                page.campaign_id,
                page.digest,
                page.offset,
                page.count,
            )
        if len(rows) != page.count:
            # Not retried: the roster was never (fully) stored under this digest, which
            # waiting does not fix. The campaign fails and can be started again once it is.
            raise ApplicationError(
                f"stored_roster.digest: {page.digest} of campaign {page.campaign_id} has "
                f"{len(rows)} units from unit {page.offset}, expected {page.count}; "
                "store the roster again (kaohe start does)",
                type="RosterNotStored",
                non_retryable=True,
            )
        return [RosterUnit.model_validate_json(r["spec"]) for r in rows]
