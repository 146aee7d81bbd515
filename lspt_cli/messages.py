"""Text that reaches a person: one line, bounded lists, no terminal control characters.

Error messages and printed values often carry text lspt did not write (torch's multi-line errors,
class names from a bundle, 200k tensor names). Three helpers keep that text safe and readable:
`printable` (control characters shown as escapes), `one_line` (newlines folded, length capped) and
`shorten_list` ("a, b, c ... and 199,990 more"); and JSON documents for scripts (`json_text`: strict
JSON, NaN as null). Torch-free and cheap: imported by `lspt --help`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable

MAX_MESSAGE_CHARS = 1000  # an Error line longer than this is cut (a 2 MB line helps nobody)
MAX_LIST_ITEMS = 10

# C0/C1 control characters (ESC, CR, BEL, ...) and the bidirectional overrides that reorder text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, newlines: bool = False) -> str:
    """`text` with every control character replaced by a visible escape ("\\x1b[2J" stays inert);
    with `newlines`, line breaks are kept (multi-line output of lspt's own)."""
    if newlines:
        return "\n".join(_CONTROL.sub(_escape, line) for line in str(text).split("\n"))
    return _CONTROL.sub(_escape, str(text))


def one_line(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Fold a (multi-line) message into one printable line of at most `limit` characters."""
    lines = [line.strip() for line in str(text).splitlines()]
    folded = printable(" ".join(line for line in lines if line))
    if len(folded) > limit:
        folded = f"{folded[:limit]}... ({len(folded) - limit:,} more characters)"
    return folded


def shorten_list(items: Iterable[object], limit: int = MAX_LIST_ITEMS, quote: bool = False) -> str:
    """"a, b, c" for short lists; "a, b, ... and 199,990 more" for long ones (items are printable'd)."""
    items = list(items)
    shown = [f"'{printable(i)}'" if quote else printable(i) for i in items[:limit]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" ... and {rest:,} more" if rest > 0 else "")


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±Infinity) replaced by None, the documented mapping
    that keeps `--json` output strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): NaN/±Infinity -> null, unknown types -> str."""
    return json.dumps(strict(obj), indent=indent, default=str, allow_nan=False)


# -- errors that crossed a process boundary (DataLoader workers, Ray workers, submitit jobs) --------
_TRACEBACK_HEAD = "Traceback (most recent call last):"


def debug_enabled() -> bool:
    """LSPT_DEBUG=1: full tracebacks instead of one-line errors."""
    import os

    return os.environ.get("LSPT_DEBUG", "") not in ("", "0")


def last_exception(text: str) -> tuple[str, str] | None:
    """(type name, message) of the last exception in a Python traceback text (as another process
    formatted it: torch's "Original Traceback", Ray's task error, submitit's job trace), or None when
    the text holds no traceback. The type name loses its module ("lspt_cli.errors.DataError" -> "DataError")."""
    lines = str(text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith(_TRACEBACK_HEAD)]
    if not starts:
        return None
    rest = lines[starts[-1] + 1:]
    i = 0
    while i < len(rest) and (not rest[i].strip() or rest[i][:1].isspace()):  # frames, code, ^^^ markers
        i += 1
    tail = []
    for line in rest[i:]:
        if tail and (set(line.strip()) == {"-"} or line.startswith("You can check full logs")):  # submitit's frame
            break
        tail.append(line)
    if not tail:
        return None
    head, sep, message = tail[0].partition(": ")
    if " " in head.strip() or not head.strip():  # not "Type: message"
        return None
    message = "\n".join([message] + tail[1:]).strip() if sep else "\n".join(tail[1:]).strip()
    return head.strip().rsplit(".", 1)[-1], message


def process_error_line(text: str) -> str:
    """What a failed process's output comes down to, on one line: its last `Error:` line (lspt's own
    report, with its `Hint:`), else the last exception of a traceback as "Type: message", else its last
    non-empty line. With LSPT_DEBUG=1 the text is returned whole."""
    text = str(text)
    if debug_enabled():
        return text.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    if errors:
        i = errors[-1]
        hint = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("Hint:") else ""
        return one_line(lines[i][len("Error:"):].strip() + (f" ({hint[len('Hint:'):].strip()})" if hint else ""))
    found = last_exception(text)
    if found is not None:
        kind, message = found
        return one_line(f"{kind}: {message}" if message else kind)
    return one_line(lines[-1]) if lines else ""
