"""deploy/: the image, the compose file and the Kubernetes manifests, checked without Docker.

tests/data/compose-spec.json is the Compose Specification's JSON Schema, copied unchanged from
https://github.com/compose-spec/compose-spec/blob/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json
(Copyright The Compose Specification Authors; Apache License 2.0,
https://github.com/compose-spec/compose-spec/blob/main/LICENSE).

The manifests go through kubernetes_validate (the API schemas, strict) and through the real
`kubectl apply --dry-run=client`, pointed at a stand-in API server that serves only discovery.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from kaohe.cli.main import app as cli_app
from kaohe.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
SECRET_EXAMPLE = K8S / "kaohe-secrets.yaml.example"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
KAOHE = str(Path(sys.executable).parent / "kaohe")

# Secrets the operator creates, named in deploy/README.md; everything else must be defined here.
EXTERNAL_SECRETS = {"kaohe-secrets", "kaohe-worker-temporal-tls", "kaohe-api-temporal-tls"}
SECRET_NAME = re.compile(r"(PASSWORD|PWD|SECRET|TOKEN|_KEY|_KEYS|DATABASE_URL)$")
# Named like a secret, but a flag: the UI passes the user's own access token to the codec.
NOT_SECRET = {"TEMPORAL_CODEC_PASS_ACCESS_TOKEN"}

# ---- compose -----------------------------------------------------------------------------

# The compose file's services and what each waits for.
EXPECTED_DEPENDS_ON = {
    "temporal-postgresql": {},
    "temporal-schema": {"temporal-postgresql": "service_healthy"},
    "temporal": {"temporal-schema": "service_completed_successfully"},
    "temporal-namespace": {"temporal": "service_healthy"},
    "temporal-search-attributes": {"temporal-namespace": "service_completed_successfully"},
    "temporal-ui": {"temporal": "service_healthy", "kaohe-api": "service_healthy"},
    "kaohe-postgresql": {},
    "kaohe-migrate": {"kaohe-postgresql": "service_healthy"},
    "kaohe-worker": {
        "temporal": "service_healthy",
        "temporal-search-attributes": "service_completed_successfully",
        "kaohe-migrate": "service_completed_successfully",
    },
    "kaohe-api": {"temporal": "service_healthy", "kaohe-migrate": "service_completed_successfully"},
    "kaohe": {"kaohe-migrate": "service_completed_successfully"},
}
ONE_SHOT = {"temporal-schema", "temporal-namespace", "temporal-search-attributes", "kaohe-migrate"}
# Which services may see each secret (least privilege).
SECRET_READERS = {
    "TEMPORAL_DB_PASSWORD": {"temporal-postgresql", "temporal-schema", "temporal"},
    # The tables' owner: the database itself and the migrations, nobody else.
    "KAOHE_DB_PASSWORD": {"kaohe-postgresql", "kaohe-migrate"},
    # The app's role (kaohe_app): it may only append to the audit table; migrate makes it.
    "KAOHE_APP_DB_PASSWORD": {"kaohe-migrate", "kaohe-worker", "kaohe-api", "kaohe"},
    # The UI holds none: it decodes through kaohe's API, as the user (issue 20 item 7).
    "KAOHE_PAYLOAD_KEYS": {"kaohe-worker", "kaohe-api", "kaohe"},
    # Talks are sealed and opened by the API alone (and `kaohe demo`): no workflow holds one.
    "KAOHE_TALK_KEYS": {"kaohe-api", "kaohe"},
    # Only the workers, the API and the operators' CLI can make a message a workflow takes.
    "KAOHE_ASSERTION_KEYS": {"kaohe-worker", "kaohe-api", "kaohe"},
    # The audit chain's heads are signed by the worker (and an operator's CLI) alone.
    "KAOHE_AUDIT_ANCHOR_KEYS": {"kaohe-worker", "kaohe"},
    # Not secret, but the site's own: required, never defaulted.
    "KAOHE_OIDC_ISSUER": {"kaohe-api", "temporal-ui"},
    "KAOHE_OIDC_JWKS_URL": {"kaohe-api"},
    "TEMPORAL_UI_OIDC_CLIENT_ID": {"temporal-ui"},
    "TEMPORAL_UI_OIDC_CLIENT_SECRET": {"temporal-ui"},
}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def read_env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not VAR=value: {line!r}"
            values[name] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string ($$ is a literal $)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise ValueError(f"required variable {name}: {arg}")
        return value or ""

    pieces = [VARIABLE.sub(one, part) for part in text.split("$$")]
    for piece in pieces:
        assert "$" not in piece, f"unescaped $ (write $$ for the shell): {text!r}"
    return "$".join(pieces)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def example_env() -> dict[str, str]:
    """.env.example with a distinct fake value for each secret it leaves empty."""
    env = read_env_example()
    return {name: value or f"fake-{name.lower()}-value" for name, value in env.items()}


@cache
def compose() -> dict[str, Any]:
    """The compose file as Compose sees it with .env.example filled in."""
    return interpolate_tree(raw_compose(), example_env())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """target port -> (host address, published port), from the short syntax."""
    ports = {}
    for spec in service.get("ports", []):
        host, port, target = str(spec).rsplit(":", 2)
        ports[int(target)] = (host, int(port))
    return ports


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def uses_kaohe_image(service: dict[str, Any]) -> bool:
    return "build" in service


def test_compose_file_is_valid_compose_spec() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # It declares draft-07 as "https://json-schema.org/draft-07/schema", an id jsonschema
    # does not know (it expects ".../schema#"): name the draft.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for label, document in (("as written", raw_compose()), ("interpolated", compose())):
        errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.path])
        assert not errors, f"{label}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
        )


def test_compose_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == set(EXPECTED_DEPENDS_ON)
    for name, service in services.items():
        depends = {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        assert depends == EXPECTED_DEPENDS_ON[name], name
        for dep, condition in depends.items():
            target = services[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep}, which has no healthcheck"
            else:
                assert condition == "service_completed_successfully"
                assert dep in ONE_SHOT, f"{name} waits for {dep} to exit, but it keeps running"
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        elif not service.get("profiles"):
            assert service.get("restart") == "unless-stopped", name
            assert "healthcheck" in service, f"{name} runs for good but has no healthcheck"


def test_compose_variables_are_in_env_example() -> None:
    used = {m["name"] for text in strings(raw_compose()) for m in VARIABLE.finditer(text)}
    documented = set(read_env_example())
    assert used - documented == set(), "used in docker-compose.yml, missing in .env.example"
    assert documented - used == set(), "in .env.example, unused by docker-compose.yml"
    # And the interpolation goes through: every $ of the inline scripts is escaped.
    compose()


def test_compose_holds_no_secret() -> None:
    example = read_env_example()
    secrets = {name for name, value in example.items() if not value}
    assert secrets == set(SECRET_READERS), "the secrets .env.example leaves empty"
    for m in (m for text in strings(raw_compose()) for m in VARIABLE.finditer(text)):
        if m["name"] in secrets:
            assert m["op"] == ":?", f"{m[0]}: a secret is required, never defaulted"
    # Secret-looking settings come from a variable, with nothing written around it but a URL.
    for name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and value.startswith("/run/secrets/"):
                # A file of the compose file's own secrets, mounted for this service alone.
                assert value.removeprefix("/run/secrets/") in service["secrets"], (name, key)
            elif SECRET_NAME.search(key) and key not in NOT_SECRET:
                refs = [m["name"] for m in VARIABLE.finditer(value)]
                assert any(ref in secrets for ref in refs), f"{name}: {key} is not from a secret"
                literal = VARIABLE.sub("", value)
                assert re.fullmatch(r"(postgresql://\w+:@[\w.-]+:\d+/\w+)?", literal), (
                    f"{name}: {key} has a literal part {literal!r}"
                )
    # Each secret reaches only the services that need it.
    for name, service in compose()["services"].items():
        seen = "\n".join(strings(service))
        for secret, readers in SECRET_READERS.items():
            if example_env()[secret] in seen:
                assert name in readers, f"{secret} reaches {name}"


# Who holds a Temporal credential (a client certificate of deploy/certs' CA): the services
# that talk to Temporal, each with a certificate of its own (kaohe/certs.py CLIENTS).
TEMPORAL_CLIENTS = {
    "temporal-namespace": "temporal-admin",
    "temporal-search-attributes": "temporal-admin",
    "temporal-ui": "temporal-ui",
    "kaohe-worker": "kaohe-worker",
    "kaohe-api": "kaohe-api",
    "kaohe": "kaohe-cli",
}
# How each image names the files: CA, certificate, key, server name.
TLS_SETTINGS = {
    "kaohe": (
        "KAOHE_TEMPORAL_TLS_CA_FILE",
        "KAOHE_TEMPORAL_TLS_CERT_FILE",
        "KAOHE_TEMPORAL_TLS_KEY_FILE",
        "KAOHE_TEMPORAL_TLS_SERVER_NAME",
    ),
    "temporal-cli": (
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
        "TEMPORAL_TLS_SERVER_NAME",
    ),
    "temporal-ui": (
        "TEMPORAL_TLS_CA",
        "TEMPORAL_TLS_CERT",
        "TEMPORAL_TLS_KEY",
        "TEMPORAL_TLS_SERVER_NAME",
    ),
}


def test_compose_temporal_takes_only_its_clients_certificates(tmp_path: Path) -> None:
    """Temporal requires a client certificate of the private CA; exactly the services that
    talk to it hold one, each its own, and the files `kaohe tls certs` writes are the ones
    the compose file mounts."""
    from kaohe.certs import CLIENTS, SERVER, SERVER_NAMES

    document = compose()
    services, secrets = document["services"], document["secrets"]
    server = environment(services["temporal"])
    assert server["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    mounted = {f"/run/secrets/{s}" for s in services["temporal"]["secrets"]}
    for key in (
        "TEMPORAL_TLS_SERVER_CA_CERT",
        "TEMPORAL_TLS_CLIENT1_CA_CERT",
        "TEMPORAL_TLS_SERVER_CERT",
        "TEMPORAL_TLS_SERVER_KEY",
        "TEMPORAL_TLS_FRONTEND_CERT",
        "TEMPORAL_TLS_FRONTEND_KEY",
    ):
        assert server[key] in mounted, key
    assert secrets["temporal-server-key"]["file"] == f"./certs/{SERVER}.key"
    assert server["TEMPORAL_TLS_FRONTEND_SERVER_NAME"] in SERVER_NAMES

    holders = {}
    for name, service in services.items():
        held = {s for s in service.get("secrets", []) if s.endswith("-key")}
        if name == "temporal":
            assert held == {"temporal-server-key"}
            continue
        if not held:
            assert name not in TEMPORAL_CLIENTS, f"{name} talks to Temporal without a certificate"
            assert not {"TEMPORAL_ADDRESS", "KAOHE_TEMPORAL_ADDRESS"} & set(environment(service))
            continue
        assert len(held) == 1, name
        (key,) = held
        holders[name] = key.removesuffix("-key")
        env = environment(service)
        image = (
            "kaohe"
            if "KAOHE_TEMPORAL_ADDRESS" in env
            else ("temporal-ui" if name == "temporal-ui" else "temporal-cli")
        )
        ca, cert, key_file, server_name = TLS_SETTINGS[image]
        assert env[ca] == "/run/secrets/temporal-ca", name
        assert env[cert] == f"/run/secrets/{holders[name]}-cert", name
        assert env[key_file] == f"/run/secrets/{holders[name]}-key", name
        assert env[server_name] == server["TEMPORAL_TLS_FRONTEND_SERVER_NAME"], name
    assert holders == TEMPORAL_CLIENTS
    assert set(holders.values()) == set(CLIENTS), "a certificate nobody uses, or one missing"
    # No service ever mounts the CA's key; every secret is a file `kaohe tls certs` writes.
    assert all(not s["file"].endswith("ca.key") for s in secrets.values())
    written = tmp_path / "certs"
    result = CliRunner().invoke(cli_app, ["tls", "certs", str(written)])
    assert result.exit_code == 0, result.output
    for secret in secrets.values():
        assert (written / Path(secret["file"]).name).is_file(), secret["file"]
    assert oct(written.stat().st_mode & 0o777) == "0o700"
    assert oct((written / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_compose_ui_decodes_through_kaohes_api_as_the_user() -> None:
    """No master key in the browser (issue 20 item 7): the UI's codec endpoint is kaohe's API,
    holds no secret, and the UI sends it the logged-in user's own access token."""
    env = example_env()
    services = compose()["services"]
    assert "kaohe-codec-server" not in services
    ui, api = services["temporal-ui"], services["kaohe-api"]
    ui_env, api_env = environment(ui), environment(api)

    endpoint = urlsplit(ui_env["TEMPORAL_CODEC_ENDPOINT"])
    assert ui_env["TEMPORAL_CODEC_ENDPOINT"] == f"{env['KAOHE_API_PUBLIC_URL']}/v1/codec"
    # The UI passes its access token to an https endpoint only.
    assert endpoint.scheme == "https" and endpoint.path == "/v1/codec"
    assert ui_env["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "true"
    assert ui_env.get("TEMPORAL_CODEC_INCLUDE_CREDENTIALS", "false") == "false"
    secrets = {name for name, value in read_env_example().items() if not value}
    raw = environment(raw_compose()["services"]["temporal-ui"])["TEMPORAL_CODEC_ENDPOINT"]
    assert not {m["name"] for m in VARIABLE.finditer(raw)} & secrets
    assert VARIABLE.sub("", raw) == "/v1/codec"
    assert published(api)[8236][1] == endpoint.port or endpoint.port is None

    # The token the UI passes is the site's OIDC token, which kaohe's API checks; CORS of
    # /v1/codec allows the UI's origin, which is where the UI is published.
    assert ui_env["TEMPORAL_AUTH_ENABLED"] == "true"
    assert ui_env["TEMPORAL_AUTH_PROVIDER_URL"] == api_env["KAOHE_OIDC_ISSUER"]
    ui_url = env["KAOHE_UI_URL"]
    assert ui_url in json.loads(api_env["KAOHE_CODEC_CORS_ORIGINS"])
    assert ui_url in ui_env["TEMPORAL_CORS_ORIGINS"].split(",")
    assert published(ui)[8080][1] == urlsplit(ui_url).port
    assert ui_env["TEMPORAL_DEFAULT_NAMESPACE"] == env["KAOHE_TEMPORAL_NAMESPACE"]


def test_compose_addresses_name_real_services() -> None:
    services = compose()["services"]
    server_ports = {target for target in published(services["temporal"])}
    for name, service in services.items():
        env = environment(service)
        for key in ("KAOHE_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"):
            if key in env:
                host, port = env[key].rsplit(":", 1)
                assert host in services and int(port) in server_ports, f"{name}: {key}"
        for key in ("KAOHE_DATABASE_URL", "KAOHE_MIGRATION_DATABASE_URL"):
            if key not in env:
                continue
            url = urlsplit(env[key])
            db_env = environment(services[url.hostname or ""])
            assert url.path == f"/{db_env['POSTGRES_DB']}", name
            if key == "KAOHE_MIGRATION_DATABASE_URL":
                # The owner (the image's superuser), for the migrations alone.
                assert name == "kaohe-migrate", name
                assert url.username == db_env["POSTGRES_USER"], name
                assert url.password == db_env["POSTGRES_PASSWORD"], name
            else:
                # Everyone else, the migrate job's provisioning included: the app's role.
                assert url.username == "kaohe_app_user", name
                assert url.password != db_env["POSTGRES_PASSWORD"], name
    for name in ("temporal", "temporal-schema"):
        env = environment(services[name])
        assert env.get("POSTGRES_SEEDS", env.get("SQL_HOST")) == "temporal-postgresql"


# The keys each long-running process loads as it starts, and refuses to start without:
# kaohe/api/server.py serve_api (payload codec, assertions, talks) and worker.py run_worker
# (payload codec, assertions, the audit anchors). A key a process lacks here is an outage at
# its first start, not a test failure later.
KEYS_AT_START = {
    "kaohe-api": {"KAOHE_PAYLOAD_KEYS", "KAOHE_ASSERTION_KEYS", "KAOHE_TALK_KEYS"},
    "kaohe-worker": {"KAOHE_PAYLOAD_KEYS", "KAOHE_ASSERTION_KEYS", "KAOHE_AUDIT_ANCHOR_KEYS"},
}


def test_each_process_is_given_the_keys_it_starts_with() -> None:
    services = compose()["services"]
    for name, keys in KEYS_AT_START.items():
        given = set(environment(services[name]))
        assert keys <= given, (name, keys - given)
    seen = set()
    for doc in k8s_documents():
        name = doc["metadata"]["name"]
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                if name in KEYS_AT_START:
                    given = {var["name"] for var in container.get("env", [])}
                    assert KEYS_AT_START[name] <= given, (name, KEYS_AT_START[name] - given)
                    seen.add(name)
    assert seen == set(KEYS_AT_START)


def test_only_the_migrations_connect_as_the_tables_owner() -> None:
    """The worker, the API and the CLI connect as the app's role (a member of kaohe_app, which
    may only append to the audit table: schemas/sql/015); the owner's URL reaches the migrate
    job alone, in compose and on Kubernetes. The worker's signed audit anchors live on a
    volume, which the CLI mounts to verify against."""
    services = compose()["services"]
    owners = {n for n, s in services.items() if "KAOHE_MIGRATION_DATABASE_URL" in environment(s)}
    assert owners == {"kaohe-migrate"}
    for name in ("kaohe-worker", "kaohe-api", "kaohe", "kaohe-migrate"):
        url = urlsplit(environment(services[name])["KAOHE_DATABASE_URL"])
        assert url.username == "kaohe_app_user", name
    for name in ("kaohe-worker", "kaohe"):
        anchors = environment(services[name])["KAOHE_AUDIT_ANCHOR_FILE"]
        mounts = [str(v).split(":")[1] for v in services[name]["volumes"]]
        assert any(anchors.startswith(m + "/") for m in mounts), name
    with_owner = set()
    for doc in k8s_documents():
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                names = {var["name"] for var in container.get("env", [])}
                if "KAOHE_MIGRATION_DATABASE_URL" in names:
                    with_owner.add(doc["metadata"]["name"])
                if doc["metadata"]["name"] in ("kaohe-worker", "kaohe-api"):
                    assert "KAOHE_DATABASE_URL" in names, doc["metadata"]["name"]
    assert with_owner == {"kaohe-migrate"}
    data = secret_example()["stringData"]
    assert urlsplit(data["KAOHE_DATABASE_URL"]).username == "kaohe_app_user"
    assert urlsplit(data["KAOHE_MIGRATION_DATABASE_URL"]).username != "kaohe_app_user"


def test_compose_kaohe_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the compose file gives each kaohe process is settings kaohe knows and accepts
    (kaohe ignores unknown KAOHE_* variables, so a typo would pass silently)."""
    fields = {f"KAOHE_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        if not uses_kaohe_image(service):
            continue
        env = {k: v for k, v in environment(service).items() if k.startswith("KAOHE_")}
        assert set(env) <= fields, f"{name}: unknown settings {set(env) - fields}"
        settings = settings_from(monkeypatch, env)
        if "KAOHE_DATABASE_URL" in env:
            assert settings.database_url is not None


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("KAOHE_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]


def test_compose_build_and_scripts_exist() -> None:
    services = raw_compose()["services"]
    built = [s for s in services.values() if uses_kaohe_image(s)]
    assert built
    for service in built:
        context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    copied = {dest for _, dest in dockerfile_copies()}
    for script in re.findall(r"/opt/kaohe/\S+\.sh", COMPOSE_FILE.read_text()):
        assert script in copied, f"{script} is not in the image"


# ---- the image ---------------------------------------------------------------------------


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerfile_copies() -> list[tuple[str, str]]:
    """(source, destination) of each COPY from the build context."""
    copies = []
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from=" not in rest:
            *sources, dest = shlex.split(rest)
            copies += [
                (source, dest if len(sources) == 1 else dest.rstrip("/")) for source in sources
            ]
    return copies


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    last = {word: rest for word, rest in instructions}
    assert json.loads(last["ENTRYPOINT"]) == ["kaohe"]
    assert json.loads(last["CMD"]) == ["worker"]
    assert "python:3.11-slim" in next(rest for word, rest in instructions if word == "ARG")
    user = last["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert "healthz" in last["HEALTHCHECK"] and "KAOHE_METRICS_PORT" in last["HEALTHCHECK"]
    exposed = {int(p) for p in last["EXPOSE"].split()}
    assert {
        Settings.model_fields["metrics_port"].default,
        Settings.model_fields["api_port"].default,
    } <= exposed
    assert last["STOPSIGNAL"] == "SIGINT"
    # The pod manifests run as the image's user.
    for doc in k8s_documents():
        for pod in pod_specs(doc):
            assert str(pod["securityContext"]["runAsUser"]) == user


def test_dockerfile_copies_what_the_package_needs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".kaohe", ".env", ".git"} <= ignored
    sources = {source for source, _ in dockerfile_copies()}
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"
    # pip install . needs every package and module pyproject names, and the readme.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools_conf = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {f"{module}.py" for module in setuptools_conf.get("py-modules", [])}
    # Packages are found by setuptools: each include pattern ("kaohe*") names a top-level dir.
    found = setuptools_conf["packages"]["find"]["include"]
    needed |= {pattern.rstrip("*").split(".")[0] for pattern in found}
    assert needed <= sources


# ---- the kaohe commands the deployments run ----------------------------------------------


def kaohe_invocations() -> list[list[str]]:
    calls = []
    for service in raw_compose()["services"].values():
        if uses_kaohe_image(service) and "entrypoint" not in service:
            calls.append(list(service["command"]))
    for doc in k8s_documents():
        for pod in pod_specs(doc):
            calls += [list(c["args"]) for c in pod["containers"]]
    calls.append(json.loads(dict(dockerfile_instructions())["CMD"]))
    return calls


def test_deployed_commands_exist_in_the_cli() -> None:
    calls = {tuple(call) for call in kaohe_invocations()}
    commands = {call[0] for call in calls if not call[0].startswith("-")}
    assert {"worker", "api", "migrate"} <= commands
    assert "codec-server" not in commands  # gone: the UI decodes through kaohe's API
    # The console script the image's ENTRYPOINT runs lists them ...
    done = subprocess.run([KAOHE, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"^\W*([a-z][a-z-]+)\s", done.stdout, re.MULTILINE))
    assert commands <= listed, f"not in `kaohe --help`: {commands - listed}"
    # ... and each takes the options given to it.
    group = typer.main.get_command(cli_app)
    assert isinstance(group, typer.core.TyperGroup)
    for call in calls:
        if call[0] in commands:
            command = group.commands[call[0]]
            options = {opt for param in command.params for opt in param.opts}
            for flag in (arg for arg in call[1:] if arg.startswith("-")):
                assert flag in options, f"kaohe {call[0]} has no {flag}"


# ---- Kubernetes --------------------------------------------------------------------------


@cache
def k8s_documents() -> tuple[dict[str, Any], ...]:
    """What `kubectl apply -f deploy/k8s` applies: every .yaml, .yml and .json file there."""
    docs = []
    for path in sorted(K8S.iterdir()):
        if path.suffix in (".yaml", ".yml", ".json"):
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(docs)


def secret_example() -> dict[str, Any]:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    return []


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def test_k8s_manifests_validate() -> None:
    version = kubernetes_validate.latest_version()
    for doc in (*k8s_documents(), secret_example()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {err.path}")
    kinds = {doc["kind"] for doc in k8s_documents()}
    assert {"ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "the Secret is the operator's: ship it only as an example"
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in k8s_documents()]
    assert len(names) == len(set(names))
    for doc in k8s_documents():
        # No namespace written in: `kubectl apply -n NS -f deploy/k8s` picks it.
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]


def test_k8s_references_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    config_maps = {doc["metadata"]["name"]: doc for doc in of_kind("ConfigMap")}
    example = secret_example()
    assert example["metadata"]["name"] == "kaohe-secrets"
    example_text = SECRET_EXAMPLE.read_text()
    readme = (DEPLOY / "README.md").read_text()
    for name in EXTERNAL_SECRETS:
        assert name in readme, f"deploy/README.md does not tell the operator to create {name}"
    fields = {f"KAOHE_{name.upper()}" for name in Settings.model_fields}
    images = set()
    for doc in k8s_documents():
        for pod in pod_specs(doc):
            mounts_needed = {v["name"]: v for v in pod.get("volumes", [])}
            for volume in mounts_needed.values():
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in EXTERNAL_SECRETS
                    # A missing certificate stops the pod at once, not at its first call.
                    assert not volume["secret"].get("optional"), volume["name"]
            for container in pod["containers"]:
                images.add(container["image"])
                where = f"{doc['metadata']['name']}/{container['name']}"
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        assert source["configMapRef"]["name"] in config_maps, where
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in EXTERNAL_SECRETS, where
                for var in container.get("env", []):
                    assert var["name"] in fields, f"{where}: kaohe has no {var['name']}"
                    assert "value" not in var or not SECRET_NAME.search(var["name"]), (
                        f"{where}: {var['name']} written in the manifest"
                    )
                    ref = var.get("valueFrom", {})
                    if "configMapKeyRef" in ref:
                        cm = config_maps[ref["configMapKeyRef"]["name"]]
                        assert ref["configMapKeyRef"]["key"] in cm["data"], where
                    if "secretKeyRef" in ref:
                        key_ref = ref["secretKeyRef"]
                        assert key_ref["name"] == "kaohe-secrets", where
                        if key_ref.get("optional"):
                            assert key_ref["key"] in example_text, where
                        else:
                            assert key_ref["key"] in example["stringData"], where
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in mounts_needed, where
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert pod["securityContext"]["runAsNonRoot"] is True, where
                # /tmp is the one writable place (matplotlib's cache, tempfile).
                assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), where
                assert {"requests", "limits"} <= set(container["resources"]), where
                ports = {p.get("name") for p in container.get("ports", [])}
                ports |= {p["containerPort"] for p in container.get("ports", [])}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if probe in container:
                        handler = container[probe].get("httpGet") or container[probe]["tcpSocket"]
                        assert handler["port"] in ports, f"{where}: {probe} on a closed port"
    assert len(images) == 1, "one image for every kaohe pod"
    for cm in config_maps.values():
        for key in cm["data"]:
            assert not SECRET_NAME.search(key), f"{key} belongs in the Secret"
    # The ConfigMap plus the Secret's keys make settings kaohe knows and accepts.
    data = config_maps["kaohe-config"]["data"]
    assert set(data) | set(example["stringData"]) <= fields
    settings = settings_from(monkeypatch, {**data, **example["stringData"]})
    assert settings.codec_cors_origins, "KAOHE_CODEC_CORS_ORIGINS is a JSON list"


def test_k8s_pods_that_talk_to_temporal_hold_their_own_certificate() -> None:
    config = of_kind("ConfigMap")[0]["data"]
    folder = Path(config["KAOHE_TEMPORAL_TLS_CERT_FILE"]).parent
    assert {Path(config[f"KAOHE_TEMPORAL_TLS_{k}_FILE"]).name for k in ("CA", "CERT", "KEY")} == {
        "ca.crt",
        "tls.crt",
        "tls.key",
    }
    assert all(Path(config[f"KAOHE_TEMPORAL_TLS_{k}_FILE"]).parent == folder for k in ("CA", "KEY"))
    assert (
        config["KAOHE_TEMPORAL_TLS_SERVER_NAME"]
        == config["KAOHE_TEMPORAL_ADDRESS"].rsplit(":", 1)[0]
    )
    held = {}
    for doc in of_kind("Deployment") + of_kind("Job"):
        (pod,) = pod_specs(doc)
        secrets = {
            v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v
        }
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        if str(folder) in mounts:
            held[doc["metadata"]["name"]] = secrets[mounts[str(folder)]]
    # The worker and the API, each with its own; the migrations need none.
    assert held == {
        "kaohe-worker": "kaohe-worker-temporal-tls",
        "kaohe-api": "kaohe-api-temporal-tls",
    }


def test_temporal_helm_values_require_client_certificates() -> None:
    """deploy/temporal-helm-values.yaml: mTLS on both of the server's listeners, with files
    from the volume it mounts, and the UI and admin-tools holding certificates of their own."""
    values = yaml.safe_load((DEPLOY / "temporal-helm-values.yaml").read_text())
    server = values["server"]
    (mount,) = server["additionalVolumeMounts"]
    (volume,) = server["additionalVolumes"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    folder = mount["mountPath"]
    for group in ("internode", "frontend"):
        tls = server["config"]["tls"][group]
        assert tls["server"]["requireClientAuth"] is True, group
        files = [tls["server"]["certFile"], tls["server"]["keyFile"]]
        files += tls["server"]["clientCaFiles"] + tls["client"]["rootCaFiles"]
        assert all(f.startswith(folder + "/") for f in files), group
    assert server["internalFrontend"]["enabled"] is False  # it would skip authorization
    secrets = {volume["secret"]["secretName"]}
    for part in ("web", "admintools"):
        env = {e["name"]: e["value"] for e in values[part]["additionalEnv"]}
        (part_volume,) = values[part]["additionalVolumes"]
        secrets.add(part_volume["secret"]["secretName"])
        names = TLS_SETTINGS["temporal-ui" if part == "web" else "temporal-cli"]
        assert all(env[name].startswith(folder + "/") for name in names[:3]), part
    assert len(secrets) == 3, "the server, the UI and admin-tools each have their own"
    web = {e["name"]: e["value"] for e in values["web"]["additionalEnv"]}
    assert (
        web["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true" and web["TEMPORAL_AUTH_ENABLED"] == "true"
    )
    # The UI decodes through kaohe's API with the user's access token (https only).
    endpoint = urlsplit(web["TEMPORAL_CODEC_ENDPOINT"])
    assert endpoint.scheme == "https" and endpoint.path == "/v1/codec"
    assert web["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "true"


def test_k8s_services_select_their_pods() -> None:
    deployments = of_kind("Deployment")
    config = of_kind("ConfigMap")[0]["data"]
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {matched}"
        containers = matched[0]["spec"]["template"]["spec"]["containers"]
        ports = {p.get("name"): p["containerPort"] for c in containers for p in c["ports"]}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), service["metadata"]["name"]
    for deployment in deployments:
        spec = deployment["spec"]
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
    for pdb in of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [d for d in deployments if d["spec"]["selector"]["matchLabels"] == selector]
        assert len(matched) == 1, pdb["metadata"]["name"]
        assert pdb["spec"]["minAvailable"] < matched[0]["spec"]["replicas"]

    # Ports agree with the settings: metrics (and the scrape annotations), the API.
    worker = next(d for d in deployments if d["metadata"]["name"] == "kaohe-worker")
    template = worker["spec"]["template"]
    (metrics,) = [p for p in template["spec"]["containers"][0]["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == int(config["KAOHE_METRICS_PORT"])
    assert template["metadata"]["annotations"]["prometheus.io/port"] == config["KAOHE_METRICS_PORT"]
    assert config["KAOHE_METRICS_HOST"] == "0.0.0.0"
    api = next(d for d in deployments if d["metadata"]["name"] == "kaohe-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["KAOHE_API_PORT"]) == container["ports"][0]["containerPort"]
    assert env["KAOHE_API_HOST"] == "0.0.0.0"
    assert "kaohe-codec-server" not in {d["metadata"]["name"] for d in deployments}


# The discovery documents kubectl reads for the kinds the manifests use (plain v1 discovery,
# which every kubectl understands; newer ones fall back to it from aggregated discovery).
API_RESOURCES: dict[str, list[tuple[str, str]]] = {
    "v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ],
    "apps/v1": [("deployments", "Deployment")],
    "batch/v1": [("jobs", "Job")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
}


def discovery_document(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for group_version in API_RESOURCES:
            if "/" in group_version:
                group, version = group_version.split("/")
                entry = {"groupVersion": group_version, "version": version}
                groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path == "/version":
        return {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
    group_version = path.removeprefix("/api/").removeprefix("/apis/")
    if group_version in API_RESOURCES:
        resources = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for plural, kind in API_RESOURCES[group_version]
        ]
        return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
    return None


class DiscoveryOnly(BaseHTTPRequestHandler):
    """Discovery documents; any object is not found (so apply would create it)."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        body = discovery_document(path)
        status = 200
        if body is None:
            status = 404
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"{path} not found",
                "reason": "NotFound",
                "code": 404,
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def discovery_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), DiscoveryOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def without_kubeconfig() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def test_kubectl_apply_dry_run(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (make system-deps installs kubernetes-client)"
    used = {(doc["apiVersion"], doc["kind"]) for doc in k8s_documents()}
    served = {(gv, kind) for gv, resources in API_RESOURCES.items() for _, kind in resources}
    assert used <= served, f"serve discovery for {used - served}"
    with discovery_server() as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
                    "users": [{"name": "nobody", "user": {}}],
                    "contexts": [
                        {
                            "name": "stand-in",
                            "context": {
                                "cluster": "stand-in",
                                "user": "nobody",
                                "namespace": "kaohe",
                            },
                        }
                    ],
                    "current-context": "stand-in",
                }
            )
        )
        # --validate=false: the stand-in serves no OpenAPI; the schemas are checked by
        # kubernetes_validate in test_k8s_manifests_validate.
        done = subprocess.run(
            [
                kubectl,
                "--kubeconfig",
                str(kubeconfig),
                "--cache-dir",
                str(tmp_path / "cache"),
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-f",
                str(K8S),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**without_kubeconfig(), "HOME": str(tmp_path)},
        )
    assert done.returncode == 0, f"kubectl: {done.stderr}{done.stdout}"
    lines = set(done.stdout.splitlines())
    for doc in k8s_documents():
        group = doc["apiVersion"].rpartition("/")[0]
        resource = doc["kind"].lower() + (f".{group}" if group else "")
        expected = f"{resource}/{doc['metadata']['name']} created (dry run)"
        assert expected in lines, f"{expected!r} not in kubectl's output:\n{done.stdout}"
    assert len(lines) == len(k8s_documents()), done.stdout
