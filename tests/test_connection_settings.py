"""Connections to a remote Temporal (TLS, mTLS, API key) by configuration, and secrets kept
out of the logs of a worker that runs a unit through every stage."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import TLSConfig

from kaohe.client import ConnectionSettingsError, api_key, tls_config
from kaohe.codec.payloads import KEY_FILE_NAME
from kaohe.settings import Settings
from kaohe.sim.simulate import TalkStore, TokenSource, drive_unit
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import TEST_TALK_KEYS, sample_unit, start_unit
from tests.test_cli import kaohe
from tests.test_worker_restart import spawn_worker


def test_plaintext_tls_mtls_and_api_key(tmp_path: Path) -> None:
    assert tls_config(Settings()) is False
    assert tls_config(Settings(temporal_tls=True)) is True
    # An API key alone (Temporal Cloud): TLS with the system's roots.
    cloud = Settings(temporal_api_key="key-from-env")
    assert tls_config(cloud) is True and api_key(cloud) == "key-from-env"
    (tmp_path / "api.key").write_text("key-from-file\n")
    assert api_key(Settings(temporal_api_key_file=tmp_path / "api.key")) == "key-from-file"

    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    mtls = tls_config(
        Settings(
            temporal_tls_ca_file=tmp_path / "ca.pem",
            temporal_tls_cert_file=tmp_path / "client.pem",
            temporal_tls_key_file=tmp_path / "client.key",
            temporal_tls_server_name="temporal.internal",
        )
    )
    assert mtls == TLSConfig(
        server_root_ca_cert=b"-----ca.pem-----",
        client_cert=b"-----client.pem-----",
        client_private_key=b"-----client.key-----",
        domain="temporal.internal",
    )


def test_settings_that_make_no_connection_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConnectionSettingsError, match=r"TLS_CERT_FILE and .*TLS_KEY_FILE go"):
        tls_config(Settings(temporal_tls_cert_file=tmp_path / "client.pem"))
    with pytest.raises(ConnectionSettingsError, match="KAOHE_TEMPORAL_TLS_CA_FILE: cannot read"):
        tls_config(Settings(temporal_tls_ca_file=tmp_path / "missing.pem"))
    # From the CLI: one line naming the setting, no traceback.
    env = {
        "KAOHE_TEMPORAL_TLS_CERT_FILE": str(tmp_path / "client.pem"),
        "KAOHE_PAYLOAD_KEYS": "p-test:" + "A" * 43 + "=",
    }
    result = kaohe(None, "status", "kaohe-x-y", env=env)
    assert result.returncode == 1
    assert "KAOHE_TEMPORAL_TLS_KEY_FILE go together" in result.stderr
    assert "Traceback" not in result.stderr


async def test_no_secret_in_the_logs(
    stack: Stack, client: Client, tmp_path: Path, tokens: TokenSource, talks: TalkStore
) -> None:
    payload_keys = ",".join((stack.data_dir / KEY_FILE_NAME).read_text().split())
    db_password = "Db-Pa55-in-the-url"
    secrets = {
        "KAOHE_PAYLOAD_KEYS": payload_keys,
        "KAOHE_TALK_KEYS": TEST_TALK_KEYS,
        "KAOHE_WEBHOOK_SECRET": "webhook-secret-value-42",
        "KAOHE_SMTP_PASSWORD": "smtp-password-value-42",
        "KAOHE_DATABASE_URL": stack.database_url.replace("@", f":{db_password}@", 1),
        "KAOHE_LOG_LEVEL": "DEBUG",
    }
    task_queue = f"secrets-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    worker = spawn_worker(stack, task_queue, log, env=secrets)
    try:
        unit = sample_unit(cadres=2)
        handle = await start_unit(client, task_queue, unit)
        status = await asyncio.wait_for(
            drive_unit(
                client, handle.id, unit, stop_at=Stage.RESULT_USE, tokens=tokens, talks=talks
            ),
            120,
        )
        assert status.stage == Stage.RESULT_USE
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    text = log.read_text()
    assert handle.id in text  # the worker did log its work
    leaked = [
        name
        for name, value in secrets.items()
        if name != "KAOHE_LOG_LEVEL"
        and (value in text or (name == "KAOHE_DATABASE_URL" and db_password in text))
    ]
    for key in payload_keys.split(","):
        assert key.split(":", 1)[1] not in text
    assert leaked == []
    assert "谈话内容" not in text  # nor talk content
