"""scripts/sqlite-optimization.py, run as the guide shows, on real databases and a real backend."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.app import App, make_app
from tests.support.backend import Backend

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sqlite-optimization.py"
GUIDE_COMMAND = "cd backend && python3 ../scripts/sqlite-optimization.py"
EXIT_DATABASE, EXIT_BUSY = 5, 9

# The script finds holders with psutil when it can, else through /proc/<pid>/fd: test both.
# "-S" skips site-packages, so that interpreter has the standard library but no psutil.
PYTHONS = {"psutil": [sys.executable], "proc-fallback": [sys.executable, "-S"]}


def run(*args: str, cwd: Path, python: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(python or [sys.executable]), str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def query(db: Path, sql: str) -> object:
    """First value of ``sql``, on a connection closed at once (an open one is a holder)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        return conn.execute(sql).fetchone()[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fallback_interpreter_really_lacks_psutil() -> None:
    probe = subprocess.run([*PYTHONS["proc-fallback"], "-c", "import psutil"], capture_output=True)
    assert probe.returncode != 0


def test_guide_command_from_the_app_root(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", rows=200, wal=False)
    (app.root / "scripts").mkdir()
    shutil.copy2(SCRIPT, app.root / "scripts" / SCRIPT.name)
    rows = app.rows()
    proc = subprocess.run(
        ["bash", "-c", GUIDE_COMMAND], cwd=app.root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "journal_mode: delete -> wal" in out
    assert "synchronous: NORMAL" in out
    assert "ANALYZE: done" in out and "PRAGMA optimize: done" in out
    assert "integrity_check: ok" in out
    assert out.count("database ") >= 2 and "before:" in out and "after:" in out
    assert query(app.db, "PRAGMA journal_mode") == "wal"
    assert query(app.db, "SELECT count(*) FROM sqlite_stat1") > 0  # type: ignore[operator]
    assert app.rows() == rows


def test_db_option_from_anywhere(app: App, tmp_path: Path) -> None:
    proc = run("--db", str(app.db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"database: {app.db.resolve()}" in proc.stdout


def test_missing_database_is_one_line_and_nothing_is_created(tmp_path: Path) -> None:
    proc = run(cwd=tmp_path)
    assert proc.returncode == EXIT_DATABASE
    assert proc.stderr.count("\n") == 1
    assert "database not found: aica_sys.db" in proc.stderr
    assert "--db" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "aica_sys.db"
    bad.write_bytes(b"this is not an SQLite database, just text\n" * 100)
    proc = run(cwd=tmp_path)
    assert proc.returncode == EXIT_DATABASE
    assert proc.stderr.count("\n") == 1 and "not a database" in proc.stderr


def test_damaged_database_is_refused_untouched(app: App) -> None:
    app.add_rows(3000, prefix="x" * 40)
    query(app.db, "PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(query(app.db, "PRAGMA page_size"))  # type: ignore[call-overload]
    pages = int(query(app.db, "PRAGMA page_count"))  # type: ignore[call-overload]
    data = bytearray(app.db.read_bytes())
    middle = (pages // 2) * page_size
    data[middle + 8 : middle + 200] = b"\xff" * 192  # cell pointers of one b-tree page
    app.db.write_bytes(bytes(data))
    before = digest(app.db)
    proc = run("--vacuum", cwd=app.db.parent)
    assert proc.returncode == EXIT_DATABASE
    assert proc.stderr.count("\n") == 1
    assert "database is damaged" in proc.stderr and "restore a backup" in proc.stderr
    assert digest(app.db) == before


@pytest.mark.integration
@pytest.mark.parametrize("detector", PYTHONS)
def test_vacuum_refused_while_the_backend_holds_the_database(
    backend: Backend, backend_app: App, detector: str
) -> None:
    httpx.get(backend.url("/api/notes"), timeout=10).raise_for_status()
    before = digest(backend_app.db)
    proc = run("--vacuum", cwd=backend_app.db.parent, python=PYTHONS[detector])
    assert proc.returncode == EXIT_BUSY, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"pid {backend.pid} (" in proc.stderr and "uvicorn main:app" in proc.stderr
    assert "refusing VACUUM" in proc.stderr
    assert "ANALYZE" not in proc.stdout  # refused before changing anything
    assert digest(backend_app.db) == before


@pytest.mark.integration
def test_runs_beside_the_live_backend_without_vacuum(backend: Backend, backend_app: App) -> None:
    with backend.client() as client:
        client.get("/api/notes").raise_for_status()
        proc = run(cwd=backend_app.db.parent)
        assert proc.returncode == 0, proc.stderr
        assert f"in use by: pid {backend.pid}" in proc.stdout
        # The backend keeps working: it writes, and reports itself healthy.
        assert client.post("/api/notes", json={"title": "t", "body": "after"}).status_code == 201
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("detector", PYTHONS)
def test_vacuum_compacts_when_nobody_holds_it(tmp_path: Path, detector: str) -> None:
    app = make_app(tmp_path / "app", rows=0)
    app.add_rows(5000, prefix="y" * 200)
    with contextlib.closing(sqlite3.connect(app.db)) as conn, conn:
        conn.execute("DELETE FROM notes WHERE id > 10")
    proc = run("--vacuum", cwd=app.db.parent, python=PYTHONS[detector])
    assert proc.returncode == 0, proc.stderr
    assert "VACUUM: done" in proc.stdout
    sizes = [line for line in proc.stdout.splitlines() if line.startswith(("before:", "after:"))]
    assert len(sizes) == 2
    assert not app.db.with_name(app.db.name + "-wal").exists()  # checkpointed and closed
    assert app.db.stat().st_size < 100_000  # 5000 rows of 200+ bytes shrank to 10
    assert len(app.rows()) == 10
