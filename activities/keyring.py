"""AES-256-GCM keyrings, the shape every kaohe key takes: ``id:BASE64`` entries separated by
commas or newlines, the first current (it encrypts), the rest kept to decrypt what they once
encrypted. Payload keys (kaohe/codec/payloads.py) and talk keys (activities/talk_cipher.py)
are such keyrings; kaohe/keys.py finds, makes (only for ``kaohe dev``) and rotates them.

Key ids are random (``p-3f9c2a1b``): two installations, or a key made again by mistake,
never share an id, so a payload or talk row names exactly the key that sealed it.
Repr and error messages name key ids only, never key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_FORBIDDEN_IN_ID = frozenset(":,=# \t\r\n")


class KeyringError(ValueError):
    """A key is missing, malformed or unknown; the text names the setting to fix."""


class MissingKeysError(KeyringError):
    """A process needs keys that are neither set nor in the data dir. Only `kaohe dev` makes
    keys: a worker, the API or the CLI pointed at the wrong directory must not start on a
    key of its own that nothing else holds."""

    def __init__(self, what: str, setting: str, path: Path) -> None:
        super().__init__(
            f"no {what} keys: set {setting} (or KAOHE_DATA_DIR to the directory whose "
            f"{path.name} holds them; {path} does not exist). Only `kaohe dev` creates keys."
        )


class Keyring:
    """The current key (encrypts) and any number of older keys (decrypt only), by id.

    Subclasses name what the keys are for and the setting that holds them, for messages.
    """

    what: ClassVar[str] = "key"
    setting: ClassVar[str] = "the keyring"
    prefix: ClassVar[str] = "k"
    error: ClassVar[type[KeyringError]] = KeyringError

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        self._aeads: dict[str, AESGCM] = {}
        for key_id, key in keys:
            self.check_id(key_id)
            if key_id in self._aeads:
                raise self.error(f"{self.what} key id {key_id!r} appears twice")
            if len(key) != 32:
                raise self.error(f"{self.what} key {key_id!r} must be 32 bytes (AES-256)")
            self._aeads[key_id] = AESGCM(key)
        if not self._aeads:
            raise self.error(f"the {self.what} keyring is empty")
        self.current_id = next(iter(self._aeads))

    @property
    def key_ids(self) -> list[str]:
        """Every key id, current first."""
        return list(self._aeads)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(current={self.current_id!r}, keys={self.key_ids!r})"

    def aead(self, key_id: str) -> AESGCM:
        try:
            return self._aeads[key_id]
        except KeyError:
            raise self.error(
                f"{self.what} was encrypted with key id {key_id!r}, which is not in the keyring "
                f"(known: {', '.join(self.key_ids)}); add that key to {self.setting} or "
                f"the {self.what} key file"
            ) from None

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """``id:BASE64[,id:BASE64...]`` (commas or newlines between entries), first = current;
        lines starting with # are comments."""
        entries = [e.strip() for e in spec.replace("\n", ",").split(",")]
        keys: list[tuple[str, bytes]] = []
        for n, entry in enumerate(e for e in entries if e and not e.startswith("#")):
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise cls.error(
                    f"{cls.setting}: {cls.what} key entry {n + 1} is not of the form id:base64key"
                )
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise cls.error(
                    f"{cls.setting}: {cls.what} key {key_id.strip()!r} is not valid base64"
                ) from None
            keys.append((key_id.strip(), key))
        return cls(keys)

    @classmethod
    def new_entry(cls) -> str:
        """A fresh random key under a fresh random id, as one keyring entry."""
        return format_key(
            f"{cls.prefix}-{secrets.token_hex(4)}", AESGCM.generate_key(bit_length=256)
        )

    @classmethod
    def check_id(cls, key_id: str) -> None:
        if not key_id or not key_id.isascii() or _FORBIDDEN_IN_ID & set(key_id):
            raise cls.error(
                f"{cls.what} key id {key_id!r} must be non-empty ASCII without ':', ',', '=', "
                "'#' or whitespace"
            )


def format_key(key_id: str, key: bytes) -> str:
    """One keyring entry, as the settings and the key files hold it."""
    Keyring.check_id(key_id)
    return f"{key_id}:{base64.b64encode(key).decode()}"


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


def prepend_to_file(path: Path, entry: str) -> None:
    """Puts `entry` first in the key file, the older entries kept after it; atomic (a
    process reading the file sees the old or the new keyring, never half of one)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{entry}\n{path.read_text()}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
