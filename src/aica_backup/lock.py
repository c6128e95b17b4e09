"""The exclusive lock that serialises backups, restores and prunes of one backups folder.

It is an ``flock`` (through ``filelock``) on ``backups/.aica-backup/lock``: the kernel drops it
when its holder dies, even by ``kill -9``, so a dead process can never leave a lock that
blocks the next run. Beside it, ``lock.json`` names the holder (pid, command, start time) so
a busy lock produces a useful message, and a leftover from a dead holder is reported as
cleared.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import filelock

from .errors import LockedError, StorageError
from .fsutil import PRIVATE_FILE, adopt_owner, atomic_write_bytes, ensure_private_dir


def _holder_info(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict[str, object]) -> str:
    if not info:
        return "another aica-backup process"
    operation = info.get("operation", "an operation")
    return f"{operation} by pid {info.get('pid')} since {info.get('started')}"


@contextlib.contextmanager
def exclusive_lock(meta_dir: Path, operation: str, wait: float = 0.0) -> Iterator[list[str]]:
    """Hold the lock for ``operation``; yield notes (e.g. a stale holder that was cleared).

    ``wait`` is how many seconds to wait for a running operation; 0 fails at once.
    Raises LockedError with the holder's pid and operation if the lock stays busy.
    """
    ensure_private_dir(meta_dir)
    info_path = meta_dir / "lock.json"
    lock = filelock.FileLock(meta_dir / "lock", mode=PRIVATE_FILE, thread_local=False)
    try:
        lock.acquire(timeout=wait if wait > 0 else 0, poll_interval=0.2)
    except filelock.Timeout:
        holder = _describe(_holder_info(info_path))
        raise LockedError(
            f"backups folder is locked: {holder} is running",
            hint="wait for it to finish, or pass --wait SECONDS",
        ) from None
    adopt_owner(meta_dir / "lock")
    notes: list[str] = []
    try:
        previous = _holder_info(info_path)
        pid = previous.get("pid")
        if isinstance(pid, int) and not _alive(pid, previous.get("host")):
            notes.append(
                f"cleared a stale lock left by dead pid {pid} ({previous.get('operation')})"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "operation": operation,
            "command": " ".join(sys.argv),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Only informational: a full disk must fail the operation itself, with its own message.
        with contextlib.suppress(StorageError):
            atomic_write_bytes(info_path, json.dumps(info).encode())
        yield notes
    finally:
        with contextlib.suppress(OSError):
            info_path.unlink()
        lock.release()


@contextlib.contextmanager
def idle_lock(meta_dir: Path) -> Iterator[bool]:
    """Take the lock for a moment's housekeeping only if nobody holds it: yield whether it was
    taken. Unlike :func:`exclusive_lock` it never waits, writes no holder record and leaves
    a dead holder's record for the next operation to report."""
    lock = filelock.FileLock(meta_dir / "lock", mode=PRIVATE_FILE, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):  # busy, or a lock file this user may not open
        yield False
        return
    try:
        adopt_owner(meta_dir / "lock")
        yield True
    finally:
        lock.release()


def _alive(pid: int, host: object) -> bool:
    if host not in (None, socket.gethostname()):
        return True  # another machine's process: we cannot tell, so assume it lives
    import psutil  # only here: asked only when a lock is found taken

    return psutil.pid_exists(pid)
