"""kaohe's three keyrings, found the same way, made in one place, rotated one way.

| kind      | setting              | file in data_dir | what it protects                     |
|-----------|----------------------|------------------|--------------------------------------|
| payload   | KAOHE_PAYLOAD_KEYS   | payload.key      | workflow history (kaohe/codec)       |
| talk      | KAOHE_TALK_KEYS      | talk.key         | talk content at rest (talks table)   |
| assertion | KAOHE_ASSERTION_KEYS | assertion.keys   | messages to workflows (HMAC)         |

A setting wins over the file. Only `kaohe dev` creates the files (`make_dev_keys`); every
other process that needs a keyring and finds none refuses to start with MissingKeysError
naming the setting, so a command run from another directory never encrypts or signs with a
key of its own that nothing else holds. `rotate` puts a new random key first in the file
(older keys stay and still open or verify what they made); processes read keys when they
start, so restart the workers and the API after it. With keys in a setting, `new_entry`
gives the entry to put first in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from activities.keyring import MissingKeysError, create_secret_file, prepend_to_file
from activities.talk_cipher import TalkCipher, TalkKeyring
from kaohe.assertions import Keyring as AssertionKeyring
from kaohe.codec.payloads import KEY_FILE_NAME
from kaohe.codec.payloads import Keyring as PayloadKeyring
from kaohe.settings import Settings

Kind = Literal["payload", "talk", "assertion"]
KINDS: tuple[Kind, ...] = ("payload", "talk", "assertion")


@dataclass(frozen=True)
class _Spec:
    setting: str
    file_name: str
    parse: type[PayloadKeyring] | type[TalkKeyring] | type[AssertionKeyring]


_SPECS: dict[Kind, _Spec] = {
    "payload": _Spec("payload_keys", KEY_FILE_NAME, PayloadKeyring),
    "talk": _Spec("talk_keys", "talk.key", TalkKeyring),
    "assertion": _Spec("assertion_keys", "assertion.keys", AssertionKeyring),
}


def env_name(kind: Kind) -> str:
    return f"KAOHE_{_SPECS[kind].setting.upper()}"


def key_file(settings: Settings, kind: Kind) -> Path:
    return settings.data_dir / _SPECS[kind].file_name


def keyring_text(settings: Settings, kind: Kind) -> str | None:
    """The keyring as its setting or file holds it; None when there is neither."""
    value = getattr(settings, _SPECS[kind].setting)
    if value is not None:
        return value.get_secret_value()
    path = key_file(settings, kind)
    return path.read_text() if path.exists() else None


def talk_cipher(settings: Settings) -> TalkCipher:
    """The API's talk keys (no worker holds them: talks reach no workflow), or
    MissingKeysError naming KAOHE_TALK_KEYS."""
    text = keyring_text(settings, "talk")
    if text is None:
        raise MissingKeysError("talk", env_name("talk"), key_file(settings, "talk"))
    return TalkCipher.parse(text)


def make_dev_keys(settings: Settings) -> list[Kind]:
    """`kaohe dev` only: the key files the settings don't replace, made once with random
    ids (a concurrent maker's file wins and both read it); the kinds it made."""
    made: list[Kind] = []
    for kind in KINDS:
        if kind == "payload" and not settings.payload_encryption:
            continue
        path = key_file(settings, kind)
        if getattr(settings, _SPECS[kind].setting) is None and not path.exists():
            create_secret_file(path, new_entry(kind))
            made.append(kind)
    return made


def new_entry(kind: Kind) -> str:
    """A fresh key of `kind` as one `id:base64` entry, to put first in its setting."""
    return _SPECS[kind].parse.new_entry()


def key_ids(settings: Settings, kind: Kind) -> list[str] | None:
    """The ids in the keyring, current first (never the keys); None when there is none."""
    text = keyring_text(settings, kind)
    if text is None:
        return None
    if kind == "talk":
        return TalkCipher.parse(text).keyring.key_ids
    return _SPECS[kind].parse.parse(text).key_ids


class KeyFileError(ValueError):
    """A rotation that cannot be done on a file: the keys are in a setting, or none exist."""


def rotate(settings: Settings, kind: Kind) -> str:
    """A new random key first in `kind`'s key file; its id. Refused when the setting holds
    the keys (rotate them where the setting comes from, with `new_entry`)."""
    if getattr(settings, _SPECS[kind].setting) is not None:
        raise KeyFileError(
            f"{env_name(kind)} is set: put `kaohe keys new {kind}` first in it instead, "
            "keeping the old entries after it"
        )
    path = key_file(settings, kind)
    if not path.exists():
        raise MissingKeysError(kind, env_name(kind), path)
    key_ids(settings, kind)  # the file parses before anything is written
    old = path.read_text().strip()
    if kind == "talk" and ":" not in old:  # a bare key from before keyrings: it is k1
        create_secret_file(path.with_suffix(".k1"), f"k1:{old}")
        path.with_suffix(".k1").replace(path)
    entry = new_entry(kind)
    prepend_to_file(path, entry)
    return entry.partition(":")[0]
