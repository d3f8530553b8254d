"""Validation errors as one line per problem, each naming the field by its path."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.limits import shown


def error_path(loc: tuple[int | str, ...]) -> str:
    """('units', 3, 'cadres', 0, 'name') -> 'units[3].cadres[0].name'. A dict key in the
    path is the caller's text: shown escaped and short."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = shown(str(part))
            out += f".{name}" if out else name
    return out or "(payload)"


def error_lines(err: ValidationError) -> list[str]:
    # msg only, never input values: an oversize talk must not echo its content.
    return [f"{error_path(e['loc'])}: {e['msg']}" for e in err.errors(include_input=False)]


def format_validation_error(err: ValidationError) -> str:
    return "; ".join(error_lines(err))
