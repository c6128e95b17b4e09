"""Consistent SQLite snapshots through the online backup API, and integrity checks.

The snapshot is copied in a single ``backup`` step, so it holds one read transaction for the
whole copy: in WAL mode the app's writers keep committing meanwhile, and the copy is one point
in time (it never restarts because a writer changed a page, as a stepped backup would).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from . import interrupt
from .codec import cpu_threads
from .errors import DatabaseError
from .fsutil import storage_error
from .journal import crashpoint

CheckMode = Literal["integrity", "quick", "none"]
BUSY_TIMEOUT_MS = 10_000
# SQLite page cache shared out among the workers of a full check. integrity_check seeks every
# index once per row: with the default 2 MB cache each seek re-reads its pages through the OS;
# 32 MB in all (a fixed budget, so memory stays flat whatever the core count or database
# size) took the check from 2.45 to 2.07 CPU seconds on a 400 MB database.
CHECK_CACHE_KIB = 32 * 1024
# SQLite asks interrupt.STOP every this many virtual-machine steps (a few ms of a check)
PROGRESS_STEPS = 100_000


@dataclass(frozen=True)
class DatabaseInfo:
    """What the manifest records about a database snapshot."""

    sqlite_version: str
    page_size: int
    page_count: int
    user_version: int
    journal_mode: str  # of the source database
    integrity: str  # "ok", the first problems found, or "skipped"
    check: str  # which check ran: integrity_check, quick_check or none
    check_seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _uri(path: Path, mode: str) -> str:
    # Path characters like '?' or '#' must not be read as URI syntax.
    quoted = str(path.resolve()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode={mode}"


@contextlib.contextmanager
def connect_existing(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """Open an existing database (never create one) with a busy timeout."""
    if not path.exists():
        raise DatabaseError(f"database not found: {path}")
    try:
        conn = sqlite3.connect(_uri(path, "ro" if readonly else "rw"), uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        yield conn
    finally:
        conn.close()


# What reading a damaged or hostile database raises: SQLite's errors, and Python's failure to
# decode one whose message quotes text that is not UTF-8 (a table name in a forged schema).
DB_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@contextlib.contextmanager
def open_snapshot(path: Path, cache_kib: int = 0) -> Iterator[sqlite3.Connection]:
    """Open a snapshot file read-only and immutable: no -wal/-shm is created beside it.

    ``cache_kib``: SQLite's page cache for this connection (0: SQLite's default, 2 MB).
    """
    conn = sqlite3.connect(_uri(path, "ro") + "&immutable=1", uri=True)
    # The file may come from a hostile or damaged archive: text that is not UTF-8 (a table
    # name in sqlite_schema, a check's message quoting it) must read as damage, not raise.
    conn.text_factory = _lenient_text
    # A check of a large database runs for seconds in a worker thread: once Ctrl-C or SIGTERM
    # stops the command, SQLite ends it at its next progress call, and nobody waits for it.
    conn.set_progress_handler(interrupt.STOP.is_set, PROGRESS_STEPS)
    try:
        if cache_kib:
            conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        yield conn
    finally:
        conn.close()


def take_snapshot(source: Path, dest: Path) -> str:
    """Copy ``source`` into the new file ``dest`` in one backup step; return its journal mode.

    Raises DatabaseError for a missing, unreadable or non-SQLite source.
    """
    with connect_existing(source) as src:
        try:
            journal_mode = str(src.execute("PRAGMA journal_mode").fetchone()[0])
            crashpoint("snapshot-open")
            dst = sqlite3.connect(dest)
            try:
                # The snapshot is a throw-away temp file: no journal, no fsync while copying.
                dst.execute("PRAGMA journal_mode = OFF")
                dst.execute("PRAGMA synchronous = OFF")
                src.backup(dst, pages=-1)
            finally:
                dst.close()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                # The snapshot's folder is full, not the database broken: report it as the
                # storage problem it is (exit 7 and the disk-full hint), not exit 5.
                full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise storage_error(f"cannot write the database snapshot {dest}", full) from exc
            raise DatabaseError(f"cannot snapshot database {source}: {exc}") from exc
    return journal_mode


def check_database(conn: sqlite3.Connection, mode: CheckMode) -> tuple[str, str, float]:
    """Run the chosen check; return (result, check name, seconds). Result is "ok" when clean."""
    if mode == "none":
        return "skipped", "none", 0.0
    pragma = "integrity_check" if mode == "integrity" else "quick_check"
    start = time.perf_counter()
    try:
        rows = conn.execute(f"PRAGMA {pragma}(20)").fetchall()
    except DB_ERRORS as exc:
        interrupt.check()  # stopped, not failed: no verdict on the database
        return f"error: {exc}", pragma, time.perf_counter() - start
    result = "; ".join(_one_line(r[0]) for r in rows) or "no result"
    return result, pragma, time.perf_counter() - start


def check_file(path: Path, mode: CheckMode, workers: int = 0) -> tuple[str, str, float]:
    """:func:`check_database` on a file at rest, the full check spread over ``workers`` threads.

    ``PRAGMA integrity_check`` is one thread's work, and on a large database the slowest step
    of a verify or a restore. Its parts can run side by side (SQLite releases the GIL): one
    ``quick_check`` of the whole file (every b-tree's structure, the freelist, every page used
    exactly once) plus ``integrity_check(TABLE)`` for each table (its rows against its
    indexes, and its constraints) together check what the single pragma checks.
    """
    workers = workers or min(4, cpu_threads())
    if mode != "integrity" or workers < 2:
        with open_snapshot(path) as conn:
            return check_database(conn, mode)
    start = time.perf_counter()
    with open_snapshot(path) as conn:
        try:
            tables = [
                str(r[0])
                for r in conn.execute(
                    # Real b-tree tables only: a virtual table's module code (FTS, R-tree)
                    # over shadow tables from an unknown archive is never run; its shadow
                    # tables are ordinary tables and are checked as such.
                    "SELECT name FROM sqlite_schema WHERE type = 'table' AND rootpage > 0 "
                    "ORDER BY rootpage"
                )
            ]
        except DB_ERRORS as exc:
            return f"error: {exc}", "integrity_check", time.perf_counter() - start
    # Largest tables first (rowids are a cheap proxy for size), then the whole-file check.
    tasks = ["PRAGMA quick_check(20)"] + [
        f"PRAGMA integrity_check({_quote(t)})" for t in _by_size(path, tables)
    ]
    pending = list(reversed(tasks))
    lock = threading.Lock()
    problems: list[str] = []

    def work() -> None:
        try:
            with open_snapshot(path, CHECK_CACHE_KIB // workers) as conn:
                while True:
                    with lock:
                        if not pending:
                            return
                        sql = pending.pop()
                    try:
                        rows = [_one_line(r[0]) for r in conn.execute(sql).fetchall()]
                    except DB_ERRORS as exc:
                        if interrupt.STOP.is_set():
                            return  # the caller raises; no traceback from this thread
                        rows = [f"error: {exc}"]
                    with lock:
                        problems.extend(r for r in rows if r != "ok")
        except Exception as exc:  # a worker that dies must not leave its share unchecked
            with lock:
                problems.append(f"error: check did not complete: {exc}")

    threads = [threading.Thread(target=work, name=f"check-{i}") for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    interrupt.check()
    result = "; ".join(dict.fromkeys(problems[:20])) if problems else "ok"
    return result, "integrity_check", time.perf_counter() - start


def _one_line(text: object) -> str:
    """SQLite's reports span lines ("*** in database main ***" then the page): make one."""
    return " ".join(str(text).split())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _by_size(path: Path, tables: list[str]) -> list[str]:
    """Tables, largest first by their highest rowid (0 for WITHOUT ROWID tables)."""
    sizes: dict[str, int] = {}
    with open_snapshot(path) as conn:
        for t in tables:
            try:
                sql = f"SELECT max(rowid) FROM {_quote(t)}"  # noqa: S608 - a quoted identifier
                row = conn.execute(sql).fetchone()
                sizes[t] = int(row[0] or 0)
            except DB_ERRORS:
                sizes[t] = 0  # WITHOUT ROWID, or damaged: its own check will tell
    return sorted(tables, key=lambda t: -sizes[t])


def inspect_snapshot(path: Path, journal_mode: str, mode: CheckMode) -> DatabaseInfo:
    """Check a snapshot file and collect the facts the manifest records."""
    with open_snapshot(path) as conn:
        try:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
            user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except DB_ERRORS as exc:
            interrupt.check()
            raise DatabaseError(f"snapshot is not a readable database: {exc}") from exc
    result, check, seconds = check_file(path, mode)
    return DatabaseInfo(
        sqlite_version=sqlite3.sqlite_version,
        page_size=page_size,
        page_count=page_count,
        user_version=user_version,
        journal_mode=journal_mode,
        integrity=result,
        check=check,
        check_seconds=round(seconds, 3),
    )


def integrity_of(path: Path, mode: CheckMode = "integrity") -> str:
    """Integrity result of a database file at rest (staged restore, live result, verify)."""
    try:
        return check_file(path, mode)[0]
    except DB_ERRORS as exc:
        interrupt.check()
        return f"error: {exc}"
