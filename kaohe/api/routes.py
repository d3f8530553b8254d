"""What the route modules installed into kaohe's API (talks.py, ballots.py) share: the type
of app.py's `authorized` check, and a body read as its model or refused naming the field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from kaohe.access.bindings import Binding
from kaohe.access.identity import Identity
from kaohe.api import problems
from schemas.common import Role
from schemas.errors import error_path, format_validation_error

M = TypeVar("M", bound=BaseModel)

Authorized = Callable[
    [Request, Identity | None, str, str, str, frozenset[Role], Role | None], Awaitable[Binding]
]


def body_as(model: type[M], body: dict[str, Any]) -> M:
    """`body` as `model`, or the 422 problem naming its first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_input=False)[0]
        raise problems.invalid(format_validation_error(err), error_path(first["loc"])) from None
