"""Keys without surprises (issue 21): only `kaohe dev` makes keys, anything else run without
them refuses to start naming the setting (no key of its own under a fixed id), key ids are
random, and each keyring rotates with `kaohe keys rotate` while what the old key made still
opens or verifies."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from activities.keyring import MissingKeysError
from kaohe.assertions import Keyring as AssertionKeyring
from kaohe.assertions import sign, verify
from kaohe.keys import KINDS, key_file, make_dev_keys, rotate, talk_cipher
from kaohe.settings import Settings

KAOHE = str(Path(__file__).parent.parent / ".venv" / "bin" / "kaohe")


def _settings(data_dir: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir)


def _cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a clean environment: no key in any setting, `data_dir` as its data dir."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAOHE_")}
    full = {**clean, "KAOHE_DATA_DIR": str(data_dir), **env}
    return subprocess.run(
        [KAOHE, *args], env=full, capture_output=True, text=True, timeout=60, cwd=data_dir
    )


def test_kaohe_dev_makes_each_keyring_once_with_random_ids(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert make_dev_keys(settings) == list(KINDS)
    assert make_dev_keys(settings) == []
    for kind, prefix in zip(KINDS, "pta", strict=True):
        path = key_file(settings, kind)
        assert path.stat().st_mode & 0o777 == 0o600
        key_id = path.read_text().partition(":")[0]
        assert re.fullmatch(rf"{prefix}-[0-9a-f]{{8}}", key_id), key_id
    # Another data dir gets other ids: nothing is ever made twice under one id.
    other = _settings(tmp_path / "other")
    make_dev_keys(other)
    for kind in KINDS:
        mine = key_file(settings, kind).read_text().partition(":")[0]
        assert key_file(other, kind).read_text().partition(":")[0] != mine


def test_without_keys_nothing_starts_and_the_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingKeysError, match="set KAOHE_TALK_KEYS"):
        talk_cipher(_settings(tmp_path))
    # The attack of the issue: `kaohe start` run from another directory.
    roster = Path(__file__).parent.parent / "kaohe" / "samples" / "demo-roster.yaml"
    started = _cli(tmp_path, "start", str(roster))
    assert started.returncode == 1, started.stdout + started.stderr
    assert "KAOHE_PAYLOAD_KEYS" in started.stderr and "kaohe dev" in started.stderr
    assert "Traceback" not in started.stderr
    # The worker says which key it lacks before it connects to anything; talk keys are not
    # among its keys (only kaohe's API seals and opens talks).
    worker = _cli(tmp_path, "worker", KAOHE_TEMPORAL_ADDRESS="127.0.0.1:1")
    assert worker.returncode == 1 and "KAOHE_PAYLOAD_KEYS" in worker.stderr, worker.stderr
    assert "Traceback" not in worker.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no key file appeared


def test_the_talk_key_rotates_and_old_talks_still_open(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_dev_keys(settings)
    before = talk_cipher(settings)
    nonce, sealed = before.seal("谈话内容 old", "wf/t1")

    new_id = _cli(tmp_path, "keys", "rotate", "talk")
    assert new_id.returncode == 0, new_id.stderr
    after = talk_cipher(settings)
    assert after.key_id != before.key_id and after.key_id in new_id.stdout
    assert after.keyring.key_ids == [after.key_id, before.key_id]
    # A row names the key that sealed it (talks.key_id): the old one still opens it.
    assert after.open(nonce, sealed, "wf/t1", key_id=before.key_id) == "谈话内容 old"
    nonce2, sealed2 = after.seal("谈话内容 new", "wf/t2")
    assert after.open(nonce2, sealed2, "wf/t2", key_id=after.key_id) == "谈话内容 new"


def test_a_talk_key_file_from_before_keyrings_is_k1(tmp_path: Path) -> None:
    key = base64.b64encode(b"q" * 32).decode()
    (tmp_path / "talk.key").write_text(key + "\n")
    old = talk_cipher(_settings(tmp_path))
    assert old.key_id == "k1"  # the id the rows it sealed carry
    nonce, sealed = old.seal("x", "a")
    new_id = rotate(_settings(tmp_path), "talk")
    after = talk_cipher(_settings(tmp_path))
    assert after.keyring.key_ids == [new_id, "k1"]
    assert after.open(nonce, sealed, "a", key_id="k1") == "x"


def test_the_assertion_keys_rotate_and_old_messages_verify(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_dev_keys(settings)
    path = key_file(settings, "assertion")
    old = AssertionKeyring.parse(path.read_text())
    header = sign(old, workflow_id="w", message="m", payload_digest="d", at=100.0)
    rotate(settings, "assertion")
    ring = AssertionKeyring.parse(path.read_text())
    assert ring.key_ids[1:] == old.key_ids and ring.key_ids[0] != old.key_ids[0]
    assert verify(ring, header, workflow_id="w", message="m", payload_digest="d", now=100.0)
    fresh = sign(ring, workflow_id="w", message="m", payload_digest="d", at=100.0)
    assert ring.key_ids[0].encode() in fresh


def test_the_cli_lists_ids_never_keys_and_refuses_to_rotate_a_setting(tmp_path: Path) -> None:
    make_dev_keys(_settings(tmp_path))
    listed = _cli(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    for kind in KINDS:
        entry = key_file(_settings(tmp_path), kind).read_text().strip()
        key_id, _, secret = entry.partition(":")
        assert key_id in listed.stdout and secret not in listed.stdout
    new = _cli(tmp_path, "keys", "new", "payload")
    assert re.fullmatch(r"p-[0-9a-f]{8}:[A-Za-z0-9+/]{43}=\n", new.stdout), new.stdout
    refused = _cli(tmp_path, "keys", "rotate", "payload", KAOHE_PAYLOAD_KEYS=new.stdout.strip())
    assert refused.returncode == 1 and "KAOHE_PAYLOAD_KEYS is set" in refused.stderr
