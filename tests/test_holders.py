"""find_holders: the real backend, and a process that opened the database by another name."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from aica_backup.holders import find_holders
from tests.support.app import App
from tests.support.backend import Backend

# Opens the database (WAL: -wal and -shm open too), writes, then waits until stdin closes.
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS held(x)")
conn.execute("INSERT INTO held VALUES (1)")
conn.commit()
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def holding(db: Path, marker: str) -> Iterator[subprocess.Popen[str]]:
    """A real process holding ``db`` open until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(10)


def db_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def test_names_the_running_backend(backend: Backend, backend_app: App) -> None:
    httpx.get(backend.url("/api/notes"), timeout=10).raise_for_status()  # a connection is open
    holders = find_holders(db_files(backend_app.db))
    assert [h.pid for h in holders] == [backend.pid]
    holder = holders[0]
    assert "uvicorn main:app" in holder.cmdline
    assert holder.path == backend_app.db
    assert str(holder) == f"pid {backend.pid} ({holder.cmdline})"


def test_every_side_file_is_reported_once_per_process(app: App) -> None:
    with holding(app.db, "holder-a") as proc:
        holders = find_holders(db_files(app.db))
    assert len(holders) == 1
    assert holders[0].pid == proc.pid
    assert holders[0].files == tuple(db_files(app.db))  # in the order asked
    assert holders[0].cmdline.endswith(f"{app.db} holder-a")
    assert "\n" not in holders[0].cmdline  # the -c script's newlines are folded


def test_found_through_a_symlinked_folder(app: App, tmp_path: Path) -> None:
    link = tmp_path / "linked-backend"
    link.symlink_to(app.db.parent, target_is_directory=True)
    with holding(link / app.db.name, "via-link") as proc:
        # Asked by the real path, held by the link's path: matched by device and inode.
        assert [h.pid for h in find_holders([app.db])] == [proc.pid]


def test_the_current_process_is_not_a_holder(app: App) -> None:
    conn = sqlite3.connect(app.db)
    try:
        conn.execute("SELECT count(*) FROM notes").fetchall()
        assert find_holders(db_files(app.db)) == []
    finally:
        conn.close()


def test_nobody_holds_a_closed_or_missing_file(app: App, tmp_path: Path) -> None:
    with holding(app.db, "gone"):
        pass
    assert find_holders(db_files(app.db)) == []
    assert find_holders([tmp_path / "missing.db"]) == []
    assert find_holders([]) == []


def test_a_holder_of_another_file_is_not_reported(app: App, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with holding(other, "other") as proc:
        assert find_holders([app.db]) == []
        assert [h.pid for h in find_holders([other])] == [proc.pid]
