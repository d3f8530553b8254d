"""Actions parsed from the raw payloads of updates and signals.

Handlers take `RawValue` so that a malformed payload reaches the workflow (and is rejected
naming its field) instead of failing in the SDK's decoder with "Failed decoding arguments".
Parsing goes straight from the JSON bytes to the action's model, in one pass.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from temporalio.common import RawValue

from domain.actions import ActionRejected
from schemas.common import Action
from schemas.errors import format_validation_error

JSON_ENCODING = b"json/plain"


def parse_action(
    model: type[Action], payload: RawValue, context: dict[str, Any] | None = None
) -> Action:
    """`context` is pydantic's validation context (e.g. the policy's grade labels)."""
    encoding = payload.payload.metadata.get("encoding", b"")
    if encoding != JSON_ENCODING:
        shown = encoding.decode(errors="replace") or "none"
        raise ActionRejected(f"(payload): expected a JSON object, got encoding {shown!r}")
    try:
        return model.model_validate_json(payload.payload.data, context=context)
    except ValidationError as err:
        raise ActionRejected(format_validation_error(err)) from None


def idempotency_key_of(payload: RawValue) -> str | None:
    """The idempotency key of a payload that may not parse (for a signal's rejection)."""
    try:
        body: Any = json.loads(payload.payload.data)
    except ValueError:
        return None
    key = body.get("idempotency_key") if isinstance(body, dict) else None
    return key if isinstance(key, str) else None
