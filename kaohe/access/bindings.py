"""Role bindings: who is the department of a campaign, and the assessment group, approver,
contact, each cadre and the ballot system of each unit. An action's actor is built from the
authenticated principal and its binding on that unit, never from the request body."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from kaohe.access.changes import log_change
from schemas.common import Actor, Role
from schemas.roster import Roster

ALL_UNITS = ""
# The campaign of a codec binding: every payload of the namespace. A payload carries neither
# its campaign nor its unit (the UI sends only the namespace), so a codec binding scoped to a
# campaign would promise what the codec cannot check; no campaign id can be "*".
EVERY_CAMPAIGN = "*"
CODEC_ROLES = frozenset({Role.CODEC_DECODE, Role.CODEC_ENCODE})


@dataclass(frozen=True)
class Binding:
    campaign_id: str
    principal: str
    role: Role
    unit_id: str = ALL_UNITS  # ALL_UNITS: every unit of the campaign
    cadre_id: str = ""  # role cadre: the cadre this person is

    def actor(self) -> Actor:
        """The actor an action by this binding carries: a cadre acts as its cadre id (the
        checks compare it), everyone else as the principal."""
        return Actor(id=self.cadre_id or self.principal, role=self.role)

    def where(self) -> str:
        if self.role in CODEC_ROLES:
            return f"{self.role.value} of every payload (a payload names no campaign)"
        unit = f"unit {self.unit_id}" if self.unit_id else "every unit"
        cadre = f" as cadre {self.cadre_id}" if self.cadre_id else ""
        return f"{self.role.value} of {unit} of {self.campaign_id}{cadre}"


def _check(b: Binding) -> None:
    if (b.role in CODEC_ROLES) != (b.campaign_id == EVERY_CAMPAIGN):
        raise ValueError(
            "campaign_id: a codec binding is for every payload (a payload names neither its "
            "campaign nor its unit), and only a codec binding is"
        )
    if b.role in CODEC_ROLES and (b.unit_id or b.cadre_id):
        raise ValueError("unit_id: a codec binding is for every payload, not one unit's")
    if (b.role == Role.CADRE) != bool(b.cadre_id):
        raise ValueError("cadre_id: a cadre binding names its cadre, and only a cadre's does")
    if b.role == Role.CADRE and not b.unit_id:
        raise ValueError("unit_id: a cadre is bound on its own unit")


async def grant(conn: asyncpg.Connection, b: Binding, granted_by: str) -> bool:
    """True if new; granting it again changes nothing (and logs nothing)."""
    _check(b)
    async with conn.transaction():
        new = await conn.fetchval(
            """INSERT INTO role_bindings (campaign_id, unit_id, principal, role, cadre_id,
                                          granted_by)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true""",
            b.campaign_id,
            b.unit_id,
            b.principal,
            b.role.value,
            b.cadre_id,
            granted_by,
        )
        if new:
            await _log(conn, granted_by, "granted", b)
    return bool(new)


async def grant_many(conn: asyncpg.Connection, bindings: list[Binding], granted_by: str) -> int:
    """Many grants in one transaction (a roster's thousands); how many were new."""
    for b in bindings:
        _check(b)
    columns = (
        list(
            zip(
                *(
                    (b.campaign_id, b.unit_id, b.principal, b.role.value, b.cadre_id)
                    for b in bindings
                ),
                strict=True,
            )
        )
        if bindings
        else [[]] * 5
    )
    async with conn.transaction():
        rows = await conn.fetch(
            """INSERT INTO role_bindings (campaign_id, unit_id, principal, role, cadre_id,
                                          granted_by)
               SELECT c, u, p, r, x, $6
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                    AS t(c, u, p, r, x)
               ON CONFLICT DO NOTHING
               RETURNING campaign_id, unit_id, principal, role, cadre_id""",
            *(list(col) for col in columns),
            granted_by,
        )
        await conn.executemany(
            """INSERT INTO access_log (changed_by, change, principal, role, campaign_id,
                                       unit_id, detail)
               VALUES ($1, 'granted', $2, $3, $4, $5, $6::jsonb)""",
            [
                (
                    granted_by,
                    r["principal"],
                    r["role"],
                    r["campaign_id"],
                    r["unit_id"],
                    json.dumps({"cadre_id": r["cadre_id"]} if r["cadre_id"] else {}),
                )
                for r in rows
            ],
        )
    return len(rows)


async def revoke(conn: asyncpg.Connection, b: Binding, revoked_by: str) -> bool:
    async with conn.transaction():
        gone = await conn.fetchval(
            """DELETE FROM role_bindings
               WHERE campaign_id = $1 AND unit_id = $2 AND principal = $3 AND role = $4
                 AND cadre_id = $5 RETURNING true""",
            b.campaign_id,
            b.unit_id,
            b.principal,
            b.role.value,
            b.cadre_id,
        )
        if gone:
            await _log(conn, revoked_by, "revoked", b)
    return bool(gone)


async def _log(conn: asyncpg.Connection, by: str, change: str, b: Binding) -> None:
    await log_change(
        conn,
        by,
        change,
        b.principal,
        role=b.role.value,
        campaign_id=b.campaign_id,
        unit_id=b.unit_id,
        detail={"cadre_id": b.cadre_id} if b.cadre_id else None,
    )


def _binding(r: asyncpg.Record) -> Binding:
    return Binding(r["campaign_id"], r["principal"], Role(r["role"]), r["unit_id"], r["cadre_id"])


async def list_bindings(
    conn: asyncpg.Connection,
    campaign_id: str | None = None,
    unit_id: str | None = None,
    principal: str | None = None,
) -> list[Binding]:
    rows = await conn.fetch(
        """SELECT campaign_id, unit_id, principal, role, cadre_id FROM role_bindings
           WHERE ($1::text IS NULL OR campaign_id = $1)
             AND ($2::text IS NULL OR unit_id = $2 OR unit_id = '')
             AND ($3::text IS NULL OR principal = $3)
           ORDER BY campaign_id, unit_id, role, principal""",
        campaign_id,
        unit_id,
        principal,
    )
    return [_binding(r) for r in rows]


async def bindings_on(
    conn: asyncpg.Connection, principal: str, campaign_id: str, unit_id: str
) -> list[Binding]:
    """The principal's bindings that reach this unit: its own and the campaign-wide ones."""
    rows = await conn.fetch(
        """SELECT campaign_id, unit_id, principal, role, cadre_id FROM role_bindings
           WHERE principal = $1 AND campaign_id = $2 AND unit_id IN ($3, '')
           ORDER BY role, unit_id DESC""",
        principal,
        campaign_id,
        unit_id,
    )
    return [_binding(r) for r in rows]


def codec_binding(principal: str, role: Role) -> Binding:
    """PRINCIPAL may decode (or encode) workflow payloads through kaohe's codec."""
    return Binding(EVERY_CAMPAIGN, principal, role)


async def codec_roles(conn: asyncpg.Connection, principal: str) -> frozenset[Role]:
    """The codec roles the principal holds."""
    rows = await conn.fetch(
        """SELECT role FROM role_bindings
           WHERE principal = $1 AND campaign_id = $2 AND unit_id = ''""",
        principal,
        EVERY_CAMPAIGN,
    )
    return frozenset(Role(r["role"]) for r in rows if r["role"] in CODEC_ROLES)


def roster_bindings(roster: Roster) -> list[Binding]:
    """What a roster says of people: the department of the campaign; the assessment group,
    the approver and the contact of each unit; each cadre of its unit (the cadre id is the
    person until a site maps it to its identity provider's subject)."""
    c = roster.campaign_id
    out = [Binding(c, roster.department, Role.DEPARTMENT)]
    for unit in roster.units:
        u = unit.unit_id
        out.append(Binding(c, roster.assessment_group, Role.ASSESSMENT_GROUP, u))
        out.append(Binding(c, roster.approver, Role.APPROVER, u))
        if unit.contact:
            out.append(Binding(c, unit.contact, Role.UNIT, u))
        out += [Binding(c, x.cadre_id, Role.CADRE, u, x.cadre_id) for x in unit.cadres]
    return out
