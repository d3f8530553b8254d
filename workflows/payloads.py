"""Actions parsed from the raw payloads of updates and signals.

Handlers take `RawValue` so that a malformed payload reaches the workflow (and is rejected
naming its field) instead of failing in the SDK's decoder with "Failed decoding arguments".
Parsing goes straight from the JSON bytes to the action's model, in one pass, after the
bytes' size and nesting are checked (schemas/limits.py), so no parser recurses into a
payload deeper than the limit.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from domain.actions import ActionRejected
from schemas.common import Action
from schemas.errors import format_validation_error
from schemas.limits import json_shape_problem, shown, text_problem

JSON_ENCODING = b"json/plain"
MAX_KEY_CHARS = 128  # schemas.common.IdempotencyKey


def rejection_error(err: ActionRejected) -> ApplicationError:
    """The failure an update's caller gets for a rejection: its type, and non-retryable unless
    the rejection says the same action may succeed later (the one rule for `retryable`)."""
    return ApplicationError(str(err), type=err.error_type, non_retryable=not err.retryable)


def parse_action(
    model: type[Action], payload: RawValue, context: dict[str, Any] | None = None
) -> Action:
    """`context` is pydantic's validation context (e.g. the policy's grade labels)."""
    encoding = payload.payload.metadata.get("encoding", b"")
    if encoding != JSON_ENCODING:
        shown_encoding = encoding.decode(errors="replace") or "none"
        raise ActionRejected(f"(payload): expected a JSON object, got encoding {shown_encoding!r}")
    problem = json_shape_problem(payload.payload.data)
    if problem is not None:
        raise ActionRejected(problem)
    try:
        return model.model_validate_json(payload.payload.data, context=context)
    except ValidationError as err:
        raise ActionRejected(format_validation_error(err)) from None


def idempotency_key_of(payload: RawValue) -> str | None:
    """The idempotency key of a payload that may not parse (for a signal's rejection), as it
    may be shown and stored: None for a payload over the limits, and a key no field could hold
    (NUL, a surrogate, too long) escaped and shortened. Never raises."""
    try:
        data = payload.payload.data
        if json_shape_problem(data) is not None:
            return None
        body: Any = json.loads(data)
    except (ValueError, RecursionError, TypeError):
        return None
    key = body.get("idempotency_key") if isinstance(body, dict) else None
    if not isinstance(key, str):
        return None
    if text_problem(key) is not None or len(key) > MAX_KEY_CHARS:
        return shown(key, MAX_KEY_CHARS)
    return key
