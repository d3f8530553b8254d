"""Real TLS and mTLS connections to Temporal, made by configuration alone (KAOHE_TEMPORAL_TLS_*).
The dev server speaks plaintext gRPC, so the test puts a TLS-terminating proxy of its own in
front of it, with the certificates `kaohe tls certs` makes for deploy/ (kaohe/certs.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from kaohe.certs import CLIENTS, issue, make_deploy_certs, new_ca, write
from kaohe.client import connect
from kaohe.settings import Settings
from tests.conftest import Stack
from tests.test_cli import akaohe

SERVER_NAME = "temporal.kaohe.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `kaohe tls certs` makes (ca.crt, temporal.crt/.key for SERVER_NAME, a client
    certificate per service), and a stranger's client certificate (stranger.crt/.key) from a
    CA the server does not trust."""
    folder = tmp_path_factory.mktemp("pki")
    make_deploy_certs(folder, server_names=(SERVER_NAME, "127.0.0.1"))
    write(folder, "stranger", issue(new_ca("someone else's CA"), "kaohe-worker"))
    return folder


@asynccontextmanager
async def tls_proxy(target: str, pki: Path, *, mutual: bool) -> AsyncIterator[str]:
    """A TLS (mTLS if `mutual`) endpoint on loopback that forwards to `target` in plaintext;
    yields its address."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "temporal.crt", pki / "temporal.key")
    context.set_alpn_protocols(["h2"])  # gRPC
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.crt")
    host, port = target.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def tls_env(address: str, pki: Path, client: str | None = "kaohe-worker") -> dict[str, str]:
    """The environment an operator sets for a TLS (with `client`: mTLS) Temporal."""
    env = {
        "KAOHE_TEMPORAL_ADDRESS": address,
        "KAOHE_TEMPORAL_TLS_CA_FILE": str(pki / "ca.crt"),
        "KAOHE_TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
    }
    if client is not None:
        env["KAOHE_TEMPORAL_TLS_CERT_FILE"] = str(pki / f"{client}.crt")
        env["KAOHE_TEMPORAL_TLS_KEY_FILE"] = str(pki / f"{client}.key")
    return env


def tls_settings(
    stack: Stack, address: str, pki: Path, client: str | None = "kaohe-worker"
) -> Settings:
    """The stack's settings pointed at `address` with the same TLS configuration."""
    update: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls_ca_file": pki / "ca.crt",
        "temporal_tls_server_name": SERVER_NAME,
    }
    if client is not None:
        update["temporal_tls_cert_file"] = pki / f"{client}.crt"
        update["temporal_tls_key_file"] = pki / f"{client}.key"
    return stack.settings.model_copy(update=update)


async def test_tls_with_the_servers_ca(stack: Stack, pki: Path) -> None:
    async with tls_proxy(stack.settings.temporal_address, pki, mutual=False) as address:
        client = await connect(tls_settings(stack, address, pki, client=None))
        assert await client.count_workflows() is not None
        # The system's roots do not know the test CA: a server it cannot verify is refused.
        untrusted = stack.settings.model_copy(
            update={"temporal_address": address, "temporal_tls": True}
        )
        with pytest.raises(RuntimeError):
            await connect(untrusted)


async def test_mtls_by_configuration_from_the_library_and_the_cli(stack: Stack, pki: Path) -> None:
    async with tls_proxy(stack.settings.temporal_address, pki, mutual=True) as address:
        # Every service of deploy/ gets through with its own certificate.
        for name in CLIENTS:
            client = await connect(tls_settings(stack, address, pki, client=name))
            assert await client.count_workflows() is not None, name
        # The CLI, configured by the environment alone.
        listed = await akaohe(stack, "stalled", env=tls_env(address, pki))
        assert listed.returncode == 0, listed.stderr
        # No client certificate, or one from a CA the server does not trust: refused.
        for client_name in (None, "stranger"):
            with pytest.raises(RuntimeError):
                await connect(tls_settings(stack, address, pki, client=client_name))
