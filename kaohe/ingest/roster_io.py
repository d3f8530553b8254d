"""Reading a roster file and reporting every problem in it with its path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from kaohe.ingest.roster_tables import (
    TABLE_SUFFIXES,
    Progress,
    RosterTableError,
    load_roster_tables,
)
from schemas.common import Model, Stage
from schemas.errors import error_lines
from schemas.policy import Policy
from schemas.roster import Roster

M = TypeVar("M", bound=Model)


class RosterError(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = problems


def _load(path: Path, model: type[M]) -> M:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RosterError(str(path), [str(err)]) from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RosterError(str(path), error_lines(err)) from err


def is_table_roster(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in TABLE_SUFFIXES


def load_roster(path: Path, on_rows: Progress | None = None) -> Roster:
    """Parses and validates a roster: YAML, an XLSX workbook or a folder of CSV sheets
    (kaohe/ingest/roster_tables.py); raises RosterError listing every problem with its place."""
    if is_table_roster(path):
        try:
            return load_roster_tables(path, on_rows)
        except RosterTableError as err:
            raise RosterError(err.source, [str(p) for p in err.problems]) from err
    return _load(path, Roster)


def load_policy(path: Path | None, year: int) -> Policy:
    """The given policy file, else the one kaohe ships for `year`, else the defaults."""
    if path is None:
        shipped = resources.files("kaohe") / "policies" / f"{year}.yaml"
        if not shipped.is_file():
            return Policy(year=year)
        path = Path(str(shipped))
    policy = _load(path, Policy)
    if policy.year is not None and policy.year != year:
        raise RosterError(
            str(path), [f"year: the policy is for {policy.year}, the roster for {year}"]
        )
    return policy


def with_deadlines(policy: Policy, overrides: list[str]) -> Policy:
    """The policy with the campaign's own stage deadlines: `STAGE=DAYS` (working days) or
    `STAGE=none`, each replacing that stage's only; the other stages keep the policy's."""
    days = dict(policy.deadlines.working_days)
    problems = []
    stages = {s.value: s for s in Stage if s not in (Stage.COMPLETED, Stage.CANCELLED)}
    for item in overrides:
        name, _, value = item.partition("=")
        stage = stages.get(name.strip())
        value = value.strip()
        if stage is None:
            problems.append(
                f"--deadline {item}: unknown stage {name!r}; one of {', '.join(stages)}"
            )
        elif value.lower() == "none":
            days.pop(stage, None)
        elif value.isdigit() and 1 <= int(value) <= 366:
            days[stage] = int(value)
        else:
            problems.append(f"--deadline {item}: give working days (1-366) or none")
    if problems:
        raise RosterError("--deadline", problems)
    deadlines = policy.deadlines.model_copy(update={"working_days": days})
    return policy.model_copy(update={"deadlines": deadlines})
