"""The private CA that locks a self-hosted Temporal down to kaohe's own services (mTLS):
one server certificate for Temporal's frontend and internode traffic, and one client
certificate per service that may talk to Temporal at all (deploy/README.md "Temporal's own
authorization"). `kaohe tls certs DIR` writes them; nothing here runs at request time.

Each service gets a certificate of its own, so one can be revoked by reissuing the others
and so that a leaked key names its owner. The CA's key never leaves DIR: no service mounts it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The services of deploy/ that hold Temporal credentials, and nothing else does.
CLIENTS = ("kaohe-worker", "kaohe-api", "kaohe-cli", "temporal-ui", "temporal-admin")
SERVER = "temporal"
# The compose service name, and loopback for operators on the host.
SERVER_NAMES = ("temporal", "localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers and most policies accept for a leaf; renew with --renew


@dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kaohe"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def new_ca(common_name: str = "kaohe Temporal CA", days: int = CA_DAYS) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def issue(
    ca: Pair, common_name: str, *, server_names: Sequence[str] = (), days: int = LEAF_DAYS
) -> Pair:
    """A leaf signed by `ca`: a client certificate, and with `server_names` a server one too
    (Temporal's nodes present the same certificate as clients of each other)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_names:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_alt_name(n) for n in server_names]), critical=False
        )
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def write(folder: Path, name: str, pair: Pair, key_mode: int = 0o644) -> None:
    """name.crt and name.key. A leaf's key is 0644 because the Temporal images run as users
    of their own: its secrecy comes from the folder (0700) and from each service mounting
    only its own files."""
    (folder / f"{name}.crt").write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{name}.key"
    key_path.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, key_mode)


def read(folder: Path, name: str) -> Pair:
    cert = x509.load_pem_x509_certificate((folder / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / f"{name}.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / name}.key: not an EC key")
    return Pair(cert, key)


def make_deploy_certs(
    folder: Path,
    *,
    server_names: Iterable[str] = SERVER_NAMES,
    clients: Iterable[str] = CLIENTS,
    renew: bool = False,
) -> list[str]:
    """The CA (kept if it is there), Temporal's server certificate and one client certificate
    per service, in `folder`; existing leaves are kept unless `renew`. Returns the names
    written, so a second run writes nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    written: list[str] = []
    if (folder / "ca.crt").exists():
        ca = read(folder, "ca")
    else:
        ca = new_ca()
        write(folder, "ca", ca, key_mode=0o600)
        written.append("ca")
        renew = True  # leaves of another CA would not verify
    leaves = {SERVER: tuple(server_names), **{client: () for client in clients}}
    for name, names in leaves.items():
        if renew or not (folder / f"{name}.crt").exists():
            write(folder, name, issue(ca, name, server_names=names))
            written.append(name)
    return written
