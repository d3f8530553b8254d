"""Runtime settings, read from the environment (prefix ``KAOHE_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded server's LOGIN role for the worker, the API and the CLI, a member of kaohe_app
# (`kaohe dev` and the tests' stack make it after the migrations).
DEV_APP_USER = "kaohe_app_user"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAOHE_", env_file=".env", extra="ignore")

    # Where the embedded stack keeps its state (Temporal SQLite file, PostgreSQL data, keys).
    data_dir: Path = Path(".kaohe")

    # Temporal: the embedded dev server listens here; point at any other cluster instead.
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    temporal_http_port: int = 7243
    task_queue: str = "kaohe"
    # A remote cluster: TLS (with the server's CA, or the system's), mTLS with a client
    # certificate and key, and/or an API key (Temporal Cloud). Secrets come from the
    # environment or from files, and are never logged.
    temporal_tls: bool = False
    temporal_tls_ca_file: Path | None = None
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    temporal_api_key_file: Path | None = None

    # PostgreSQL. database_url is what the worker, the API and the CLI connect as: a LOGIN
    # role that is a member of kaohe_app (schemas/sql/015), which may only append to the audit
    # table. migration_database_url is the tables' owner, for `kaohe migrate` alone, which also
    # makes database_url's user such a member (with the URL's password); unset, the
    # migrations run as database_url (and the audit trail does not hold against the app).
    # database_url unset means the embedded server `kaohe dev` runs on postgres_port: the
    # migrations as its superuser postgres, everything else as DEV_APP_USER.
    database_url: SecretStr | None = None
    migration_database_url: SecretStr | None = None
    postgres_port: int = 55432
    # Under root the embedded server runs as this system user, created on first start.
    pg_system_user: str = "embedded_postgres"
    db_pool_min: int = Field(default=1, ge=1)
    db_pool_max: int = Field(default=10, ge=1)

    # Worker tuning (per process; `kaohe worker --processes N` runs N on one task queue).
    # Activities hold a pool connection each while they run: keep the activity slots within
    # reach of db_pool_max, or they wait for connections.
    worker_max_cached_workflows: int = Field(default=1000, ge=0)
    worker_max_concurrent_workflow_tasks: int | None = Field(default=None, ge=1)
    worker_max_concurrent_activities: int | None = Field(default=None, ge=1)
    worker_max_concurrent_local_activities: int | None = Field(default=None, ge=1)

    # Talk content is encrypted at rest with AES-256-GCM under this keyring, "id:base64,..."
    # with the first one current (older ones only open what they sealed); unset means the
    # key file talk.key in data_dir, which only `kaohe dev` creates (kaohe/keys.py).
    talk_keys: SecretStr | None = None

    # Payload encryption (kaohe/codec/payloads.py): every payload in workflow history is AES-256-GCM
    # encrypted. Keys as "id:base64key,..." with the first one current (older ones only
    # decrypt); unset means the key file payload.key in data_dir, which only `kaohe dev`
    # creates. Turning encryption off stops encrypting new payloads; existing keys still
    # decrypt the old ones.
    payload_encryption: bool = True
    payload_keys: SecretStr | None = None

    # The Temporal UI decodes payloads through kaohe's API (/v1/codec, kaohe/api/codec.py), as
    # the user with their own codec_decode binding. Browser origins of the UIs that do (a
    # deployed UI), which CORS allows on those routes with credentials, besides the dev UI's.
    codec_cors_origins: list[str] = Field(default_factory=list)

    # Assertions (kaohe/assertions.py): the keyring "id:base64,..." (the first signs, all
    # verify) with which kaohe's API and tools sign every update and signal and the workers
    # check them; unset means the key file assertion.keys in data_dir, which only `kaohe dev`
    # creates. A worker refuses to start without keys.
    assertion_keys: SecretStr | None = None

    # Audit anchors (kaohe/anchors.py): every unit's audit chain head, signed with an Ed25519
    # key PostgreSQL never sees and appended to audit_anchor_file (unset: audit-anchors.jsonl
    # in data_dir) by the worker every audit_anchor_interval seconds (0: never) and by
    # `kaohe audit anchor`; `kaohe audit verify --anchors FILE` holds the chain to them. Keys
    # "id:base64 of a 32-byte seed,..." (the first signs, all verify); unset means the key
    # file audit-anchor.keys in data_dir, which only `kaohe dev` creates (no key: no
    # anchoring). An auditor verifies with the public keys alone (`kaohe audit anchor-key`).
    audit_anchor_keys: SecretStr | None = None
    audit_anchor_public_keys: str | None = None
    audit_anchor_file: Path | None = None
    audit_anchor_interval: float = Field(default=60.0, ge=0)

    # kaohe's API (kaohe/api): what people and integrating systems talk to.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8236, ge=0, le=65535)
    # The `kaohe` CLI as a person or system (kaohe/cli/api_client.py): with api_token set its
    # actions and reads go through kaohe's API at api_url (unset: http://api_host:api_port,
    # the dev stack's), as the token's principal; without it (or with --direct) straight to
    # Temporal with the workers' assertion keys, as the operators' path. The token is a
    # bearer JWT (`kaohe token mint NAME`, or the site's identity provider) or a system's
    # API key (kh_..., sent as X-Api-Key).
    api_url: str | None = None
    api_token: SecretStr | None = None

    # Who acts: people's bearer tokens come from this OIDC issuer (its JWKS at oidc_jwks_url)
    # for this audience; unset oidc_jwks_url means the dev stack's own issuer (made by
    # `kaohe dev`, its JWKS served by the API; `kaohe token mint` makes tokens).
    oidc_issuer: str = "kaohe-dev"
    oidc_audience: str = "kaohe"
    oidc_jwks_url: str | None = None
    oidc_principal_claim: str = "sub"

    # The raters' voting page (kaohe/api/vote.py) as their phones reach it: what the QR slips
    # of `kaohe tokens issue --pdf` hold, the token after it in the fragment (#t=...); unset
    # means http://api_host:api_port/vote, the dev stack's.
    vote_url: str | None = None
    # Refusals of the voting page's routes per client address and minute (kaohe/api/
    # throttle.py); past it, 429 with no look-up and no audit row. 0 turns it off. Behind a
    # reverse proxy, let uvicorn read the client from X-Forwarded-For (FORWARDED_ALLOW_IPS).
    vote_refusals_per_minute: int = Field(default=60, ge=0, le=100_000)

    # Notification channels (activities/notify.py). Webhooks are signed with HMAC-SHA256 of
    # "timestamp.body" under this secret; a webhook contact without it is dead-lettered.
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=5.0, gt=0)
    # Email over SMTP; a contact's email is dead-lettered while smtp_host is unset.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "kaohe@localhost"
    smtp_starttls: bool = True
    # Attempts per delivery before it is dead-lettered (the workflow goes on).
    notify_max_attempts: int = Field(default=8, ge=1, le=100)

    # auto: the console on a terminal, JSON lines anywhere else (production).
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: str = "INFO"

    # The worker's Prometheus endpoint (/metrics, /healthz); port 0 turns it off. With
    # `--processes N`, process i listens on metrics_port + i.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_refresh_seconds: float = Field(default=30.0, gt=0)
    # Spans through the SDK's OpenTelemetry interceptor, exported over OTLP/HTTP to the
    # standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT (needs `pip install kaohe[otel]`).
    otel_tracing: bool = False

    @property
    def effective_database_url(self) -> str:
        """The app's database: the configured one, or the embedded one `kaohe dev` runs, as
        its member of kaohe_app."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://{DEV_APP_USER}@127.0.0.1:{self.postgres_port}/kaohe"

    @property
    def effective_migration_database_url(self) -> str:
        """Where `kaohe migrate` runs, as the tables' owner: migration_database_url, else
        database_url, else the embedded server's superuser."""
        for url in (self.migration_database_url, self.database_url):
            if url is not None:
                return url.get_secret_value()
        return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/kaohe"

    @property
    def temporal_host(self) -> str:
        return self.temporal_address.rsplit(":", 1)[0]

    @property
    def temporal_grpc_port(self) -> int:
        return int(self.temporal_address.rsplit(":", 1)[1])

    @property
    def temporal_ui_origins(self) -> list[str]:
        """The origins a browser shows the dev server's UI under (127.0.0.1 and localhost)."""
        hosts = dict.fromkeys([self.temporal_host, "127.0.0.1", "localhost"])
        hosts.pop("0.0.0.0", None)
        return [f"http://{host}:{self.temporal_ui_port}" for host in hosts]

    @property
    def effective_api_url(self) -> str:
        """Where the CLI reaches kaohe's API: api_url, or the API's own address on api_host
        (a wildcard listening address reached on the loopback)."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            self.api_host, self.api_host
        )
        return f"http://{f'[{host}]' if ':' in host else host}:{self.api_port}"

    @property
    def effective_vote_url(self) -> str:
        """The voting page's public address: vote_url, or the API's own on api_host."""
        if self.vote_url:
            return self.vote_url.rstrip("/")
        host = self.api_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.api_port}/vote"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
