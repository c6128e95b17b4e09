"""The reference backend: ``init_db`` exactly as the guide runs it, and the real server."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.app import App
from tests.support.backend import BACKEND_FILES, BACKEND_SRC, Backend, backend_env, running_backend

# The guide's troubleshooting step, verbatim (run from the app root).
GUIDE_INIT_DB = 'cd backend && python3 -c "from database import init_db; init_db()"'

TABLES = {"users", "notes", "uploads", "events"}
INDEXES = {
    "notes_created_at",
    "notes_author",
    "uploads_sha256",
    "uploads_created_at",
    "events_kind_created",
}


def _copy_backend(root: Path) -> Path:
    backend = root / "backend"
    backend.mkdir(parents=True)
    for name in BACKEND_FILES:
        shutil.copy2(BACKEND_SRC / name, backend / name)
    return backend


def _guide_init_db(
    root: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", GUIDE_INIT_DB],
        cwd=root,
        env=backend_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _schema(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()


def test_init_db_as_the_guide_runs_it(tmp_path: Path) -> None:
    root = tmp_path / "app"
    backend = _copy_backend(root)
    proc = _guide_init_db(root)
    assert proc.returncode == 0, proc.stderr
    db = backend / "aica_sys.db"
    conn = sqlite3.connect(db)
    try:
        names = {n for _, n in _schema(db)}
        assert names >= TABLES | INDEXES
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.execute("INSERT INTO notes(body) VALUES ('kept')")
        conn.commit()
    finally:
        conn.close()
    before = _schema(db)

    # Idempotent: the guide runs it again after a restore, on a database full of data.
    proc = _guide_init_db(root)
    assert proc.returncode == 0, proc.stderr
    assert _schema(db) == before
    with sqlite3.connect(db) as again:
        assert again.execute("SELECT body FROM notes").fetchall() == [("kept",)]


def test_init_db_honours_aica_db_path(tmp_path: Path) -> None:
    root = tmp_path / "app"
    backend = _copy_backend(root)
    elsewhere = tmp_path / "data" / "other.db"
    proc = _guide_init_db(root, {"AICA_DB_PATH": str(elsewhere)})
    assert proc.returncode == 0, proc.stderr
    assert {n for _, n in _schema(elsewhere)} >= TABLES
    assert not (backend / "aica_sys.db").exists()


def test_init_db_refuses_a_newer_schema(tmp_path: Path) -> None:
    root = tmp_path / "app"
    backend = _copy_backend(root)
    with sqlite3.connect(backend / "aica_sys.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    proc = _guide_init_db(root)
    assert proc.returncode != 0
    assert "schema version 99" in proc.stderr


@pytest.mark.integration
def test_notes_uploads_and_health(backend: Backend, backend_app: App) -> None:
    with backend.client() as http:
        created = http.post("/api/notes", json={"title": "t", "body": "hello", "author": "alice"})
        assert created.status_code == 201, created.text
        note_id = created.json()["id"]
        got = http.get(f"/api/notes/{note_id}").json()
        assert (got["body"], got["title"], got["author"]) == ("hello", "t", "alice")
        http.post("/api/notes", json={"body": "second"}).raise_for_status()
        newest = http.get("/api/notes", params={"limit": 1}).json()
        assert [n["body"] for n in newest] == ["second"]
        assert http.get("/api/notes/999999").status_code == 404
        assert http.post("/api/notes", json={"body": ""}).status_code == 422
        assert http.get("/api/notes", params={"limit": 0}).status_code == 422

        data = b"\x00\x01 binary \xff" * 1000
        up = http.post(
            "/api/uploads",
            files={"file": ("../../etc/報告 書.bin", data, "application/octet-stream")},
        )
        assert up.status_code == 201, up.text
        stored = up.json()

    # The hostile name stays inside uploads/YYYY/MM/, and the file is whole and recorded.
    year, month, filename = stored["path"].split("/")
    assert len(year) == 4 and len(month) == 2
    assert filename.endswith("-報告_書.bin") and ".." not in filename
    path = backend_app.uploads / stored["path"]
    assert path.read_bytes() == data
    assert stored["sha256"] == hashlib.sha256(data).hexdigest() and stored["size"] == len(data)
    assert list((backend_app.root / "public" / ".uploads-tmp").iterdir()) == []
    with sqlite3.connect(backend_app.db) as conn:
        row = conn.execute("SELECT path, size, sha256 FROM uploads").fetchone()
    assert row == (stored["path"], len(data), stored["sha256"])

    code, health = backend.health()
    assert code == 200
    db = health["database"]
    assert db["ok"] is True
    assert (db["journal_mode"], db["quick_check"], db["user_version"]) == ("wal", "ok", 1)
    # No backup yet: the app serves, but health says so.
    assert health["backup"]["status"] == "none"
    assert health["status"] == "degraded"

    # The backend keeps the database open: that is how restore finds the running app.
    held = {Path(f.path) for f in psutil.Process(backend.pid).open_files()}
    assert backend_app.db.resolve() in held


def _move_database(src: Path, dst: Path) -> None:
    """Move a database with its -wal/-shm, as an operator would (never the file alone)."""
    for suffix in ("", "-wal", "-shm"):
        side = Path(f"{src}{suffix}")
        if side.exists():
            side.rename(f"{dst}{suffix}")


@pytest.mark.integration
def test_health_reports_a_missing_or_damaged_database(backend: Backend, backend_app: App) -> None:
    with backend.client() as http:
        http.post("/api/notes", json={"body": "before"}).raise_for_status()
    moved = backend_app.db.with_name("moved.db")
    _move_database(backend_app.db, moved)

    code, health = backend.health()
    assert (code, health["status"], health["database"]["ok"]) == (503, "error", False)
    assert "No such file" in health["database"]["error"]
    with backend.client() as http:
        # Writes fail loudly instead of going to an orphaned file or a new empty database.
        assert http.post("/api/notes", json={"body": "lost"}).status_code == 503
    assert not backend_app.db.exists()

    backend_app.db.write_bytes(b"this is not a database" * 100)
    code, health = backend.health()
    assert (code, health["status"]) == (503, "error")
    assert "not a database" in health["database"]["error"]

    backend_app.db.unlink()
    _move_database(moved, backend_app.db)
    code, health = backend.health()
    assert code == 200 and health["database"]["ok"] is True
    with backend.client() as http:
        assert [n["body"] for n in http.get("/api/notes").json()] == ["before"]


@pytest.mark.integration
def test_an_upload_over_the_limit_leaves_nothing_behind(backend_app: App) -> None:
    with (
        running_backend(backend_app.root, env={"AICA_MAX_UPLOAD_BYTES": "1000"}) as server,
        server.client() as http,
    ):
        small = http.post("/api/uploads", files={"file": ("ok.txt", b"x" * 1000)})
        assert small.status_code == 201, small.text
        big = http.post("/api/uploads", files={"file": ("big.bin", b"x" * 1001)})
        assert big.status_code == 413
    stored = [p.name for p in backend_app.uploads.rglob("*") if p.is_file()]
    assert sum(name.endswith("-ok.txt") for name in stored) == 1
    assert not any("big" in name for name in stored)
    assert list((backend_app.root / "public" / ".uploads-tmp").iterdir()) == []
    with sqlite3.connect(backend_app.db) as conn:
        assert conn.execute("SELECT original_name FROM uploads").fetchall() == [("ok.txt",)]
