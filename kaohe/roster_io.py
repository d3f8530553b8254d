"""Reading a roster file and reporting every problem in it with its path."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.errors import error_lines
from schemas.roster import Roster


class RosterError(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = problems


def load_roster(path: Path) -> Roster:
    """Parses and validates a YAML roster; raises RosterError listing every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RosterError(str(path), [str(err)]) from err
    try:
        return Roster.model_validate(data)
    except ValidationError as err:
        raise RosterError(str(path), error_lines(err)) from err
