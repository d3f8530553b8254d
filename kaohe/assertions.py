"""Assertions: what lets a workflow tell kaohe's own messages from anyone else's.

kaohe's API (and the operators' tools, and the workflows' messages to each other) send every
update and signal with a header `kaohe-assertion`: an HMAC-SHA256, under a key the workers
share and Temporal never sees, over the target workflow, the message's name, the digest of
its payload (which names the actor it acts as) and the time. A worker's interceptor
(kaohe/interceptors.py) refuses a message without a valid one, whether it came through the
API or straight to Temporal's gRPC or HTTP API. The header holds no content: it stays plain
in history, as the SDK's own markers do.

Keys are a keyring "id:base64,..." whose first key signs and all verify, so a key is rotated
by putting a new one first; an old key stays until no run that received a message under it
can still be replayed (the rule payload keys follow too: docs/versioning.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.converter import PayloadConverter

HEADER = "kaohe-assertion"
# An assertion older than this (or this far in the future) is refused: a captured message
# cannot be sent again later. Generous for clock skew and a retry's backoff.
MAX_AGE_SECONDS = 600.0


class AssertionRefused(Exception):
    """The message carries no valid assertion; the text says why and is safe to show."""


@dataclass(frozen=True)
class Keyring:
    keys: tuple[tuple[str, bytes], ...]  # (id, key); the first signs

    @classmethod
    def parse(cls, text: str) -> Keyring:
        keys = []
        parts = (part.strip() for part in text.replace("\n", ",").split(","))
        for item in (p for p in parts if p and not p.startswith("#")):
            key_id, sep, b64 = item.partition(":")
            key = base64.b64decode(b64) if sep else b""
            if not key_id or len(key) < 32:
                raise ValueError("assertion_keys: each key is id:base64 of 32 or more bytes")
            keys.append((key_id, key))
        if not keys:
            raise ValueError("assertion_keys: no key")
        return cls(tuple(keys))

    @classmethod
    def generate(cls) -> Keyring:
        return cls.parse(cls.new_entry())

    @classmethod
    def new_entry(cls) -> str:
        """A fresh key under a fresh random id, as one keyring entry."""
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        return f"a-{secrets.token_hex(4)}:{key}"

    @property
    def key_ids(self) -> list[str]:
        return [k for k, _ in self.keys]

    def text(self) -> str:
        return ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in self.keys)

    def key(self, key_id: str) -> bytes | None:
        return dict(self.keys).get(key_id)


def payloads_of(converter: PayloadConverter, args: Sequence[Any]) -> list[Payload]:
    """The payloads the message carries: a RawValue as it is, the rest through the converter
    (the same bytes on the sender's and the receiver's side)."""
    out: list[Payload] = []
    for arg in args:
        out.append(arg.payload if isinstance(arg, RawValue) else converter.to_payloads([arg])[0])
    return out


def digest(payloads: Sequence[Payload]) -> str:
    h = hashlib.sha256()
    for p in payloads:
        h.update(len(p.data).to_bytes(8, "big"))
        h.update(p.data)
    return h.hexdigest()


def _claims_bytes(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(
    keyring: Keyring,
    *,
    workflow_id: str,
    message: str,
    payload_digest: str,
    at: float,
    sender: str | None = None,
) -> bytes:
    """The header's content for one message; `sender` is the workflow that sends it, for
    the workflows' messages to each other."""
    key_id, key = keyring.keys[0]
    claims = {
        "v": 1,
        "kid": key_id,
        "wf": workflow_id,
        "msg": message,
        "digest": payload_digest,
        "iat": round(at, 3),
    }
    if sender is not None:
        claims["from"] = sender
    mac = hmac.new(key, _claims_bytes(claims), hashlib.sha256).hexdigest()
    return json.dumps({**claims, "mac": mac}, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Asserted:
    workflow_id: str
    message: str
    at: float
    sender: str | None  # the workflow that sent it, for the workflows' own messages


def verify(
    keyring: Keyring,
    header: bytes | None,
    *,
    workflow_id: str,
    message: str,
    payload_digest: str,
    now: float,
) -> Asserted:
    """The assertion's claims if the header is valid for this very message; otherwise
    AssertionRefused naming what is wrong."""
    if not header:
        raise AssertionRefused(
            f"{message}: refused, no assertion from kaohe's API (send it through the API)"
        )
    try:
        claims = json.loads(header)
        mac = claims.pop("mac")
        key = keyring.key(claims["kid"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AssertionRefused(f"{message}: refused, the assertion is malformed") from None
    if key is None:
        raise AssertionRefused(f"{message}: refused, the assertion's key is not known")
    expected = hmac.new(key, _claims_bytes(claims), hashlib.sha256).hexdigest()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
        raise AssertionRefused(f"{message}: refused, the assertion's signature does not match")
    if claims.get("wf") != workflow_id or claims.get("msg") != message:
        raise AssertionRefused(f"{message}: refused, the assertion is for another message")
    if claims.get("digest") != payload_digest:
        raise AssertionRefused(f"{message}: refused, the payload is not the one asserted")
    at = claims.get("iat")
    if not isinstance(at, int | float):
        raise AssertionRefused(f"{message}: refused, the assertion is malformed")
    # A workflow's message to another may wait in its history while that one is busy: it
    # has no age limit (its effects are idempotent); anyone else's has.
    if claims.get("from") is None and abs(now - at) > MAX_AGE_SECONDS:
        raise AssertionRefused(f"{message}: refused, the assertion has expired")
    sender = claims.get("from")
    return Asserted(workflow_id, message, float(at), sender if isinstance(sender, str) else None)
