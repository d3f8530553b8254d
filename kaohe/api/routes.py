"""What the route modules installed into kaohe's API (talks.py, ballots.py, codec.py,
vote.py) share: the type of app.py's `authorized` check, a body read within a limit, and a
body read as its model or refused naming the field."""

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


async def read_limited(request: Request, limit: int, too_large: problems.Problem) -> bytes:
    """The body, read no further than `limit` bytes: `too_large` beyond it, by Content-Length
    or as the body arrives (a client may send more than it declared, or declare nothing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def body_as(model: type[M], body: dict[str, Any]) -> M:
    """`body` as `model`, or the 422 problem naming its first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_input=False)[0]
        raise problems.invalid(format_validation_error(err), error_path(first["loc"])) from None
