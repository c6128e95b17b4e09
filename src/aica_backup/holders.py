"""Which processes hold a file open: the backend holding the database, before restore or VACUUM.

Restore must not swap a database that a running backend keeps writing to, and ``doctor`` names
the process behind "database is locked" instead of suggesting deletion. Open files are matched
by device and inode (through ``/proc/<pid>/fd``) as well as by path, so a process that opened
the file through a symlink, a bind mount or from inside a container is found too.

Only processes this user may inspect are seen: run as root (or as the backend's user) to see
them all. ``scripts/sqlite-optimization.py`` carries a small copy of this logic because it must
run with the system ``python3``, without this package installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Holder:
    """A process holding one or more of the asked-about files open."""

    pid: int
    cmdline: str
    files: tuple[Path, ...]  # the matched files, in the order they were asked about

    @property
    def path(self) -> Path:
        """The first matched file (the database itself when asked with the database first)."""
        return self.files[0]

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.cmdline})"


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _cmdline(proc: psutil.Process) -> str:
    try:
        # One line whatever the arguments hold (python -c scripts carry newlines).
        return " ".join(" ".join(proc.cmdline()).split()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def _held(
    proc: psutil.Process, inodes: dict[tuple[int, int], int], names: dict[str, int]
) -> set[int]:
    """Indexes of the target files ``proc`` holds open."""
    hits: set[int] = set()
    for f in proc.open_files():
        # The fd link resolves to the very file the process has open, whatever name it used.
        ident = _identity(f"/proc/{proc.pid}/fd/{f.fd}") if f.fd >= 0 else None
        if ident is not None and ident in inodes:
            hits.add(inodes[ident])
        elif os.path.realpath(f.path) in names:
            hits.add(names[os.path.realpath(f.path)])
    return hits


def find_holders(paths: Iterable[Path]) -> list[Holder]:
    """Every other process holding any of ``paths`` open, one entry per process, by pid.

    Paths that do not exist are ignored (no process can hold them).
    """
    wanted = list(dict.fromkeys(Path(p) for p in paths))
    inodes: dict[tuple[int, int], int] = {}
    names: dict[str, int] = {}
    for i, p in enumerate(wanted):
        ident = _identity(p)
        if ident is not None:
            inodes.setdefault(ident, i)
            names.setdefault(os.path.realpath(p), i)
    if not inodes:
        return []
    me = os.getpid()
    holders: list[Holder] = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            hits = _held(proc, inodes, names)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's process we may not inspect
        if hits:
            files = tuple(wanted[i] for i in sorted(hits))
            holders.append(Holder(proc.pid, _cmdline(proc), files))
    return sorted(holders, key=lambda h: h.pid)
