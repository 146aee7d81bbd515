"""Reading `--executor-opt` values (strings) as numbers, with one usage error naming the option."""

from __future__ import annotations

from lspt_cli import UsageError


def number(options: dict[str, str], key: str, default, kind=int, minimum: float = 0):
    """`options[key]` as `kind` (int or float) >= minimum, else `default` when absent."""
    if key not in options:
        return default
    try:
        value = kind(options[key])
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"--executor-opt {key}={options[key]} must be {what} >= {minimum:g}")
    return value
