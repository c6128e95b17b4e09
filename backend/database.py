"""The AICA-SyS backend's SQLite database: schema, ``init_db`` and per-thread connections.

The guide's recovery step runs ``cd backend && python3 -c "from database import init_db;
init_db()"``, so this module needs nothing beyond the standard library. The database lives
beside this file as ``aica_sys.db`` unless ``AICA_DB_PATH`` says otherwise.

Connections are plain ``sqlite3`` in WAL mode with ``synchronous=NORMAL``: readers never block
the writer, and a backup taken through SQLite's backup API (aica-backup) runs while requests
keep committing. Each worker thread keeps one long-lived connection, so the running backend
holds the database file open; that is how ``aica-backup restore`` finds out the app is running.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

DB_FILENAME = "aica_sys.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5_000

# Every statement is idempotent: init_db may run on an existing (for example restored) database.
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL UNIQUE,
    email       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS notes (
    id          INTEGER PRIMARY KEY,
    title       TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL,
    author_id   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT
);
CREATE INDEX IF NOT EXISTS notes_created_at ON notes(created_at);
CREATE INDEX IF NOT EXISTS notes_author ON notes(author_id);

CREATE TABLE IF NOT EXISTS uploads (
    id            INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    path          TEXT NOT NULL UNIQUE,   -- relative to the uploads folder
    size          INTEGER NOT NULL CHECK (size >= 0),
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
    content_type  TEXT,
    uploader_id   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS uploads_sha256 ON uploads(sha256);
CREATE INDEX IF NOT EXISTS uploads_created_at ON uploads(created_at);

CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject_id  INTEGER,
    detail      TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS events_kind_created ON events(kind, created_at);
"""


def db_path() -> Path:
    """The database file: ``AICA_DB_PATH`` or ``aica_sys.db`` beside this module."""
    override = os.environ.get("AICA_DB_PATH")
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parent / DB_FILENAME


def _uri(path: Path, mode: str) -> str:
    # '?' and '#' in a folder name must not be read as URI syntax.
    quoted = str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode={mode}"


def connect(path: Path | None = None, *, create: bool = False) -> sqlite3.Connection:
    """A new connection with the app's settings; never creates the file unless ``create``.

    Refusing to create matters: after the file is deleted or moved away, a plain
    ``sqlite3.connect`` would silently start a new empty database.
    """
    path = path or db_path()
    conn = sqlite3.connect(
        _uri(path, "rwc" if create else "rw"),
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # autocommit; writes use transaction() explicitly
        check_same_thread=False,  # only close_all() crosses threads, at shutdown
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def init_db(path: Path | None = None) -> Path:
    """Create the database and its schema if missing (idempotent); return the file's path."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, create=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has schema version {version}, newer than this backend's {SCHEMA_VERSION}"
            )
        # WAL is stored in the file, so every later connection (and a restored copy) gets it.
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal":
            raise RuntimeError(f"{path}: cannot switch to WAL mode (journal mode is {mode})")
        with transaction(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        conn.close()
    return path


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: take the write lock up front, roll back on any error.

    Immediate, so a transaction that reads before it writes never fails with "database is
    locked" half way through; the busy timeout makes it wait for the lock instead.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class _PerThread(threading.local):
    conn: sqlite3.Connection | None = None
    identity: tuple[int, int] | None = None
    generation: int = 0


_local = _PerThread()
_all_lock = threading.Lock()
_all: list[sqlite3.Connection] = []
_generation = 0  # bumped by close_all(): every thread's connection is then stale


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def get_connection() -> sqlite3.Connection:
    """This thread's long-lived connection, reopened if the file was replaced or removed.

    A restore that swaps in another file (or a file deleted by hand) must not leave the
    backend reading and writing an orphaned inode, so the file's identity is checked on every
    call (one ``stat``). A missing file raises ``sqlite3.OperationalError``.
    """
    path = db_path()
    try:
        identity: tuple[int, int] | None = _identity(path)
    except FileNotFoundError:
        identity = None
    if _local.conn is not None and identity == _local.identity and _local.generation == _generation:
        return _local.conn
    _drop_thread_connection()
    if identity is None:
        raise sqlite3.OperationalError(f"database file not found: {path}")
    conn = connect(path)
    with _all_lock:
        _all.append(conn)
        _local.conn, _local.identity, _local.generation = conn, identity, _generation
    return conn


def _drop_thread_connection() -> None:
    conn = _local.conn
    _local.conn, _local.identity = None, None
    if conn is not None:
        with _all_lock:
            if conn in _all:
                _all.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def close_all() -> None:
    """Close every thread's connection (at shutdown): the last close checkpoints the WAL."""
    global _generation
    with _all_lock:
        conns, _all[:] = list(_all), []
        _generation += 1
    for conn in conns:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
