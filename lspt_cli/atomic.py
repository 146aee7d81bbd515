"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Write to a temp file in the same directory, flush + fsync, then `os.replace` (atomic on POSIX and
Windows), then fsync the directory so the rename survives a power cut.

Outputs only ever replace regular files: a directory, a device (`/dev/full`), a FIFO or a socket at
the target is refused before anything is written (a rename would silently replace the node). The
new file gets the mode a plain `open()` would give it (0o666 minus the umask), not mkstemp's 0600.
Inputs are read through `read_regular_bytes`/`read_regular_text`: opened without blocking, checked
to be a regular file on the open descriptor (a FIFO never hangs, `/dev/zero` is refused) and capped
in size, so the whole class "special file or endless input" is handled in one place.

Test-only fault injection (inert unless the environment variable is set): `LSPT_FAULT=ACTION:NAME:N`
makes the N-th atomic write (1-based, counted per process) of a file named NAME tear its temp file
to half its size and then either SIGKILL the process (`kill`) or raise OSError(ENOSPC) (`enospc`),
i.e. a crash or a full disk in the middle of a write. tests/reliability uses it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LsptError, UsageError

# Generous caps on what lspt reads whole into memory (a file over them is refused, not read).
MAX_TEXT_BYTES = 64 * 2**20  # JSON/TOML/text files: run files, manifests, split lists, recipes


def file_kind(mode: int) -> str:
    """A human name for a non-regular file type ("a directory", "a FIFO", ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_path(path: str | os.PathLike) -> Path:
    """The path an atomic write will replace: `path` itself, or the file a symlink points to.

    UsageError when it exists and is not a regular file (directory, device, FIFO, socket)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UsageError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(
            f"{path}: is {file_kind(st.st_mode)}; lspt only writes regular files",
            hint="choose a file path for the output",
        )
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on clean exit it replaces `path`, on error it vanishes."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give; mkstemp's 0600 hides shared outputs
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if _FAULT_ENV in os.environ:
            _inject_fault(path, tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one complete line, atomically: the file is rewritten through a temp file, so a crash
    or a full disk leaves the old lines or all of the new ones, never a torn line (small JSONL logs)."""
    path = Path(path)
    old = read_regular_bytes(path, "log file") if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_bytes(path, old + (line.rstrip("\n") + "\n").encode("utf-8"))


def open_regular(path: str | os.PathLike, what: str = "file", error: type[LsptError] = LsptError, max_bytes: int | None = None):
    """Open `path` for binary reading, but only if it is a regular file (checked on the descriptor,
    opened non-blocking so a FIFO cannot hang) and, with `max_bytes`, not larger than that.

    Every problem is `error` naming the path and what was expected."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a regular file ({what} expected)") from None
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{path}: is {file_kind(mode)}, not a regular file ({what} expected)") from None
        raise error(f"{path}: cannot open {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular file ({what} expected)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path}: {what} is too large ({st.st_size:,} bytes; at most {max_bytes:,})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, what: str = "file", error: type[LsptError] = LsptError,
                       max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The whole content of a regular file of at most `max_bytes` (see open_regular)."""
    with open_regular(path, what, error, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read
        raise error(f"{path}: {what} is too large (more than {max_bytes:,} bytes)")
    return data


def read_regular_text(path: str | os.PathLike, what: str = "file", error: type[LsptError] = LsptError,
                      max_bytes: int = MAX_TEXT_BYTES, encoding: str = "utf-8") -> str:
    """read_regular_bytes decoded; a decoding failure is `error` too."""
    data = read_regular_bytes(path, what, error, max_bytes)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not {encoding.upper()} text") from None


_FAULT_ENV = "LSPT_FAULT"
_fault_counts: dict[str, int] = {}


def _inject_fault(path: Path, tmp_path: Path) -> None:
    """LSPT_FAULT=ACTION:NAME:N (see the module docstring); a malformed value is ignored."""
    action, _, rest = os.environ.get(_FAULT_ENV, "").partition(":")
    name, _, nth = rest.rpartition(":")
    if name != path.name or action not in ("kill", "enospc") or not nth.isdigit():
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] != int(nth):
        return
    with open(tmp_path, "rb+") as fh:  # a torn write: only the first half reached the disk
        fh.truncate(tmp_path.stat().st_size // 2)
        fh.flush()
        os.fsync(fh.fileno())
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform/filesystem
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
