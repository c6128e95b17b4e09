#!/usr/bin/env python3
"""Tune and check the app's SQLite database: WAL, synchronous, ANALYZE, optimize, VACUUM.

Run it the way the backup guide shows, from the backend folder:

    cd backend && python3 ../scripts/sqlite-optimization.py [--db PATH] [--vacuum]

It needs nothing but the Python 3 standard library (psutil is used when installed), so the
system ``python3`` can run it on a server where the app's virtualenv is broken. It refuses to
touch a damaged database, refuses ``--vacuum`` while another process holds the database open
(VACUUM rewrites the whole file under an exclusive lock, stalling the app's writers), and exits
non-zero with one line on stderr on any failure. Exit codes follow aica-backup's table:
3 usage, 5 database missing/corrupt/failing its check, 9 database in use.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

PROG = "sqlite-optimization"
DEFAULT_DB = "aica_sys.db"
EXIT_USAGE, EXIT_DATABASE, EXIT_BUSY = 3, 5, 9
BUSY_TIMEOUT_MS = 10_000


class Failure(Exception):
    """A one-line error and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_DATABASE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def side_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(raw.decode(errors="replace").replace("\0", " ").split()) or "?"


def find_holders(paths: list[Path]) -> list[tuple[int, str]] | None:
    """(pid, command line) of other processes holding ``paths`` open; None if we cannot tell.

    A small copy of aica_backup.holders: psutil when installed, else the /proc/<pid>/fd links.
    """
    targets = {ident for ident in (_identity(str(p)) for p in paths) if ident}
    if not targets:
        return []
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        import psutil
    except ImportError:
        if not Path("/proc/self/fd").is_dir():
            return None  # no psutil and no /proc (macOS without psutil): cannot check
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                fds = list(os.scandir(f"/proc/{entry.name}/fd"))
            except OSError:
                continue  # gone, or another user's process
            if any(_identity(fd.path) in targets for fd in fds):
                found[int(entry.name)] = _proc_cmdline(int(entry.name))
        return sorted(found.items())
    names = {os.path.realpath(p) for p in paths}
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            for f in proc.open_files():
                ident = _identity(f"/proc/{proc.pid}/fd/{f.fd}") if f.fd >= 0 else None
                if ident in targets or os.path.realpath(f.path) in names:
                    found[proc.pid] = " ".join(" ".join(proc.cmdline()).split()) or proc.name()
                    break
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(found.items())


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def sizes(db: Path) -> str:
    wal = db.with_name(db.name + "-wal")
    db_size = db.stat().st_size
    wal_size = wal.stat().st_size if wal.exists() else 0
    return f"database {human(db_size)}, wal {human(wal_size)} (total {human(db_size + wal_size)})"


def check(conn: sqlite3.Connection, pragma: str) -> str:
    """"ok", or the first problems found, on one line."""
    rows = conn.execute(f"PRAGMA {pragma}(5)").fetchall()
    lines = [line.strip() for r in rows for line in str(r[0]).splitlines() if line.strip()]
    text = "; ".join(lines) or "no result"
    return text if len(text) <= 300 else text[:297] + "..."


def connect(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        hint = " (run it from backend/, or pass --db PATH)" if db.name == DEFAULT_DB else ""
        raise Failure(f"database not found: {db}{hint}")
    # mode=rw: never create an empty database where the real one is missing.
    uri = "file:" + str(db.resolve()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    conn = sqlite3.connect(uri + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.isolation_level = None  # autocommit: VACUUM and journal_mode cannot run in a transaction
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def describe(holders: list[tuple[int, str]]) -> str:
    return ", ".join(f"pid {pid} ({cmd})" for pid, cmd in holders)


def say(line: str) -> None:
    print(line, flush=True)


def optimize(db: Path, vacuum: bool) -> None:
    """Run every step on ``db``, printing one line per step; raise Failure on any problem."""
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(db)
        say(f"database: {db.resolve()}")
        say(f"before:   {sizes(db)}")
        # Never write statistics or rewrite pages in a damaged file: that can spread the damage.
        quick = check(conn, "quick_check")
        if quick != "ok":
            raise Failure(f"database is damaged (quick_check: {quick}); restore a backup instead")
        holders = find_holders(side_files(db))
        if vacuum and holders is None:
            raise Failure("cannot tell whether other processes hold the database "
                          "(install psutil); stop the backend first", EXIT_BUSY)
        if vacuum and holders:
            # Checked before any change, so a refused run leaves the database as it was.
            raise Failure(f"refusing VACUUM: the database is in use by {describe(holders)}; "
                          "stop the backend first", EXIT_BUSY)
        if holders:
            say(f"in use by: {describe(holders)}")
        before = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        after = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if after.lower() != "wal":
            raise Failure(f"could not switch to WAL mode (journal_mode is still {after})")
        say(f"journal_mode: {before} -> {after}")
        # synchronous is a per-connection setting: NORMAL is durable enough under WAL (a power
        # cut may lose the last commits, never corrupt) and much faster; the app sets it too.
        conn.execute("PRAGMA synchronous = NORMAL")
        say("synchronous: NORMAL (per connection: the backend sets it when it connects)")
        conn.execute("ANALYZE")
        say("ANALYZE: done")
        conn.execute("PRAGMA optimize")
        say("PRAGMA optimize: done")
        if vacuum:
            conn.execute("VACUUM")
            say("VACUUM: done")
        else:
            say("VACUUM: skipped (pass --vacuum, with the backend stopped, to compact the file)")
        # Fold the WAL back into the database so the sizes below are what is really on disk.
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            say("wal_checkpoint: partial (a reader is active; the app checkpoints later)")
        result = check(conn, "integrity_check")
        say(f"integrity_check: {result}")
        if result != "ok":
            raise Failure(f"integrity_check failed: {result}")
        say(f"after:    {sizes(db)}")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            holders = find_holders(side_files(db)) or []
            who = f" (held by {describe(holders)})" if holders else ""
            raise Failure(f"database is locked{who}: {exc}", EXIT_BUSY) from exc
        raise Failure(f"cannot use database {db}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise Failure(f"database {db} is not usable: {exc}") from exc
    finally:
        if conn is not None:
            conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, default=Path(DEFAULT_DB),
                        help=f"database file (default: {DEFAULT_DB} in the current folder)")
    parser.add_argument("--vacuum", action="store_true",
                        help="also VACUUM (compact) the file; refused while the database is in use")
    args = parser.parse_args(argv)
    try:
        optimize(args.db, args.vacuum)
    except (Failure, OSError) as exc:
        # One line, whatever the message holds: the guide's operator reads it in a terminal.
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.code if isinstance(exc, Failure) else EXIT_DATABASE
    return 0


if __name__ == "__main__":
    sys.exit(main())
