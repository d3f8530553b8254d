"""Running kaohe's API: `kaohe api` (and `kaohe dev`) serve it with uvicorn on api_host:port."""

from __future__ import annotations

import jwt
import uvicorn

from activities.db import create_pool
from kaohe.access.identity import TokenVerifier
from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.api.codec import CodecAccess
from kaohe.client import connect
from kaohe.keys import talk_cipher
from kaohe.settings import Settings


def verifier_from_settings(settings: Settings) -> tuple[TokenVerifier, DevIssuer | None]:
    """The site's identity provider when oidc_jwks_url is set, else the dev stack's issuer
    (whose JWKS the API then serves too)."""
    common = {
        "issuer": settings.oidc_issuer,
        "audience": settings.oidc_audience,
        "principal_claim": settings.oidc_principal_claim,
    }
    if settings.oidc_jwks_url:
        return TokenVerifier.from_jwks_url(settings.oidc_jwks_url, **common), None
    issuer = DevIssuer.in_dir(settings.data_dir)
    return TokenVerifier(jwks=jwt.PyJWKSet.from_dict(issuer.jwks()), **common), issuer


def codec_access(settings: Settings, issuer: DevIssuer | None) -> CodecAccess:
    """The codec routes' CORS origins (the dev UI's and KAOHE_CODEC_CORS_ORIGINS) and, on
    the dev stack (its own issuer), the login that sends the browser to the dev UI."""
    origins = [*settings.temporal_ui_origins, *settings.codec_cors_origins]
    ui_url = settings.temporal_ui_origins[0] if issuer is not None else None
    return CodecAccess(cors_origins=origins, issuer=issuer, ui_url=ui_url)


async def serve_api(settings: Settings, database_url: str) -> None:
    verifier, issuer = verifier_from_settings(settings)
    cipher = talk_cipher(settings)  # MissingKeysError before anything connects
    client = await connect(settings)
    pool = await create_pool(database_url, settings.db_pool_min, settings.db_pool_max)
    try:
        api = Api(
            client,
            pool,
            verifier,
            cipher,
            vote_refusals_per_minute=settings.vote_refusals_per_minute,
        )
        app = create_app(
            api, jwks=issuer.jwks() if issuer else None, codec=codec_access(settings, issuer)
        )
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,  # kaohe's structlog setup renders uvicorn's records
            access_log=False,
            lifespan="on",
        )
        await uvicorn.Server(config).serve()
    finally:
        await pool.close()
