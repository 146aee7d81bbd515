"""Reading `--executor-opt` values (strings) as numbers, with one usage error naming the option, and
the bounded wait of every connection to an engine (`connect_timeout`)."""

from __future__ import annotations

import math
import os

from lspt_cli import UsageError

CONNECT_TIMEOUT_S = 30.0  # default wait for an engine (Ray, SLURM, an MLflow server) to answer
CONNECT_TIMEOUT_ENV = "LSPT_CONNECT_TIMEOUT"


def number(options: dict[str, str], key: str, default, kind=int, minimum: float = 0):
    """`options[key]` as `kind` (int or float), finite and >= minimum, else `default` when absent.
    (check_executor has checked it against the declaration already; this is the factory's own guard.)"""
    if key not in options:
        return default
    try:
        value = kind(options[key])
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"--executor-opt {key}={options[key]} must be {what} >= {minimum:g}")
    return value


def connect_timeout(options: dict[str, str] | None = None) -> float:
    """Seconds to wait for an engine to answer: `--executor-opt connect_timeout=S`, else the env
    LSPT_CONNECT_TIMEOUT, else 30."""
    if options and "connect_timeout" in options:
        return number(options, "connect_timeout", CONNECT_TIMEOUT_S, float, 0.001)
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{CONNECT_TIMEOUT_ENV}={text} must be a number of seconds > 0")
    return value


def split_address(address: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" (also "[v6]:port" and a "scheme://" prefix), else None."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def reach(address: str, timeout: float, what: str, hint: str) -> float:
    """Open (and close) a TCP connection to `address` within `timeout` seconds; one LsptError naming
    the address, what did not answer and `hint` otherwise. Returns the seconds left of `timeout`."""
    import socket
    import time

    from lspt_cli import LsptError

    parsed = split_address(address)
    if parsed is None:
        raise LsptError(f"{what} address '{address}' is not host:port", hint=hint)
    start = time.monotonic()
    try:
        with socket.create_connection(parsed, timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise LsptError(f"cannot resolve the {what} host '{parsed[0]}' ({exc.strerror or exc})", hint=hint) from None
    except (socket.timeout, TimeoutError):
        raise LsptError(f"no answer from the {what} at {address} within {timeout:g} s", hint=hint) from None
    except OSError as exc:
        raise LsptError(f"cannot connect to the {what} at {address} ({exc.strerror or exc})", hint=hint) from None
    return max(0.0, timeout - (time.monotonic() - start))
