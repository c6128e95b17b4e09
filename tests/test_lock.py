"""The exclusive lock: one operation at a time, a clear message, and no lock outlives its holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aica_backup.errors import ExitCode, LockedError
from aica_backup.lock import exclusive_lock

# A real process that takes the lock for an operation and holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from aica_backup.lock import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def holder(meta: Path, operation: str = "restore") -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(meta), operation],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None and proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_busy_lock_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    with holder(meta, "restore") as proc:
        info = json.loads((meta / "lock.json").read_text())
        assert info["pid"] == proc.pid and info["operation"] == "restore"
        started = time.monotonic()
        with pytest.raises(LockedError) as err, exclusive_lock(meta, "backup"):
            pass
        assert time.monotonic() - started < 1
    message = str(err.value)
    assert f"restore by pid {proc.pid}" in message and "locked" in message
    assert err.value.exit_code == ExitCode.LOCKED
    assert err.value.hint is not None and "--wait" in err.value.hint


def test_wait_for_the_holder(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    with holder(meta) as proc:
        assert proc.stdin is not None
        threading.Timer(0.5, proc.stdin.close).start()
        started = time.monotonic()
        with exclusive_lock(meta, "backup", wait=30) as notes:
            waited = time.monotonic() - started
            assert notes == []
            assert json.loads((meta / "lock.json").read_text())["pid"] == os.getpid()
    assert 0.3 < waited < 10
    assert not (meta / "lock.json").exists()


def test_wait_gives_up(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    with holder(meta), pytest.raises(LockedError):
        started = time.monotonic()
        with exclusive_lock(meta, "backup", wait=0.5):
            pass
    assert 0.4 < time.monotonic() - started < 5


def test_lock_of_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    with holder(meta, "backup") as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert (meta / "lock.json").exists()  # it had no chance to clean up
    with exclusive_lock(meta, "backup") as notes:
        assert notes == [f"cleared a stale lock left by dead pid {proc.pid} (backup)"]
    with exclusive_lock(meta, "backup") as notes:
        assert notes == []


def test_stale_holder_info_from_another_host_is_not_called_dead(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "lock.json").write_text(json.dumps({"pid": dead_pid(), "host": "other-machine"}))
    with exclusive_lock(meta, "backup") as notes:
        assert notes == []


def test_garbage_holder_info_is_harmless(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "lock.json").write_text("{not json")
    with exclusive_lock(meta, "backup") as notes:
        assert notes == []


def test_lock_folder_is_private(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    with exclusive_lock(meta, "backup"):
        assert (meta.stat().st_mode & 0o777) == 0o700
        assert ((meta / "lock.json").stat().st_mode & 0o777) == 0o600
