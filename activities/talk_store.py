"""The talk store (table talk_store, schemas/sql/016_talk_store.sql): a talk's content is kept
here, AES-256-GCM under the talk key, and never passes through a workflow's history.

kaohe's API stores a talk (`store_talk`) and sends the unit a RecordTalk with the reference,
the digest and the metadata; the unit's activity (`accept_talk`) checks them against the row
and counts the talk in `talks`; the unit's assessment group reads it (`read_talk`), each read
leaving a `talk_read` audit row that names the reader.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from activities.audit_log import Entry, recorded, write_audit
from activities.talk_cipher import TalkCipher
from schemas.common import Actor, Role, Stage
from schemas.messages import RecordTalk
from schemas.talks import StoredTalk, Talk, TalkView, talk_digest
from schemas.workflow_io import TalkRecord, UnitRef

FACTS = ("talk_id", "interviewer", "interviewee_role", "talk_date")


class TalkConflict(ValueError):
    """The idempotency key was used on this unit for another talk; the text names the field."""


class UnknownUnit(LookupError):
    """No unit with this workflow id is registered (its workflow has not started)."""


def _associated(workflow_id: str, talk_ref: str) -> str:
    return f"{workflow_id}/{talk_ref}"


async def store_talk(
    pool: asyncpg.Pool, cipher: TalkCipher, workflow_id: str, talk: Talk, stored_by: str
) -> StoredTalk:
    """Seals and stores the talk; its reference and digest. The same idempotency key with
    the same talk answers the first reference (nothing stored twice); with another talk, it
    is a TalkConflict."""
    digest = talk_digest(talk.content)
    talk_ref = f"talk-{uuid.uuid4().hex}"
    nonce, ciphertext = cipher.seal(talk.content, _associated(workflow_id, talk_ref))
    async with pool.acquire() as conn:
        try:
            new = await conn.fetchval(
                """INSERT INTO talk_store (talk_ref, workflow_id, idempotency_key, talk_id,
                                           interviewer, interviewee_role, talk_date, digest,
                                           key_id, nonce, ciphertext, stored_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                   ON CONFLICT (workflow_id, idempotency_key) DO NOTHING RETURNING talk_ref""",
                talk_ref,
                workflow_id,
                talk.idempotency_key,
                talk.talk_id,
                talk.interviewer,
                talk.interviewee_role,
                talk.talk_date,
                digest,
                cipher.key_id,
                nonce,
                ciphertext,
                stored_by,
            )
        except asyncpg.ForeignKeyViolationError:
            raise UnknownUnit(workflow_id) from None
        if new is not None:
            return StoredTalk(talk_ref=new, digest=digest)
        first = await conn.fetchrow(
            "SELECT * FROM talk_store WHERE workflow_id = $1 AND idempotency_key = $2",
            workflow_id,
            talk.idempotency_key,
        )
    assert first is not None  # rows are never deleted
    if first["digest"] != digest or any(first[f] != getattr(talk, f) for f in FACTS):
        raise TalkConflict(
            f"idempotency_key: {talk.idempotency_key!r} was already used for another talk "
            "on this unit; use a new key for a new talk"
        )
    return StoredTalk(talk_ref=first["talk_ref"], digest=first["digest"])


def _mismatch(row: asyncpg.Record | None, ref: UnitRef, a: RecordTalk) -> str | None:
    """Why the reference does not stand for this talk of this unit, or None."""
    if row is None:
        return (
            f"talk_ref: no talk {a.talk_ref} is stored; send the talk to kaohe's API "
            f"(POST /v1/campaigns/{ref.campaign_id}/units/{ref.unit_id}/talks)"
        )
    if row["workflow_id"] != ref.workflow_id:
        return f"talk_ref: talk {a.talk_ref} was stored for another unit, not {ref.unit_id}"
    if row["digest"] != a.digest:
        return f"digest: {a.digest} is not the digest of the stored talk {a.talk_ref}"
    for f in FACTS:
        if row[f] != getattr(a, f):
            return f"{f}: {getattr(a, f)!s} is not the stored talk's ({row[f]!s})"
    return None


async def accept_talk(pool: asyncpg.Pool, rec: TalkRecord) -> str | None:
    """The unit counts a stored talk: checks the reference against its row (this unit, this
    digest, this metadata) and records it in `talks` with its audit row; the reason it is
    refused (nothing written), or None. Idempotent: a retry finds the talk recorded."""
    a = rec.action
    entry = Entry(
        f"talk:{a.talk_id}",
        "talk_recorded",
        a.actor,
        {"talk_id": a.talk_id, "interviewee_role": a.interviewee_role, "talk_ref": a.talk_ref},
    )
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM talk_store WHERE talk_ref = $1", a.talk_ref)
        problem = _mismatch(row, rec.ref, a)
        if problem is None:
            taken = await conn.fetchval("SELECT talk_id FROM talks WHERE talk_ref = $1", a.talk_ref)
            if taken is not None and taken != a.talk_id:
                problem = f"talk_ref: talk {a.talk_ref} is already recorded as talk {taken}"
    if problem is not None:
        return problem
    fields = {"talk_id": a.talk_id, "talk_ref": a.talk_ref}
    async with recorded(pool, rec.ref, entry, "talk recorded", **fields) as conn:
        await conn.execute(
            """INSERT INTO talks (workflow_id, talk_id, interviewer, interviewee_role,
                                  talk_date, talk_ref)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            rec.ref.workflow_id,
            a.talk_id,
            a.interviewer,
            a.interviewee_role,
            a.talk_date,
            a.talk_ref,
        )
    return None


@dataclass(frozen=True)
class Reader:
    """Who reads a talk: the principal, the role its binding gives (the audit row's actor;
    None for an operator reading with the database and the talk keys) and its kind."""

    principal: str
    role: Role | None
    kind: str  # person or system (kaohe.access.identity), or operator


async def read_talk(
    pool: asyncpg.Pool, cipher: TalkCipher, workflow_id: str, talk_ref: str, reader: Reader
) -> TalkView | None:
    """The talk, opened, if it is one of this unit's (else None); the `talk_read` audit row
    naming the reader is written first, so no content leaves without its row."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT s.*, u.campaign_id, u.unit_id, u.stage,
                      EXISTS (SELECT 1 FROM talks t WHERE t.talk_ref = s.talk_ref) AS recorded
               FROM talk_store s JOIN units u USING (workflow_id)
               WHERE s.talk_ref = $1 AND s.workflow_id = $2""",
            talk_ref,
            workflow_id,
        )
        if row is None:
            return None
        ref = UnitRef(
            workflow_id=workflow_id,
            campaign_id=row["campaign_id"],
            unit_id=row["unit_id"],
            stage=Stage(row["stage"]),
        )
        await write_audit(
            conn,
            ref,
            f"talk_read:{uuid.uuid4().hex}",
            "talk_read",
            Actor(id=reader.principal, role=reader.role) if reader.role else None,
            {
                "talk_ref": talk_ref,
                "talk_id": row["talk_id"],
                "principal": reader.principal,
                "kind": reader.kind,
            },
        )
    content = cipher.open(
        row["nonce"], row["ciphertext"], _associated(workflow_id, talk_ref), row["key_id"]
    )
    return TalkView(
        talk_ref=talk_ref,
        talk_id=row["talk_id"],
        interviewer=row["interviewer"],
        interviewee_role=row["interviewee_role"],
        talk_date=row["talk_date"],
        digest=row["digest"],
        content=content,
        stored_by=row["stored_by"],
        stored_at=row["stored_at"],
        recorded=row["recorded"],
    )
