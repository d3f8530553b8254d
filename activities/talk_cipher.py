"""AES-256-GCM sealing of talk content (个别谈话 are confidential)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class TalkCipher:
    def __init__(self, key: bytes, key_id: str) -> None:
        if len(key) != 32:
            raise ValueError("the talk key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.key_id = key_id

    @classmethod
    def from_base64(cls, key_b64: str, key_id: str) -> TalkCipher:
        return cls(base64.b64decode(key_b64), key_id)

    @classmethod
    def from_key_file(cls, path: Path, key_id: str) -> TalkCipher:
        """Reads the key file, creating it (mode 0600) with a random key the first time."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode())
        return cls.from_base64(path.read_text().strip(), key_id)

    def seal(self, plaintext: str, associated: str) -> tuple[bytes, bytes]:
        """(nonce, ciphertext); `associated` binds the ciphertext to its row."""
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), associated.encode())

    def open(self, nonce: bytes, ciphertext: bytes, associated: str) -> str:
        return self._aead.decrypt(nonce, ciphertext, associated.encode()).decode()
