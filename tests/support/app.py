"""A throw-away app tree (database, uploads, config) under tmp_path, and a clean environment.

Every test that touches the tool's environment variables gets them stripped first, so a
developer's own AICA_BACKUP_* settings never leak into a run.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aica_backup.cli import main as cli_main

SECRET = "s3cr3t-token-do-not-leak"


@dataclass
class App:
    """A sample application root built by :func:`make_app`."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "backend" / "aica_sys.db"

    @property
    def uploads(self) -> Path:
        return self.root / "public" / "uploads"

    @property
    def env(self) -> Path:
        return self.root / ".env.production"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    def archives(self, pattern: str = "backup_*") -> list[Path]:
        """Archives on disk, newest name last."""
        return sorted(self.backups.glob(pattern))

    def rows(self) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.db)  # closed explicitly: `with` only commits
        try:
            return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
        finally:
            conn.close()

    def add_rows(self, n: int, prefix: str = "row") -> None:
        conn = sqlite3.connect(self.db)
        try:
            conn.executemany(
                "INSERT INTO notes(body) VALUES (?)", [(f"{prefix}-{i}",) for i in range(n)]
            )
            conn.commit()
        finally:
            conn.close()

    def uploads_tree(self) -> dict[str, bytes]:
        """Every upload file's relative path and bytes."""
        if not self.uploads.exists():
            return {}
        return {
            str(p.relative_to(self.uploads)): p.read_bytes()
            for p in sorted(self.uploads.rglob("*"))
            if p.is_file()
        }

    def run(self, *args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run the real command line as a subprocess, the way an operator does."""
        cmd = [sys.executable, "-m", "aica_backup", "--root", str(self.root), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc  # type: ignore[no-any-return]


def make_app(root: Path, *, rows: int = 50, wal: bool = True) -> App:
    """Build a sample app: a WAL database, nested uploads with non-ASCII names, a secret config."""
    app = App(root)
    app.db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(app.db)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.execute("CREATE INDEX notes_body ON notes(body)")
    conn.commit()
    conn.close()
    app.add_rows(rows)
    files = {
        "avatars/alice.png": b"\x89PNG" + bytes(range(256)) * 4,
        "docs/報告書 2024.txt": "日本語のファイル\n".encode(),
        "docs/nested/deep/data.json": b'{"k": [1, 2, 3]}',
        "empty.txt": b"",
    }
    for rel, data in files.items():
        p = app.uploads / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (app.uploads / "empty-folder").mkdir()
    app.env.write_text(f"DATABASE_URL=sqlite:///aica_sys.db\nAPI_SECRET={SECRET}\n")
    app.env.chmod(0o600)
    return app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip the tool's environment variables from every test."""
    for name in list(os.environ):
        if name.startswith("AICA_BACKUP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def app(tmp_path: Path) -> App:
    return make_app(tmp_path / "app")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[object]:
    """Run the command in-process: ``cli(app, "backup", "--json") -> (exit code, out, err)``."""

    def run(app: App, *args: str) -> tuple[int, str, str]:
        try:
            cli_main(["--root", str(app.root), *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
