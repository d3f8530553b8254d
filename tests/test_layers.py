"""The import rules of docs/architecture.md, read from the source (ast): a change that breaks a
layer fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

# What each layer may import from the project's own packages (third-party aside).
ALLOWED: dict[str, set[str]] = {
    "schemas": {"schemas"},
    "domain": {"domain", "schemas"},
    "activities": {"activities", "domain", "schemas"},
    "workflows": {"workflows", "activities", "domain", "schemas"},
}
OWN = {"schemas", "domain", "activities", "workflows", "kaohe", "worker", "bench", "tests"}
# Third-party packages a layer must not import.
FORBIDDEN: dict[str, set[str]] = {
    "domain": {"temporalio", "asyncpg", "aiohttp", "httpx", "aiosmtplib", "structlog"},
    "schemas": {"asyncpg", "aiohttp", "httpx", "aiosmtplib"},
}


def imported(path: Path) -> set[str]:
    """Top-level package names a module imports, wherever in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted((imported(path) & OWN) - ALLOWED[layer])
        for path in modules(layer)
    }
    assert {k: v for k, v in wrong.items() if v} == {}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_the_pure_layers_do_no_io(layer: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported(path) & FORBIDDEN[layer])
        for path in modules(layer)
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_only_the_cli_imports_the_worker_and_the_worker_never_the_cli() -> None:
    assert "kaohe" in imported(ROOT / "worker.py")  # settings, client, metrics
    for path in modules("kaohe"):
        if "worker" in imported(path):
            assert path.is_relative_to(ROOT / "kaohe" / "cli"), path
    tree = ast.parse((ROOT / "worker.py").read_text())
    from_kaohe = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kaohe")
    }
    assert not {m for m in from_kaohe if m == "kaohe.cli" or m.startswith("kaohe.cli.")}


def test_the_unit_workflow_has_no_file_over_about_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in modules("workflows")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}
