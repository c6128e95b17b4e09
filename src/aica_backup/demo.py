"""A sample AICA-SyS app for the demo: a WAL database, nested uploads, a secrets file.

Also the "fingerprint" the demo uses to prove a restore brought everything back: the
database's rows, every upload's SHA-256, and the config file's bytes and mode.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

from .layout import Layout

UPLOADS = {
    "avatars/alice.png": 40_000,
    "avatars/ボブ.jpg": 25_000,
    "articles/2024/10/記事の画像.webp": 120_000,
    "articles/2024/10/notes.md": 3_000,
    "documents/請求書/invoice-0001.pdf": 60_000,
    "documents/報告書 2024年.txt": 8_000,
    "exports/users.json": 15_000,
}


def build_sample_app(layout: Layout, *, users: int = 200, notes: int = 2000) -> None:
    """Create a populated app at ``layout`` (deterministic content)."""
    rnd = random.Random(8)  # noqa: S311 - sample data, not secrets
    layout.database_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(layout.database_path)
    try:
        conn.executescript(
            """
            PRAGMA journal_mode = WAL;
            CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT);
            CREATE TABLE notes(id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                               title TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT);
            CREATE INDEX notes_user ON notes(user_id);
            PRAGMA user_version = 3;
            """
        )
        conn.executemany(
            "INSERT INTO users(email, name) VALUES (?, ?)",
            [(f"user{i}@example.com", f"ユーザー {i}") for i in range(users)],
        )
        words = ["backup", "復旧", "sqlite", "uploads", "整合性", "運用", "invoice", "report"]
        conn.executemany(
            "INSERT INTO notes(user_id, title, body, created_at) VALUES (?, ?, ?, ?)",
            [
                (
                    rnd.randrange(1, users + 1),
                    f"note {i}",
                    " ".join(rnd.choices(words, k=40)),
                    f"2024-10-{rnd.randrange(1, 29):02d}",
                )
                for i in range(notes)
            ],
        )
        conn.commit()
    finally:
        conn.close()
    for rel, size in UPLOADS.items():
        path = layout.uploads_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (
            rnd.randbytes(size)
            if not rel.endswith((".md", ".txt", ".json"))
            else (("サンプル text line\n" * (size // 24)).encode())
        )
        path.write_bytes(data)
    layout.config_path.write_text(
        "DATABASE_URL=sqlite:///./aica_sys.db\nSECRET_KEY=demo-secret-7f3a9c\nDEBUG=false\n"
    )
    layout.config_path.chmod(0o600)


def fingerprint(layout: Layout) -> dict[str, Any]:
    """What a restore must bring back exactly."""
    db: list[tuple[Any, ...]] = []
    if layout.database_path.exists():
        conn = sqlite3.connect(f"file:{layout.database_path}?mode=ro", uri=True)
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
                )
            ]
            for table in tables:
                db += [(table, *row) for row in conn.execute(f'SELECT * FROM "{table}"')]  # noqa: S608
        finally:
            conn.close()
    uploads: dict[str, str] = {}
    if layout.uploads_path.is_dir():
        for folder, _dirs, files in os.walk(layout.uploads_path):
            for name in files:
                p = Path(folder) / name
                uploads[str(p.relative_to(layout.uploads_path))] = hashlib.sha256(
                    p.read_bytes()
                ).hexdigest()
    config = layout.config_path
    return {
        "rows": db,
        "uploads": uploads,
        "config": config.read_bytes() if config.exists() else None,
        "config_mode": config.stat().st_mode & 0o777 if config.exists() else None,
    }


def damage(layout: Layout) -> list[str]:
    """A bad day: a migration drops data, uploads vanish, the config is overwritten."""
    conn = sqlite3.connect(layout.database_path)
    try:
        conn.execute("DELETE FROM notes WHERE id % 3 = 0")
        conn.execute("UPDATE users SET name = 'oops'")
        conn.commit()
    finally:
        conn.close()
    gone = sorted(layout.uploads_path.rglob("*.webp")) + sorted(layout.uploads_path.rglob("*.pdf"))
    for p in gone:
        p.unlink()
    layout.config_path.write_text("SECRET_KEY=\n")
    return [
        "bad migration: deleted a third of the notes and renamed every user",
        f"deleted {len(gone)} uploaded files",
        ".env.production overwritten",
    ]
