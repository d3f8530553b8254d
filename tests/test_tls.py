"""Real TLS and mTLS connections to Temporal, made by configuration alone (KAOHE_TEMPORAL_TLS_*).
The dev server speaks plaintext gRPC, so the test puts a TLS-terminating proxy of its own in
front of it, with a CA, a server and a client certificate made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kaohe.client import connect
from kaohe.settings import Settings
from tests.conftest import Stack
from tests.test_cli import akaohe

SERVER_NAME = "temporal.kaohe.test"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: ExtendedKeyUsageOID | None = None,
    dns: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns is not None:
        names = [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, server.pem/.key (for SERVER_NAME), client.pem/.key, and a stranger's client
    certificate (stranger.pem/.key) from a CA the server does not trust."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("kaohe test CA", ca_key, None)
    _write(folder, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        SERVER_NAME,
        server_key,
        (ca, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        dns=SERVER_NAME,
    )
    _write(folder, "server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("kaohe-worker", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(folder, "client", client, client_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _issue("someone else's CA", other_key, None)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _issue(
        "stranger", stranger_key, (other_ca, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    _write(folder, "stranger", stranger, stranger_key)
    return folder


@asynccontextmanager
async def tls_proxy(target: str, pki: Path, *, mutual: bool) -> AsyncIterator[str]:
    """A TLS (mTLS if `mutual`) endpoint on loopback that forwards to `target` in plaintext;
    yields its address."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.set_alpn_protocols(["h2"])  # gRPC
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.pem")
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


def tls_env(address: str, pki: Path, client: str | None = "client") -> dict[str, str]:
    """The environment an operator sets for a TLS (with `client`: mTLS) Temporal."""
    env = {
        "KAOHE_TEMPORAL_ADDRESS": address,
        "KAOHE_TEMPORAL_TLS_CA_FILE": str(pki / "ca.pem"),
        "KAOHE_TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
    }
    if client is not None:
        env["KAOHE_TEMPORAL_TLS_CERT_FILE"] = str(pki / f"{client}.pem")
        env["KAOHE_TEMPORAL_TLS_KEY_FILE"] = str(pki / f"{client}.key")
    return env


def tls_settings(stack: Stack, address: str, pki: Path, client: str | None = "client") -> Settings:
    """The stack's settings pointed at `address` with the same TLS configuration."""
    update: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls_ca_file": pki / "ca.pem",
        "temporal_tls_server_name": SERVER_NAME,
    }
    if client is not None:
        update["temporal_tls_cert_file"] = pki / f"{client}.pem"
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
        client = await connect(tls_settings(stack, address, pki))
        assert await client.count_workflows() is not None
        # The CLI, configured by the environment alone.
        listed = await akaohe(stack, "stalled", env=tls_env(address, pki))
        assert listed.returncode == 0, listed.stderr
        # No client certificate, or one from a CA the server does not trust: refused.
        for client_name in (None, "stranger"):
            with pytest.raises(RuntimeError):
                await connect(tls_settings(stack, address, pki, client=client_name))
