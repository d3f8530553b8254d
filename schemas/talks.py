"""Talks (个别谈话) at kaohe's API: what a caller sends (the talk with its content), what it
gets back (the unit's answer, the stored talk's reference and digest), and what the unit's
assessment group reads. The content is stored encrypted in PostgreSQL (talk_store) and never
enters a workflow: the unit receives a RecordTalk with the reference (schemas/messages.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Annotated

from pydantic import Field

from schemas.common import IdempotencyKey, Identifier, Model, ShortText
from schemas.messages import MAX_TALK_CHARS, ActionResult, Sha256, TalkRef


def talk_digest(content: str) -> str:
    """The digest a RecordTalk carries: sha256 (hex) of the content's UTF-8 bytes."""
    return hashlib.sha256(content.encode()).hexdigest()


class Talk(Model):
    """The body of `POST /v1/campaigns/{campaign}/units/{unit}/talks`: one individual talk,
    once per `talk_id`. kaohe's API encrypts `content` with the talk key, stores it, and sends
    the unit a `record_talk` with its reference and digest (never the content)."""

    idempotency_key: IdempotencyKey = Field(
        description="Unique per talk; repeating it returns the first result and changes nothing."
    )
    talk_id: Identifier
    interviewer: ShortText
    interviewee_role: ShortText
    talk_date: dt.date
    content: Annotated[str, Field(min_length=1, max_length=MAX_TALK_CHARS)]


class TalkRecorded(ActionResult):
    """The unit's answer to the talk's record_talk, with the stored talk's reference."""

    talk_ref: TalkRef
    digest: Sha256


class StoredTalk(Model):
    talk_ref: TalkRef
    digest: Sha256


class TalkView(Model):
    """A stored talk as its unit's assessment group reads it (`GET .../talks/{talk_ref}`);
    each read leaves a `talk_read` audit row naming the reader."""

    talk_ref: TalkRef
    talk_id: Identifier
    interviewer: str
    interviewee_role: str
    talk_date: dt.date
    digest: Sha256
    content: str
    stored_by: str
    stored_at: dt.datetime
    recorded: bool = Field(description="Whether the unit counted it (record_talk accepted).")
