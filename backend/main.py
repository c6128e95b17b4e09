"""The AICA-SyS reference backend: notes, file uploads and a health check.

Start it from this folder as the guide does: ``python3 -m uvicorn main:app``. The app root is
the parent of this folder (``AICA_APP_ROOT`` overrides it); uploads go to
``<app root>/public/uploads/YYYY/MM/<uuid>-<name>``. ``/health`` reports the database and,
when aica-backup is installed, the freshness of the newest backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import database

try:  # optional: the backend runs (and reports "unknown") without aica-backup installed
    from aica_backup.integrations.fastapi import backup_health as aica_backup_health
except ImportError:  # pragma: no cover - exercised only where aica-backup is absent
    aica_backup_health = None  # type: ignore[assignment]

MAX_UPLOAD_BYTES = int(os.environ.get("AICA_MAX_UPLOAD_BYTES", str(100 * 1024 * 1024)))
# quick_check reads the whole file: cache its result while the file looks unchanged.
CHECK_TTL_SECONDS = float(os.environ.get("AICA_HEALTH_CHECK_TTL", "60"))
CHUNK = 1 << 20
log = logging.getLogger("uvicorn.error")


def app_root() -> Path:
    override = os.environ.get("AICA_APP_ROOT")
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parent.parent


def uploads_dir() -> Path:
    return app_root() / "public" / "uploads"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    try:
        database.init_db()
    except (sqlite3.Error, RuntimeError) as exc:
        # Serve anyway: /health then answers 503 with the reason, which a monitor (or a
        # restore's health check) can see, instead of a backend stuck in a crash loop.
        log.error("database initialisation failed: %s", exc)
    try:
        yield
    finally:
        database.close_all()


app = FastAPI(title="AICA-SyS backend", lifespan=lifespan)


@app.exception_handler(sqlite3.Error)
async def database_unavailable(_request: Request, exc: sqlite3.Error) -> JSONResponse:
    # A missing, locked-for-too-long or damaged database is the server's problem, not the client's.
    return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)


# -- notes --------------------------------------------------------------------------------------


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=1_000_000)
    title: str = Field(default="", max_length=500)
    author: str | None = Field(default=None, min_length=1, max_length=100)


def _note(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "body": row["body"],
        "author": row["author"],
        "created_at": row["created_at"],
    }


_NOTE_SELECT = (
    "SELECT n.id, n.title, n.body, n.created_at, u.username AS author "
    "FROM notes n LEFT JOIN users u ON u.id = n.author_id"
)


def _user_id(conn: sqlite3.Connection, username: str | None) -> int | None:
    if username is None:
        return None
    conn.execute("INSERT OR IGNORE INTO users(username) VALUES (?)", (username,))
    return int(conn.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()[0])


@app.post("/api/notes", status_code=201)
def create_note(note: NoteIn) -> dict[str, Any]:
    """Store a note; answer once it is committed."""
    conn = database.get_connection()
    created = now_iso()
    with database.transaction(conn):
        author_id = _user_id(conn, note.author)
        cur = conn.execute(
            "INSERT INTO notes(title, body, author_id, created_at) VALUES (?, ?, ?, ?)",
            (note.title, note.body, author_id, created),
        )
        note_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO events(kind, subject_id, created_at) VALUES ('note_created', ?, ?)",
            (note_id, created),
        )
    return {"id": note_id, "created_at": created}


@app.get("/api/notes/{note_id}")
def read_note(note_id: int) -> dict[str, Any]:
    row = database.get_connection().execute(f"{_NOTE_SELECT} WHERE n.id = ?", (note_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"note {note_id} not found")
    return _note(row)


@app.get("/api/notes")
def list_notes(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
    """The newest notes first."""
    rows = (
        database.get_connection()
        .execute(f"{_NOTE_SELECT} ORDER BY n.id DESC LIMIT ?", (limit,))
        .fetchall()
    )
    return [_note(r) for r in rows]


# -- uploads ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^\w.\-]+")


def safe_name(name: str | None) -> str:
    """A file name that cannot leave its folder or hide: no separators, no leading dots."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    cleaned = _UNSAFE.sub("_", base).lstrip(".")[:100]
    return cleaned or "file"


@app.post("/api/uploads", status_code=201)
def create_upload(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """Store an uploaded file under public/uploads/YYYY/MM/ and record its metadata.

    The bytes go to a temp folder beside ``uploads`` (same file system, outside the backed-up
    tree), are fsynced, then renamed into place: a backup sees the whole file or none of it.
    """
    uploads = uploads_dir()
    now = datetime.now(UTC)
    file_id = uuid.uuid4().hex
    rel = f"{now:%Y}/{now:%m}/{file_id}-{safe_name(file.filename)}"
    final = uploads / rel
    tmp_dir = uploads.parent / ".uploads-tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{file_id}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "xb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"file larger than {MAX_UPLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)
    finally:
        tmp.unlink(missing_ok=True)
    conn = database.get_connection()
    try:
        with database.transaction(conn):
            cur = conn.execute(
                "INSERT INTO uploads(uuid, original_name, path, size, sha256, content_type,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    file_id,
                    file.filename or "",
                    rel,
                    size,
                    digest.hexdigest(),
                    file.content_type,
                    now.isoformat(),
                ),
            )
            upload_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO events(kind, subject_id, detail, created_at)"
                " VALUES ('upload_stored', ?, ?, ?)",
                (upload_id, rel, now.isoformat()),
            )
    except BaseException:
        final.unlink(missing_ok=True)  # no file without its metadata row
        raise
    return {
        "id": upload_id,
        "path": rel,
        "size": size,
        "sha256": digest.hexdigest(),
    }


# -- health -------------------------------------------------------------------------------------

_check_cache: dict[tuple[int, int, int, int], tuple[float, str]] = {}


def _quick_check(conn: sqlite3.Connection, key: tuple[int, int, int, int]) -> str:
    hit = _check_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < CHECK_TTL_SECONDS:
        return hit[1]
    rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    result = "; ".join(str(r[0]) for r in rows) or "no result"
    _check_cache.clear()
    _check_cache[key] = (time.monotonic(), result)
    return result


def database_health() -> dict[str, Any]:
    """The database's state; ``ok`` is False when it is missing, unreadable or damaged."""
    path = database.db_path()
    info: dict[str, Any] = {"ok": False, "file": path.name}
    try:
        st = path.stat()
        conn = database.get_connection()
        info["journal_mode"] = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        info["user_version"] = int(conn.execute("PRAGMA user_version").fetchone()[0])
        info["page_count"] = int(conn.execute("PRAGMA page_count").fetchone()[0])
        info["quick_check"] = _quick_check(conn, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    except (OSError, sqlite3.Error) as exc:
        info["error"] = str(exc)
        return info
    info["size_bytes"] = st.st_size
    with contextlib.suppress(OSError):
        info["wal_bytes"] = path.with_name(path.name + "-wal").stat().st_size
    info["ok"] = info["quick_check"] == "ok"
    return info


def backup_health() -> dict[str, Any]:
    """aica-backup's view of the newest backup, or why it is unknown (never raises)."""
    if aica_backup_health is None:
        return {"status": "unknown", "reason": "aica-backup not installed"}
    return aica_backup_health(app_root())


@app.get("/health")
def health() -> JSONResponse:
    """200 with status "ok" or "degraded" (backups stale or failing); 503 if the database is not."""
    db = database_health()
    backup = backup_health()
    if not db["ok"]:
        status, code = "error", 503
    elif backup["status"] != "ok" and aica_backup_health is not None:
        # The app serves, but a disk loss now would lose data (or nobody can tell): worth a
        # warning, not an outage. Without aica-backup installed there is nothing to judge.
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JSONResponse({"status": status, "database": db, "backup": backup}, status_code=code)
