"""The dev stack's own token issuer: an EC P-256 signing key in the data directory, its JWKS
served at /.well-known/jwks.json, and tokens minted for a named person (`kaohe token mint`).
With it `make run` and the tests authenticate as a production site does against its own
identity provider; production points kaohe at that provider instead (settings oidc_*)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kaohe.access.identity import TokenVerifier
from kaohe.codec.payloads import create_secret_file

DEV_ISSUER = "kaohe-dev"
AUDIENCE = "kaohe"


class DevIssuer:
    def __init__(self, key: ec.EllipticCurvePrivateKey, kid: str, issuer: str = DEV_ISSUER):
        self._key = key
        self.kid = kid
        self.issuer = issuer

    @classmethod
    def generate(cls) -> DevIssuer:
        return cls(ec.generate_private_key(ec.SECP256R1()), secrets.token_hex(8))

    @classmethod
    def in_dir(cls, data_dir: Path, create: bool = False) -> DevIssuer:
        """The issuer kept in data_dir/issuer.json; made there when `create` (kaohe dev)."""
        path = data_dir / "issuer.json"
        if not path.exists():
            if not create:
                raise FileNotFoundError(
                    f"{path}: no dev issuer; `kaohe dev` creates one (or set KAOHE_OIDC_*)"
                )
            made = cls.generate()
            # Another process may make one at the same moment: the file holds the winner.
            create_secret_file(path, json.dumps({"kid": made.kid, "key": made.private_pem()}))
        stored = json.loads(path.read_text())
        key = serialization.load_pem_private_key(stored["key"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, stored["kid"])

    def private_pem(self) -> str:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def verifier(self, audience: str = "kaohe") -> TokenVerifier:
        """A verifier of this issuer's tokens for `audience`, from its public keys."""
        return TokenVerifier(
            jwks=jwt.PyJWKSet.from_dict(self.jwks()), issuer=self.issuer, audience=audience
        )

    def mint(
        self,
        subject: str,
        *,
        ttl: float = 3600,
        name: str | None = None,
        audience: str = AUDIENCE,
        now: float | None = None,
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_hex(8),
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})


def jwks_app(issuer: DevIssuer) -> web.Application:
    """/.well-known/jwks.json and a minimal openid-configuration naming it."""

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks(), headers={"Cache-Control": "max-age=300"})

    async def configuration(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "issuer": issuer.issuer,
                "jwks_uri": f"{base}/.well-known/jwks.json",
                "id_token_signing_alg_values_supported": ["ES256"],
            }
        )

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/.well-known/openid-configuration", configuration)
    return app
