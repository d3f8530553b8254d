"""Shared building blocks of the messages: identifiers, actors, stages, grades."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, StringConstraints
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from schemas.limits import text_problem

# Identifiers appear in workflow ids and search attributes: keep them to a safe alphabet.
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=2000)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]


def _checked_text(text: str) -> str:
    problem = text_problem(text)
    if problem is not None:
        raise PydanticCustomError("text_refused", problem)
    return text


def _text_checked(schema: Any) -> Any:
    """The core schema with every str (fields, list items, dict keys and values, unions)
    passed through _checked_text; a nested model's own schema is checked already."""
    if isinstance(schema, list):
        return [_text_checked(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "function-after" and schema["function"]["function"] is _checked_text:
        return schema
    out = {k: _text_checked(v) for k, v in schema.items()}
    if out.get("type") == "str":
        return core_schema.no_info_after_validator_function(_checked_text, out)
    return out


class Model(BaseModel):
    """Strict about unknown fields, so a typo in an integrator's payload is an error. Every
    str in every model, dict keys included, refuses NUL, unpaired surrogates and text over
    schemas.limits.MAX_TEXT_CHARS, naming the field (PostgreSQL would refuse the first two
    only later, in a storage activity)."""

    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=False)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return _text_checked(handler(source))


class Stage(StrEnum):
    NOTICE = "notice"
    REPORT_BACK = "report_back"
    EVALUATION = "evaluation"
    TALKS = "talks"
    GRADING = "grading"
    RESULT_USE = "result_use"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class AccountabilityLevel(StrEnum):
    """问责 and organizational measures, mildest first (the order the 优秀 gate reads)."""

    REMINDER = "提醒谈话"
    CRITICISM = "批评教育"
    ADMONISHMENT = "诫勉"
    ORGANIZATIONAL = "组织处理"
    DISCIPLINARY = "纪律处分"

    @property
    def rank(self) -> int:
        return list(AccountabilityLevel).index(self)


class Role(StrEnum):
    UNIT = "unit"
    ASSESSMENT_GROUP = "assessment_group"
    APPROVER = "approver"
    DEPARTMENT = "department"
    INTEGRATOR = "integrator"
    CADRE = "cadre"  # a cadre in person: signs its feedback, asks for 复核 (actor.id = cadre_id)
    # Reading and writing workflow payloads through kaohe's codec (POST /v1/codec/decode and
    # /encode, kaohe/api/codec.py): no action on any unit. A payload names neither its
    # campaign nor its unit, so these bindings are namespace-wide (kaohe/access/bindings.py).
    CODEC_DECODE = "codec_decode"
    CODEC_ENCODE = "codec_encode"


class Actor(Model):
    """Who performs an action; kept in the audit table."""

    id: ShortText
    role: Role


class TeamGrade(StrEnum):
    GOOD = "好"
    FAIRLY_GOOD = "较好"
    AVERAGE = "一般"
    POOR = "较差"


class CadreGrade(StrEnum):
    EXCELLENT = "优秀"
    COMPETENT = "称职"
    BASICALLY_COMPETENT = "基本称职"
    INCOMPETENT = "不称职"
    UNDETERMINED = "不确定等次"


class CadreOverall(StrEnum):
    """The overall option on a cadre ballot: the grades plus 不了解 (don't know)."""

    EXCELLENT = "优秀"
    COMPETENT = "称职"
    BASICALLY_COMPETENT = "基本称职"
    INCOMPETENT = "不称职"
    UNKNOWN = "不了解"


class Action(Model):
    """Fields every action carries: who does it, and a key that makes a retry harmless."""

    idempotency_key: IdempotencyKey = Field(
        description="Unique per action; repeating it returns the first result and changes nothing."
    )
    actor: Actor
