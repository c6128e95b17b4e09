"""File-system conditions for failure tests: tiny and read-only file systems, permission checks
that also hold for root, and snapshots of a folder tree to prove nothing was written."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Linux capability numbers and prctl(2) option: see capability(7).
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


@contextmanager
def tmpfs(path: Path, size: str, *, readonly: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"2m"``) at ``path`` for the block; skip if not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (",ro" if readonly else "")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_readonly(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _drop_dac_capabilities() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permissions_enforced() -> Callable[[], None] | None:
    """A ``preexec_fn`` under which file modes bind the child as they bind a normal user.

    For root it drops the capabilities that bypass permission checks from the bounding set, so
    the program it execs runs without them. Returns None when no change is needed (not root).
    Skips the test when neither works.
    """
    if os.geteuid() != 0:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        locked = Path(scratch) / "locked"
        locked.write_bytes(b"x")
        locked.chmod(0)
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(locked)!r}, 'rb').read()"],
            preexec_fn=_drop_dac_capabilities,
            capture_output=True,
            check=False,
        )
    if probe.returncode == 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: modes do not bind")
    return _drop_dac_capabilities


def listing(root: Path, *, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (except ``skip`` and below) with its size and mtime (files)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            p = here / name
            if skip is not None and p == skip:
                continue
            st = p.lstat()
            # A folder's own size and mtime change whenever an entry is added inside it (the
            # allowed destination included); its entries are what is compared.
            if p.is_dir() and not p.is_symlink():
                out[str(p.relative_to(root))] = (-1, 0)
            else:
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
