"""Payload encryption: an AES-256-GCM ``PayloadCodec`` with a keyring, so that talk content,
ballots and sealed grades are never in plaintext in workflow history.

Every payload the SDK writes (workflow and activity inputs and results, update and signal
arguments, query results, memo, the UI summary and details, failure details) becomes::

    metadata: {encoding: binary/encrypted, encryption-key-id: <id>}
    data:     12-byte nonce + AES-256-GCM(serialized original Payload proto)

the format of Temporal's samples (samples-python ``encryption``), so their codec servers and
ours read each other's payloads given the same key. Search attributes are not payloads of
the codec and stay readable; keep nothing confidential in them.

Keys come from ``KAOHE_PAYLOAD_KEYS`` (``k2:BASE64,k1:BASE64``, first = current) or from the
key file ``<data_dir>/payload.key`` (the same ``id:BASE64`` entries, one per line, first =
current), created with one random key on first use. Rotation: put a new key first
(:func:`rotate_key_file` does it for the file); new payloads use it, payloads written under
the older keys still decode as long as those stay in the ring.

Decoding passes a payload without the ``binary/encrypted`` encoding through unchanged, so
plain JSON from HTTP API integrators and histories recorded before encryption still work.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from kaohe.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
KEY_FILE_NAME = "payload.key"
_FORBIDDEN_IN_ID = frozenset(":,=# \t\r\n")


class PayloadKeyError(ValueError):
    """A payload cannot be decrypted: its key is not in the ring, or it doesn't authenticate."""


class Keyring:
    """The current key (encrypts) and any number of older keys (decrypt only), by id.

    Its repr and error messages name key ids only, never key material.
    """

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        self._aeads: dict[str, AESGCM] = {}
        for key_id, key in keys:
            _check_key_id(key_id)
            if key_id in self._aeads:
                raise ValueError(f"payload key id {key_id!r} appears twice")
            if len(key) != 32:
                raise ValueError(f"payload key {key_id!r} must be 32 bytes (AES-256)")
            self._aeads[key_id] = AESGCM(key)
        if not self._aeads:
            raise ValueError("the payload keyring is empty")
        self.current_id = next(iter(self._aeads))

    @property
    def key_ids(self) -> list[str]:
        """Every key id, current first."""
        return list(self._aeads)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_id!r}, keys={self.key_ids!r})"

    def aead(self, key_id: str) -> AESGCM:
        try:
            return self._aeads[key_id]
        except KeyError:
            raise PayloadKeyError(
                f"payload was encrypted with key id {key_id!r}, which is not in the keyring "
                f"(known: {', '.join(self.key_ids)}); add that key to KAOHE_PAYLOAD_KEYS or "
                "the payload key file"
            ) from None

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """``id:BASE64[,id:BASE64...]`` (commas or newlines between entries), first = current."""
        entries = [e.strip() for e in spec.replace("\n", ",").split(",")]
        keys: list[tuple[str, bytes]] = []
        for n, entry in enumerate(e for e in entries if e and not e.startswith("#")):
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise ValueError(f"payload key entry {n + 1} is not of the form id:base64key")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"payload key {key_id.strip()!r} is not valid base64") from None
            keys.append((key_id.strip(), key))
        return cls(keys)

    @classmethod
    def from_key_file(cls, path: Path, create: bool = True) -> Keyring:
        """Reads the key file; creates it (mode 0600) with one random key if `create`."""
        if create and not path.exists():
            create_secret_file(path, format_key("p1", AESGCM.generate_key(bit_length=256)))
        return cls.parse(path.read_text())


def format_key(key_id: str, key: bytes) -> str:
    """One keyring entry, as KAOHE_PAYLOAD_KEYS and the key file hold it."""
    _check_key_id(key_id)
    return f"{key_id}:{base64.b64encode(key).decode()}"


def rotate_key_file(path: Path, key_id: str | None = None) -> str:
    """Puts a new random key first in the key file (older keys kept); returns its id.

    Processes read the file when they build their data converter, so restart the worker
    and the codec server afterwards. Not for concurrent use.
    """
    ring = Keyring.from_key_file(path)
    if key_id is None:
        n = len(ring.key_ids) + 1
        while f"p{n}" in ring.key_ids:
            n += 1
        key_id = f"p{n}"
    if key_id in ring.key_ids:
        raise ValueError(f"payload key id {key_id!r} is already in {path}")
    entry = format_key(key_id, AESGCM.generate_key(bit_length=256))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{entry}\n{path.read_text()}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key_id


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


def keyring_from_settings(settings: Settings, *, create: bool = True) -> Keyring | None:
    """KAOHE_PAYLOAD_KEYS, else the key file (created if `create`); None if neither exists."""
    if settings.payload_keys is not None:
        return Keyring.parse(settings.payload_keys.get_secret_value())
    path = settings.data_dir / KEY_FILE_NAME
    if not create and not path.exists():
        return None
    return Keyring.from_key_file(path, create=create)


def codec_from_settings(settings: Settings) -> EncryptionCodec | None:
    """The codec every kaohe process uses, or None (encryption off and no key ever made)."""
    if settings.payload_encryption:
        keyring = keyring_from_settings(settings)
        assert keyring is not None
        return EncryptionCodec(keyring)
    keyring = keyring_from_settings(settings, create=False)
    return None if keyring is None else EncryptionCodec(keyring, encrypt=False)


def _check_key_id(key_id: str) -> None:
    if not key_id or not key_id.isascii() or _FORBIDDEN_IN_ID & set(key_id):
        raise ValueError(
            f"payload key id {key_id!r} must be non-empty ASCII without ':', ',', '=', '#' "
            "or whitespace"
        )


def create_secret_file(path: Path, content: str) -> None:
    """Creates `path` (0600) with `content` unless it exists; atomic, so a second process
    starting at the same moment never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # fails if another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
