"""AES-256-GCM sealing of talk content (个别谈话 are confidential), under a keyring: the
current key seals, every key in the ring opens what it sealed, each row naming its key id
(talks.key_id), so `kaohe keys rotate talk` never strands a recorded talk."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable

from activities.keyring import Keyring, KeyringError


class TalkKeyError(KeyringError):
    """A talk cannot be opened: its key is not in the ring, or it doesn't authenticate."""


class TalkKeyring(Keyring):
    what = "talk"
    setting = "KAOHE_TALK_KEYS"
    prefix = "t"
    error = TalkKeyError


class TalkCipher:
    def __init__(self, key: bytes, key_id: str, older: Iterable[tuple[str, bytes]] = ()) -> None:
        self.keyring = TalkKeyring([(key_id, key), *older])
        self.key_id = key_id  # the current key's: what seal() uses

    @classmethod
    def of(cls, keyring: TalkKeyring) -> TalkCipher:
        cipher = cls.__new__(cls)
        cipher.keyring, cipher.key_id = keyring, keyring.current_id
        return cipher

    @classmethod
    def parse(cls, spec: str) -> TalkCipher:
        """KAOHE_TALK_KEYS or the talk key file: ``id:BASE64`` entries, first = current. A
        file of the bare base64 key written before keyrings is the key ``k1``, the id its
        rows carry."""
        text = spec.strip()
        if text and ":" not in text and "," not in text and "\n" not in text:
            return cls(base64.b64decode(text), "k1")
        return cls.of(TalkKeyring.parse(spec))

    def seal(self, plaintext: str, associated: str) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) under the current key (self.key_id); `associated` binds the
        ciphertext to its row."""
        nonce = os.urandom(12)
        aead = self.keyring.aead(self.key_id)
        return nonce, aead.encrypt(nonce, plaintext.encode(), associated.encode())

    def open(
        self, nonce: bytes, ciphertext: bytes, associated: str, key_id: str | None = None
    ) -> str:
        """The content sealed under `key_id` (the row's; default: the current key)."""
        aead = self.keyring.aead(key_id or self.key_id)
        return aead.decrypt(nonce, ciphertext, associated.encode()).decode()
