"""Exclusive locks on the directories lspt writes: run dirs, task data dirs, sweep dirs.

Two `lspt tune --out D` at once would interleave `metrics.jsonl` and lose a result; a `--resume D`
while D still trains would run it twice. So every writer holds `D/.lspt.lock` while it works.

- A real OS lock (`filelock`, i.e. flock(2) on POSIX): the kernel drops it when the holder dies,
  SIGKILL included, so a stale lock never blocks anyone; a leftover lock file is simply locked again.
- Runs never wait: a second process gets one clear error naming the holder's pid (written into the
  lock file by the holder) instead of hanging behind a run that may take hours. Short jobs whose
  result does not depend on who does them (preparing a task) wait, bounded (`wait`), saying for whom
  (`on_wait`), and stop waiting at a Ctrl-C flag (`cancelled`).
- The lock file is removed on release (while still held; filelock's acquire notices an unlinked
  inode and retries), so a finished run directory holds no lock file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import LsptError

LOCK_NAME = ".lspt.lock"


class LockedError(LsptError):
    """The directory is being written by another (living) lspt process."""


def holder_pid(lock_path: Path) -> int | None:
    """The pid recorded in a lock file, if any (best effort: only used for the message)."""
    try:
        text = Path(lock_path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str, hint: str | None = None, wait: float = 0,
         on_wait: Callable[[int | None], None] | None = None,
         cancelled: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Hold the lock of `directory` (created if missing) for the duration of the block.

    LockedError naming the holder's pid when another process holds it (after `wait` seconds: only
    for short jobs such as preparing a task; runs never wait). When it has to wait, `on_wait(pid)` is
    called once first (to say so); `cancelled()` true (a Ctrl-C flag) stops the wait with KeyboardInterrupt."""
    import time

    from filelock import FileLock, Timeout

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LsptError(f"{directory}: the {what} is not writable ({exc.strerror or exc})",
                        hint="choose another directory, or free some space") from None
    if not directory.is_dir():
        raise LsptError(f"{directory}: the {what} is not a directory")
    path = directory / LOCK_NAME
    lock = FileLock(str(path), timeout=wait)
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            if wait <= 0:
                raise
            if on_wait is not None:
                on_wait(holder_pid(path))
            deadline = time.monotonic() + wait
            while True:  # in short steps: a Ctrl-C flag is seen within 0.1 s
                if cancelled is not None and cancelled():
                    raise KeyboardInterrupt from None
                try:
                    lock.acquire(timeout=max(0.0, min(0.1, deadline - time.monotonic())), poll_interval=0.02)
                    break
                except Timeout:
                    if time.monotonic() >= deadline:
                        raise
    except Timeout:
        pid = holder_pid(path)
        who = f"pid {pid}" if pid else "an unknown pid"
        waited = f", still after waiting {wait:g} s" if wait > 0 else ""
        raise LockedError(
            f"{directory}: the {what} is in use by another lspt process ({who}){waited}",
            hint=hint or (f"wait for it to finish or stop it (kill {pid}); " if pid else "wait for it to finish; ")
            + "a lock of a process that died is released automatically",
        ) from None
    except OSError as exc:
        raise LsptError(f"{directory}: cannot lock the {what} ({exc.strerror or exc})") from None
    try:
        _write_pid(path)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still held: a contender that opened this inode retries on the new path
        lock.release()


def _write_pid(path: Path) -> None:
    with contextlib.suppress(OSError):  # the pid is only for the message: never fail over it
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        finally:
            os.close(fd)
