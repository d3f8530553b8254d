"""Payload encryption: an AES-256-GCM ``PayloadCodec`` with a keyring, so that talk content,
ballots and sealed grades are never in plaintext in workflow history.

Every payload the SDK writes (workflow and activity inputs and results, update and signal
arguments, query results, memo, the UI summary and details, failure details) becomes::

    metadata: {encoding: binary/encrypted, encryption-key-id: <id>}
    data:     12-byte nonce + AES-256-GCM(serialized original Payload proto)

the format of Temporal's samples (samples-python ``encryption``), so their codec servers and
ours read each other's payloads given the same key. Search attributes are not payloads of
the codec and stay readable; keep nothing confidential in them.

Keys come from ``KAOHE_PAYLOAD_KEYS`` (``p-2b..:BASE64,p-9f..:BASE64``, first = current) or
from the key file ``<data_dir>/payload.key`` (the same ``id:BASE64`` entries, one per line),
which only ``kaohe dev`` creates; any other process without keys refuses to start, naming the
setting. Rotation (``kaohe keys rotate payload``, kaohe/keys.py) puts a new key first; new
payloads use it, payloads written under the older keys still decode while those stay.

Decoding passes a payload without the ``binary/encrypted`` encoding through unchanged, so
plain JSON from HTTP API integrators and histories recorded before encryption still work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from activities.keyring import Keyring as AesKeyring
from activities.keyring import KeyringError, MissingKeysError, create_secret_file, format_key
from kaohe.settings import Settings

__all__ = ["Keyring", "PayloadKeyError", "create_secret_file", "format_key"]

ENCODING = b"binary/encrypted"
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
KEY_FILE_NAME = "payload.key"


class PayloadKeyError(KeyringError):
    """A payload cannot be decrypted: its key is not in the ring, or it doesn't authenticate."""


class Keyring(AesKeyring):
    """The payload keys: KAOHE_PAYLOAD_KEYS or the key file."""

    what = "payload"
    setting = "KAOHE_PAYLOAD_KEYS"
    prefix = "p"
    error = PayloadKeyError


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM with the keyring's current key; decodes with the key the payload names.

    With ``encrypt=False`` it encodes nothing but still decodes, for an operator who turned
    encryption off while histories still hold encrypted payloads.
    """

    def __init__(self, keyring: Keyring, *, encrypt: bool = True) -> None:
        super().__init__()
        self.keyring = keyring
        self.encrypt = encrypt

    def __repr__(self) -> str:
        return f"EncryptionCodec({self.keyring!r}, encrypt={self.encrypt})"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not self.encrypt:
            return list(payloads)
        key_id = self.keyring.current_id
        aead = self.keyring.aead(key_id)
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_KEY: key_id.encode()},
                    data=nonce + aead.encrypt(nonce, p.SerializeToString(), None),
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decode_one(p) for p in payloads]

    def decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # plain JSON from an integrator, or written before encryption
        key_id = payload.metadata.get(KEY_ID_KEY, b"").decode(errors="replace")
        aead = self.keyring.aead(key_id)
        data = payload.data
        try:
            plain = aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except (InvalidTag, ValueError):
            raise PayloadKeyError(
                f"payload encrypted with key id {key_id!r} does not decrypt with that key "
                "(a different key under the same id, or corrupted data)"
            ) from None
        return Payload.FromString(plain)


def keyring_from_settings(settings: Settings) -> Keyring | None:
    """KAOHE_PAYLOAD_KEYS, else the key file; None if neither exists (only `kaohe dev` makes
    the file: kaohe/keys.py)."""
    if settings.payload_keys is not None:
        return Keyring.parse(settings.payload_keys.get_secret_value())
    path = settings.data_dir / KEY_FILE_NAME
    return Keyring.parse(path.read_text()) if path.exists() else None


def codec_from_settings(settings: Settings) -> EncryptionCodec | None:
    """The codec every kaohe process uses, or None (encryption off and no key ever made).
    Encryption on and no keys: MissingKeysError naming the setting, never a new key."""
    keyring = keyring_from_settings(settings)
    if settings.payload_encryption:
        if keyring is None:
            raise MissingKeysError(
                "payload", "KAOHE_PAYLOAD_KEYS", settings.data_dir / KEY_FILE_NAME
            )
        return EncryptionCodec(keyring)
    return None if keyring is None else EncryptionCodec(keyring, encrypt=False)
