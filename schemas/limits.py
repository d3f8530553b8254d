"""Input limits every door applies (kaohe's API, the workflows' handlers, the imports): the
size and nesting of a JSON payload, checked on its bytes before anything parses or recurses
into it, and the text every string may hold (no NUL, no unpaired surrogate, at most
MAX_TEXT_CHARS characters), which every model checks on every str through schemas.common.Model.

PostgreSQL refuses NUL in text and jsonb, and UTF-8 cannot encode a lone surrogate: such a
string would only fail later, in a storage activity.
"""

from __future__ import annotations

import re
from typing import Any

MAX_PAYLOAD_BYTES = 2_000_000  # Temporal's own limit for one payload
MAX_JSON_DEPTH = 32  # the deepest message (a batch's sheets' items) nests 5 levels
MAX_TEXT_CHARS = 100_000  # the longest text of any field (schemas.common.LongText)

_KEPT = b'[]{}"'
_DROPPED = bytes(b for b in range(256) if b not in _KEPT)
_STRING = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """What is wrong with a string any field holds, or None."""
    if "\x00" in text:
        return "contains a NUL character (U+0000), which no text may hold"
    if _SURROGATE.search(text):
        return "contains an unpaired surrogate (U+D800-U+DFFF), which no text may hold"
    if len(text) > MAX_TEXT_CHARS:
        return f"longer than {MAX_TEXT_CHARS} characters (the limit of any text)"
    return None


def shown(text: str, limit: int = 64) -> str:
    """A string caller-sent, safe to put in a message, a status or an audit row: control
    characters and surrogates escaped, at most `limit` characters."""
    out = _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 1] + "…"


def json_shape_problem(data: bytes) -> str | None:
    """Too large or too deeply nested, judged on the bytes (no parser, no recursion); None if
    within the limits. Malformed JSON is left to the parser to name."""
    if len(data) > MAX_PAYLOAD_BYTES:
        return f"(payload): {len(data)} bytes, over the limit of {MAX_PAYLOAD_BYTES} bytes"
    # Escaped backslashes, then escaped quotes, left to right as JSON reads them: what is
    # left of the strings is their quotes, and their contents go with the other bytes.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", unescaped.translate(None, _DROPPED))
    # Each pass takes away the innermost pairs: as many passes as the nesting is deep.
    levels = 0
    while brackets and levels <= MAX_JSON_DEPTH:
        brackets, removed = _INNERMOST.subn(b"", brackets)
        if not removed:
            break  # what is left does not pair up: not JSON, which the parser names
        levels += 1
    # An unclosed bracket nests a parser one level deeper all the same.
    if levels + brackets.count(b"[") + brackets.count(b"{") > MAX_JSON_DEPTH:
        return f"(payload): JSON nested deeper than the limit of {MAX_JSON_DEPTH} levels"
    return None


# What in JSON bytes could become a string no field may hold: a NUL or surrogate escape, the
# UTF-8 bytes of a surrogate (json.loads decodes bytes with surrogatepass), or a NUL byte,
# which every UTF-16 or UTF-32 text has (json.loads takes those too).
_MAY_BE_BAD = re.compile(rb"\x00|\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]")


def first_bad_text(value: Any, raw: bytes | None = None) -> tuple[str, str] | None:
    """The path and problem of the first string (or object key) in parsed JSON that no field
    may hold, or None. Iterative: safe on any depth. `raw`, the bytes `value` was parsed
    from, spares the walk when nothing in them could make such a string."""
    if raw is not None and len(raw) <= MAX_TEXT_CHARS and not _MAY_BE_BAD.search(raw):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            problem = text_problem(v)
            if problem is not None:
                return path or "(body)", problem
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                key = str(k)
                here = f"{path}.{shown(key)}" if path else shown(key)
                problem = text_problem(key)
                if problem is not None:
                    return here, f"key {problem}"
                stack.append((here, item))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(v))))
    return None
