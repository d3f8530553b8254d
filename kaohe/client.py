"""The Temporal client every kaohe process uses: pydantic data converter (with payload
encryption, kaohe/codec/payloads.py, unless turned off), configured target."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from activities.keyring import KeyringError
from kaohe.assertions import Keyring
from kaohe.codec.payloads import codec_from_settings
from kaohe.interceptors import Assertions
from kaohe.settings import Settings
from kaohe.tracing import tracing_interceptors


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic data converter plus the payload codec the settings call for.

    Use it for anything that reads or writes payloads outside `connect()`, e.g. a Replayer.
    Decoding passes unencrypted payloads through, so it reads plaintext histories too.
    """
    try:
        codec = codec_from_settings(settings)
    except KeyringError as err:  # missing or malformed keys: the message names the setting
        raise ConnectionSettingsError(str(err)) from None
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


class ConnectionSettingsError(ValueError):
    """TLS or API key settings that do not make a connection; names the setting."""


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConnectionSettingsError(
            f"KAOHE_{setting}: cannot read {path}: {err.strerror}"
        ) from None


def tls_config(settings: Settings) -> TLSConfig | bool:
    """The TLS the settings ask for: False (plaintext), True (TLS with the system's roots)
    or a TLSConfig with the server's CA and/or a client certificate (mTLS)."""
    s = settings
    if (s.temporal_tls_cert_file is None) != (s.temporal_tls_key_file is None):
        raise ConnectionSettingsError(
            "KAOHE_TEMPORAL_TLS_CERT_FILE and KAOHE_TEMPORAL_TLS_KEY_FILE go together (mTLS)"
        )
    files = (s.temporal_tls_ca_file, s.temporal_tls_cert_file, s.temporal_tls_server_name)
    if not any(f is not None for f in files):
        # An API key travels in a header: only over TLS.
        return s.temporal_tls or api_key(s) is not None
    return TLSConfig(
        server_root_ca_cert=_read(s.temporal_tls_ca_file, "TEMPORAL_TLS_CA_FILE")
        if s.temporal_tls_ca_file
        else None,
        client_cert=_read(s.temporal_tls_cert_file, "TEMPORAL_TLS_CERT_FILE")
        if s.temporal_tls_cert_file
        else None,
        client_private_key=_read(s.temporal_tls_key_file, "TEMPORAL_TLS_KEY_FILE")
        if s.temporal_tls_key_file
        else None,
        domain=s.temporal_tls_server_name,
    )


def api_key(settings: Settings) -> str | None:
    if settings.temporal_api_key is not None:
        return settings.temporal_api_key.get_secret_value()
    if settings.temporal_api_key_file is not None:
        key = _read(settings.temporal_api_key_file, "TEMPORAL_API_KEY_FILE").decode().strip()
        return key or None
    return None


def assertion_keyring(settings: Settings) -> Keyring | None:
    """The workers' assertion keys: the setting, else the key file (made only by
    `kaohe dev`, kaohe/keys.py); None when there are none."""
    if settings.assertion_keys is not None:
        try:
            return Keyring.parse(settings.assertion_keys.get_secret_value())
        except ValueError as err:
            raise ConnectionSettingsError(f"KAOHE_{err}") from None
    path = settings.data_dir / "assertion.keys"
    return Keyring.parse(path.read_text()) if path.exists() else None


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A client on the settings' cluster; `runtime` carries the worker's metrics exporter.
    With KAOHE_OTEL_TRACING its calls (and a worker built on it) are traced; with assertion
    keys it signs its updates and signals, and a worker built on it checks theirs."""
    converter = data_converter(settings)
    interceptors: list[Any] = tracing_interceptors(settings)
    keyring = assertion_keyring(settings)
    if keyring is not None:
        interceptors.append(Assertions(keyring, converter.payload_converter))
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
        tls=tls_config(settings),
        api_key=api_key(settings),
        interceptors=interceptors,
        runtime=runtime,
    )
