"""What a killed run leaves behind, and its removal by the next command.

A ``kill -9`` of a restore before its journal exists leaves its staging folder
``.aica-restore/<stamp>-<pid>/`` (a full unpacked copy of the app, secrets included); a kill
while the journal is written leaves a ``.tmp-journal.json.<pid>``; a kill during the safety
backup leaves its temp files in the backups folder, and the empty ``-wal`` and ``-shm`` that
opening a WAL database creates beside the live database. Every command removes them first
(:func:`clean`), as it finishes an interrupted journal.

What belongs to a process still running is never touched. A restore holds an ``flock`` on its
staging folder for as long as it lives (:func:`staging_folder`); the kernel drops it when the
process dies, even by ``kill -9``, so a pid reused by another process cannot keep a dead
restore's folder alive, nor can a dead restore's folder be mistaken for a live one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .catalog import Catalog
from .errors import AicaBackupError
from .fsutil import (
    PRIVATE_DIR,
    TMP_PREFIX,
    atomic_write_bytes,
    discard_tree,
    ensure_private_dir,
    fsync_dir,
    remove_dead_temp_files,
)
from .journal import JOURNAL_NAME, Journal
from .layout import Layout
from .lock import idle_lock

# The scratch folder of a verify (verify.verify_archive): the archive's database unpacked.
_VERIFY_SCRATCH = re.compile(re.escape(TMP_PREFIX) + r"verify-(?P<pid>\d+)")
# <UTC stamp>-<pid>: the name restore gives its staging folder.
_STAGING = re.compile(r"(?P<stamp>\d{8}T\d{6})-(?P<pid>\d+)")
_STAMP = "%Y%m%dT%H%M%S"


def staging_name(pid: int | None = None) -> str:
    """A new staging folder's name: when it was made and by which process."""
    return f"{datetime.now(UTC).strftime(_STAMP)}-{pid or os.getpid()}"


@contextlib.contextmanager
def staging_folder(path: Path) -> Iterator[Path]:
    """Create the staging folder ``path`` and hold it for this process until the block ends.

    The flock is on the folder itself: no file to leave behind, and the kernel releases it
    when the process ends however it ends. The caller removes the folder inside the block.
    """
    path.mkdir(mode=PRIVATE_DIR)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # just made: only a cleaner deciding can delay this
        yield path
    finally:
        os.close(fd)


# Where the app remembers the folders that a ``restore --target`` is working in.
_TARGETS = "target-restores"


@contextlib.contextmanager
def restoring_into(meta_dir: Path, target: Path) -> Iterator[None]:
    """Record in the app's ``meta_dir``, while the block runs, that a restore works in
    ``target`` (``--target``): a kill -9 leaves its staging or journal there, out of sight of
    every later command of the app but for this record (:func:`interrupted_targets`)."""
    record = ensure_private_dir(meta_dir / _TARGETS) / hashlib.sha256(bytes(target)).hexdigest()
    atomic_write_bytes(record, bytes(target))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            record.unlink()


def interrupted_targets(meta_dir: Path) -> list[tuple[Path, Path]]:
    """(record, target folder) of each ``--target`` restore that did not end (killed, or
    running now): the caller finishes it under the lock, then drops the record."""
    try:
        records = sorted((meta_dir / _TARGETS).iterdir())
    except OSError:  # none, or a folder this user may not read (doctor names it)
        return []
    found: list[tuple[Path, Path]] = []
    for record in records:
        if record.name.startswith(TMP_PREFIX):
            continue  # a record being written: the temp-file cleanup's
        with contextlib.suppress(OSError):
            found.append((record, Path(os.fsdecode(record.read_bytes()))))
    return found


@dataclass(frozen=True)
class Leftover:
    path: Path
    kind: str  # "staging" or "temp file"
    owner: int | None  # the pid of the live process it belongs to, None when it is dead


def _alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` runs, and (given ``since``) is the one that ran at that time."""
    import psutil  # only here: asked only when a leftover is found

    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:
        return True  # there, but not ours to inspect: assume it lives
    # A process started after the folder was named (1 s stamp) reuses a dead owner's pid.
    return since is None or started <= since + 1


def _staging_held(path: Path) -> bool | None:
    """True if a live process holds the staging folder's flock; None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:
        return False  # not a folder of ours to lock (a link, unreadable): never live
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def scan(restore_dir: Path) -> list[Leftover]:
    """The staging folders and temp files in ``restore_dir``, each with its live owner if any.

    A folder listed by an unfinished journal is the journal's (its parked old version) and is
    not a leftover; with a journal that cannot be read, nothing is.
    """
    try:
        entries = sorted(restore_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    journal = restore_dir / JOURNAL_NAME
    protected: set[str] = set()
    if journal.exists():
        try:
            protected = set(Journal.load(journal).cleanup)
        except (OSError, ValueError, TypeError, KeyError):
            return []
    found: list[Leftover] = []
    for path in entries:
        if path.name.startswith(TMP_PREFIX) and not _real_dir(path):
            suffix = path.name.rpartition(".")[2]  # atomic_file names its temp file NAME.<pid>
            owner = int(suffix) if suffix.isdigit() and _alive(int(suffix)) else None
            found.append(Leftover(path, "temp file", owner))
            continue
        m = _STAGING.fullmatch(path.name)
        if m is None or str(path) in protected:
            continue
        if not _real_dir(path):  # a link or a file: never made by a restore, unlinked alone
            found.append(Leftover(path, "temp file", None))
            continue
        held = _staging_held(path)
        if held is None:
            continue
        pid = int(m["pid"])
        since = datetime.strptime(m["stamp"], _STAMP).replace(tzinfo=UTC).timestamp()
        # Unlocked but its maker alive: the instant between its mkdir and its flock.
        live = held or _alive(pid, since)
        found.append(Leftover(path, "staging", pid if live else None))
    return found


def remove_dead(restore_dir: Path) -> tuple[list[Leftover], list[Leftover]]:
    """Remove every leftover of a dead process; return (removed, still there)."""
    removed: list[Leftover] = []
    kept: list[Leftover] = []
    for item in scan(restore_dir):
        if item.owner is not None:
            kept.append(item)
            continue
        if item.kind == "staging":
            discard_tree(item.path)
        else:
            with contextlib.suppress(FileNotFoundError, OSError):
                item.path.unlink()
        (kept if os.path.lexists(item.path) else removed).append(item)
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(restore_dir)
    with contextlib.suppress(OSError):
        restore_dir.rmdir()  # only if empty
    return removed, kept


def is_wal_file(db: Path) -> bool:
    """Whether the database file's header says WAL mode (bytes 18-19 are 2)."""
    try:
        with open(db, "rb") as fh:
            return fh.read(20)[18:20] == b"\x02\x02"
    except OSError:
        return False


def release_empty_wal(db: Path) -> bool:
    """Let SQLite remove an empty ``-wal`` and its ``-shm`` that a killed reader left.

    Opening a WAL database creates both files, and the last connection to close removes them;
    a reader killed in between (a snapshot) leaves them. With no process holding the database
    and nothing in the ``-wal``, one connection opened and closed removes them the way SQLite
    always does: it deletes them only if it is the last connection (its own lock protocol), so
    a running app's files are never touched. A ``-wal`` with content is never handled here:
    ``doctor`` reports it. Returns True when the files were there and are gone.
    """
    from .appctl import database_files
    from .holders import find_holders
    from .snapshot import connect_existing

    wal = db.with_name(db.name + "-wal")
    shm = db.with_name(db.name + "-shm")
    try:
        if wal.stat().st_size != 0:
            return False
    except FileNotFoundError:
        if not shm.exists():
            return False
    if not is_wal_file(db) or find_holders(database_files(db)):
        return False
    try:
        with connect_existing(db) as conn:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except (AicaBackupError, sqlite3.Error):
        return False
    return not wal.exists() and not shm.exists()


def _backup_folders(layout: Layout) -> tuple[Path, ...]:
    return (layout.backups_dir, layout.meta_dir, Catalog(layout.backups_dir).index_dir)


def _backup_temp_files(layout: Layout) -> bool:
    for folder in _backup_folders(layout):
        with contextlib.suppress(OSError):
            if any(p.name.startswith(TMP_PREFIX) and p.is_file() for p in folder.iterdir()):
                return True
    return False


def _remove_dead_verify_folders(meta_dir: Path) -> list[str]:
    """Remove the scratch folders of verify runs that died (kill -9): each holds a copy of
    an archive's database. A folder whose pid runs (or was reused) is left alone."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(meta_dir))
    except OSError:
        return removed
    for e in entries:
        m = _VERIFY_SCRATCH.fullmatch(e.name)
        if m is None or not e.is_dir(follow_symlinks=False) or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):  # not this user's to remove: kept
            discard_tree(Path(e.path))
        if not os.path.lexists(e.path):
            removed.append(e.path)
    return removed


@dataclass
class Cleaned:
    """What :func:`clean` removed, and what it found but had to leave."""

    removed: list[str]
    kept: list[Leftover]


def clean(layout: Layout) -> Cleaned:
    """Remove what interrupted runs left in ``layout``: temp files of dead processes in the
    backups folder (an interrupted offsite copy's, a verify's scratch folder), the temp files
    of a killed backup or safety backup (while no one holds the lock), and, where a restore
    was interrupted (``.aica-restore/`` exists), its staging and temp files and an empty
    ``-wal``/``-shm`` beside the live database. Call after any journal is recovered.
    """
    removed: list[str] = []
    for folder in _backup_folders(layout):  # e.g. the encrypted copy of a killed push
        removed += [str(folder / name) for name in remove_dead_temp_files(folder)]
    removed += _remove_dead_verify_folders(layout.meta_dir)
    if _backup_temp_files(layout):  # a killed backup's archive and snapshot, for instance
        with idle_lock(layout.meta_dir) as idle:
            if idle:  # else a backup or restore runs: its temp files are its own
                removed += Catalog(layout.backups_dir).clean_leftovers()
    if not layout.restore_dir.exists():  # the one cost while no restore was interrupted
        return Cleaned(removed, [])
    removed_items, kept = remove_dead(layout.restore_dir)
    removed += [str(i.path) for i in removed_items]
    if release_empty_wal(layout.database_path):
        removed.append(f"{layout.database_path.name}-wal")
    return Cleaned(removed, kept)
