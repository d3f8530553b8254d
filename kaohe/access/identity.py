"""Authenticated identities. People present OIDC/OAuth2 bearer tokens (JWTs checked against the
issuer's JWKS, audience and expiry with PyJWT); integrating systems present API keys
(kaohe/access/api_keys.py). Nothing here trusts a name the request body gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jwt

# Asymmetric only: a shared-secret algorithm would let anyone holding the verification key
# mint tokens, and "none" is never accepted.
ALGORITHMS = ["ES256", "RS256", "EdDSA"]


@dataclass(frozen=True)
class Identity:
    principal: str  # a person's token subject, or a system's id
    kind: Literal["person", "system"]
    name: str | None = None


class Unauthenticated(Exception):
    """No identity could be established; the message says why and is safe to show."""


class TokenVerifier:
    """Checks a bearer token's signature (a key of the issuer's JWKS, by `kid`), issuer,
    audience, expiry and not-before, and takes the principal from one claim."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: jwt.PyJWKClient | jwt.PyJWKSet,
        principal_claim: str = "sub",
        leeway: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwks
        self._claim = principal_claim
        self._leeway = leeway

    @classmethod
    def from_jwks_url(cls, url: str, **kwargs: Any) -> TokenVerifier:
        """The site's identity provider: its JWKS fetched and cached (keys rotate by kid)."""
        return cls(jwks=jwt.PyJWKClient(url, cache_keys=True, lifespan=300), **kwargs)

    def for_audience(self, audience: str, principal_claim: str = "sub") -> TokenVerifier:
        """The same issuer and keys, for tokens minted for another audience (the codec's
        login ticket and session cookie, kaohe/api/codec.py): such a token is no bearer
        token of kaohe's API, and an API token is neither of them."""
        return TokenVerifier(
            issuer=self.issuer,
            audience=audience,
            jwks=self._jwks,
            principal_claim=principal_claim,
            leeway=self._leeway,
        )

    def _key(self, token: str) -> Any:
        if isinstance(self._jwks, jwt.PyJWKClient):
            return self._jwks.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if key.key_id == kid:
                return key.key
        raise jwt.InvalidTokenError(f"no key {kid!r} in the issuer's JWKS")

    def verify(self, token: str) -> Identity:
        """Blocking when the JWKS must be fetched: call it in a thread from async code."""
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", self._claim]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the bearer token is not for {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the bearer token is not from {self.issuer!r}") from None
        except jwt.PyJWKClientError as err:
            raise Unauthenticated(f"the issuer's keys cannot be read: {err}") from None
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"the bearer token is not valid: {err}") from None
        principal = claims[self._claim]
        if not isinstance(principal, str) or not principal:
            raise Unauthenticated(f"the bearer token's {self._claim!r} claim is empty")
        name = claims.get("name")
        return Identity(principal, "person", name if isinstance(name, str) else None)
