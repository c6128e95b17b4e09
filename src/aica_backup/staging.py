"""Unpack an archive into a private staging folder and prove it sound before anyone uses it.

Used by restore (everything is staged) and verify (only the database is written, to a scratch
folder). Files are created with ``O_EXCL | O_NOFOLLOW`` under a folder this process made, so
nothing can be written outside it; the reader (:mod:`aica_backup.archive.reader`) has already
refused unsafe names and member types. The database is checked in a thread while the rest of
the archive is still streaming in, and ahead of it: the stream's thread runs at a lower CPU
priority.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from .archive import ScanResult, compare_with_manifest, open_tar_stream
from .archive.reader import Entry, scan_archive
from .codec import format_of
from .errors import ArchiveError, StorageError
from .fsutil import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    BackgroundWriteback,
    DirectWriter,
    discard_tree,
    free_bytes,
    storage_error,
)
from .layout import Component
from .manifest import MANIFEST_NAME, Manifest
from .snapshot import CheckMode, integrity_of

# Space left free on the staging file system, whatever is unpacked there.
RESERVE_BYTES = 64 * 1024 * 1024
_CHECK_NAMES = {"integrity": "integrity_check", "quick": "quick_check", "none": "none"}
# How far the stream's thread steps back (nice value) behind the database check: where the
# two meet on one core, the stream gets a third of what the check gets.
STEP_BACK = 5
_REUSED = "quick_check; integrity_check passed on the same bytes by verify"


@dataclass
class Staged:
    """An archive unpacked and checked: ``root`` holds members at their archive paths."""

    root: Path
    scan: ScanResult
    problems: list[tuple[str, str]]  # (member, why) where content and manifest disagree
    db_integrity: str | None  # None when the archive holds no database
    db_check: str = ""  # how the database was checked, in words

    @property
    def manifest(self) -> Manifest:
        return self.scan.manifest

    @property
    def ok(self) -> bool:
        return not self.problems and self.db_integrity in (None, "ok", "skipped")

    def first_problem(self) -> tuple[str, str]:
        if self.problems:
            return self.problems[0]
        db = self.manifest.components[Component.DATABASE].path
        return db, f"database failed its integrity check: {self.db_integrity}"

    def raise_if_bad(self) -> None:
        if not self.ok:
            member, why = self.first_problem()
            more = len(self.problems) - 1
            extra = f" (and {more} more problems)" if more > 0 else ""
            raise ArchiveError(f"{member}: {why}{extra}", member=member)


def _mkdirs(folders: dict[str, Path], rel: str) -> Path:
    """Create ``rel`` folder by folder below the nearest one in ``folders`` (relative path →
    folder made or found by this call), refusing anything that is not a plain folder.

    Starting from the nearest known folder keeps a deep tree linear: from the top, each of
    985 nested folders re-made all of its parents (0.5 M mkdir calls on long paths, 100 s).
    """
    missing: list[str] = []
    top = rel
    while top not in folders:
        top, _, name = top.rpartition("/")
        missing.append(name)
    path = folders[top]
    for name in reversed(missing):
        path = path / name
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise ArchiveError(f"member {rel!r} conflicts with a file", member=rel) from None
        top = f"{top}/{name}" if top else name
        folders[top] = path
    return path


def stage(
    archive: Path,
    dest: Path,
    *,
    identities: Sequence[Any] | None = None,
    check: CheckMode = "integrity",
    write: Callable[[Entry, bool], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    writeback: bool = False,
    checked_sha256: str = "",
    drop_database: bool = False,
    purpose: str = "restore",
    expect_bytes: int = 0,
) -> Staged:
    """Unpack ``archive`` into the new folder ``dest`` and check it.

    ``write(entry, is_first_file)`` chooses which files are written (default: all); the others
    are only hashed. The first file of an archive is its database by construction, so its
    check starts while the rest streams. ``writeback``: for staging that will be kept, get
    each file to disk as soon as it is complete, so :func:`sync_to_disk` has little left to
    wait for: files from 256 KiB up (but the database, which is checked next) are written
    around the page cache by a :class:`DirectWriter`, the rest start their writeback when
    closed. ``dest`` must not exist; the caller removes it.

    ``checked_sha256``: the SHA-256 of a database that already passed ``integrity_check``
    (recorded by verify). ``integrity_check`` is a function of the file's bytes: when the
    database unpacked has exactly that SHA-256, the full check is not run again, only a
    ``quick_check`` of the file where it now lies.

    ``drop_database``: remove the database file as soon as its check is done, while the rest
    of the archive still streams in (verify keeps nothing it unpacks).

    Space: the bytes written (declared sizes), plus :data:`RESERVE_BYTES` left free, must fit
    the file system's free space, checked first for ``expect_bytes`` (what the catalog says
    will be written, see :func:`expected_bytes`) and again before each file is opened. When
    they do not, or the disk fills meanwhile, StorageError says "not enough free space to
    ``purpose`` ARCHIVE: N needed, M free", never that the archive is at fault.
    """
    dest.mkdir(mode=PRIVATE_DIR, parents=False)
    # Only what is written counts against the space (verify writes only the database): a
    # disk too full for it is the machine's fault, never the archive's.
    space = _Space(archive, dest, purpose)
    space.need(expect_bytes)
    first: list[str] = []
    folders: dict[str, Path] = {"": dest}  # made (or found) under dest by this call

    def folder(rel: str) -> Path:
        path = folders.get(rel)
        return path if path is not None else _mkdirs(folders, rel)

    def open_sink(entry: Entry) -> IO[bytes] | None:
        is_first = not first
        if is_first:
            first.append(entry.path)
        if write is not None and not write(entry, is_first):
            return None
        space.write(entry.size)
        parent, _, name = entry.path.rpartition("/")
        try:
            fd = os.open(
                folder(parent) / name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                PRIVATE_FILE,
            )
        except FileExistsError:
            raise ArchiveError(f"member {entry.path!r} conflicts", member=entry.path) from None
        if direct is not None and not is_first:  # the database stays cached: it is read next
            try:
                sink = direct.sink(fd, entry.size)
            except BaseException:
                os.close(fd)
                raise
            if sink is not None:
                return sink
        return os.fdopen(fd, "wb", buffering=0)

    def on_dir(entry: Entry) -> None:
        if write is None:
            folder(entry.path)

    how = _CHECK_NAMES[check]
    checks: dict[str, tuple[concurrent.futures.Future[str], str]] = {}  # path -> (result, how)
    direct: DirectWriter | None = None
    with (
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stage-check") as pool,
        BackgroundWriteback() as flusher,
    ):

        def before_close(entry: Entry, sink: IO[bytes]) -> None:
            if writeback and isinstance(sink, io.FileIO):  # direct sinks are written already
                flusher.file_done(sink.fileno(), entry.size)

        def check_first(path: Path, mode: CheckMode) -> str:
            try:
                return integrity_of(path, mode)
            finally:
                if drop_database:
                    with contextlib.suppress(OSError):  # then the caller's cleanup removes it
                        path.unlink()

        def on_file_done(entry: Entry, sha256: str) -> None:
            if entry.path == first[0] and (dest / entry.path).is_file():
                if check == "integrity" and checked_sha256 and sha256 == checked_sha256:
                    future = pool.submit(check_first, dest / entry.path, "quick")
                    checks[entry.path] = (future, _REUSED)
                else:
                    checks[entry.path] = (pool.submit(check_first, dest / entry.path, check), how)

        # Set when Ctrl-C reaches the caller: the stream stops at its next read, or its next
        # file's data if the read before holds several files.
        interrupted = threading.Event()

        def on_bytes(n: int) -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt
            if progress is not None:
                progress(n)

        def stream_in() -> ScanResult:
            nonlocal direct
            _step_back()
            with contextlib.ExitStack() as stack:
                if writeback:
                    direct = stack.enter_context(DirectWriter())
                stream = stack.enter_context(open_tar_stream(archive, identities))
                return scan_archive(
                    cast(IO[bytes], _Interruptible(stream, interrupted)),
                    open_sink=open_sink,
                    on_dir=on_dir,
                    on_file_done=on_file_done,
                    before_close=before_close,
                    progress=on_bytes,
                )

        # The database check is the long pole: the rest of the archive need only be read by
        # the time it ends. So the archive is read in a thread that steps back (a lower CPU
        # priority, which the threads it starts inherit: the inflater, the writers), and the
        # check runs in threads started from this one (the first right here) at its priority.
        pool.submit(int).result()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stage-stream") as reader:
            streaming = reader.submit(stream_in)
            try:
                scan = streaming.result()
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise space.full() from exc
                raise storage_error(f"cannot unpack into {dest}", exc) from exc
            except BaseException:  # Ctrl-C while the stream runs: it stops at its next read
                interrupted.set()
                _wait_out(streaming)
                raise
        problems = compare_with_manifest(scan)
        compression = format_of(archive.name)[0]
        if scan.manifest.compression != compression:
            problems.append(
                (MANIFEST_NAME, f"records {scan.manifest.compression} for a {compression} archive")
            )
        db_info = scan.manifest.components.get(Component.DATABASE)
        db_integrity: str | None = None
        if db_info is not None and db_info.present:
            started = checks.get(db_info.path)
            if started is not None:
                db_integrity, how = started[0].result(), started[1]
            elif db_info.path not in scan.files or problems:
                pass  # refused already (``problems`` says why): no second pass to make
            elif (dest / db_info.path).is_file():
                db_integrity = integrity_of(dest / db_info.path, check)
            else:  # not first in the archive: written by another tool's order; check it now
                db_integrity = _check_member(
                    archive, identities, db_info.path, dest, check, purpose
                )
    return Staged(dest, scan, problems, db_integrity, how if db_integrity is not None else "")


class _Space:
    """The staging file system's free space against the bytes this call writes there."""

    def __init__(self, archive: Path, dest: Path, purpose: str) -> None:
        self.archive = archive
        self.dest = dest
        self.purpose = purpose
        self.free = free_bytes(dest)
        self.written = 0  # declared sizes of the files opened so far

    def need(self, more: int) -> None:
        if self.written + more + RESERVE_BYTES > self.free:
            raise self.full(more)

    def write(self, size: int) -> None:
        self.need(size)
        self.written += size

    def full(self, more: int = 0) -> StorageError:
        """The error for ``more`` bytes that do not fit (0: the disk filled meanwhile)."""
        needed = self.written + more + RESERVE_BYTES
        free = self.free - self.written
        if not more:  # the file system said so: what it has now
            with contextlib.suppress(OSError):
                free = free_bytes(self.dest)
        return StorageError(
            f"not enough free space to {self.purpose} {self.archive.name}: "
            f"{_mb(needed)} needed, {_mb(max(0, free) + self.written)} free",
            hint=f"the disk is full: free space there ({RESERVE_BYTES >> 20} MiB are always "
            "kept free), or point the backups folder elsewhere",
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def expected_bytes(archive: Path, *, database_only: bool = False) -> int:
    """What unpacking ``archive`` writes, as its catalog entry records it (0 if unknown).

    The database's size is its page size times its page count; the uploads' their total.
    Only a first estimate, for refusing early: staging checks every file's declared size.
    """
    from .catalog import Catalog

    data = Catalog(archive.parent).read_index(archive.name) or {}
    summary = data.get("summary")
    if not isinstance(summary, dict):
        return 0
    total = 0
    db = summary.get("database")
    if isinstance(db, dict) and db.get("present"):
        page_size, page_count = db.get("page_size"), db.get("page_count")
        if isinstance(page_size, int) and isinstance(page_count, int):
            total += max(0, page_size * page_count)
    uploads = summary.get("uploads")
    if not database_only and isinstance(uploads, dict) and uploads.get("present"):
        size = uploads.get("total_bytes")
        total += max(0, size) if isinstance(size, int) else 0
    return total


def _step_back() -> None:
    """Lower the calling thread's CPU priority by :data:`STEP_BACK`, for good (it cannot be
    raised again without privileges). Linux only: there nice is per thread, and the threads
    it starts inherit it; elsewhere it would lower the whole process."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # not allowed here: it only costs speed
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + STEP_BACK))


class _Interruptible:
    """The tar stream, whose reads stop once ``interrupted`` is set (Ctrl-C reached the caller)."""

    def __init__(self, inner: IO[bytes], interrupted: threading.Event) -> None:
        self._inner = inner
        self._interrupted = interrupted

    def read(self, size: int = -1) -> bytes:
        if self._interrupted.is_set():
            raise KeyboardInterrupt
        return self._inner.read(size)


def _wait_out(future: concurrent.futures.Future[Any]) -> None:
    """Wait for a stream told to stop, through more Ctrl-Cs: its caller removes the folder
    it writes into next."""
    while True:
        try:
            concurrent.futures.wait([future])
            return
        except KeyboardInterrupt:
            continue


def _check_member(
    archive: Path,
    identities: Sequence[Any] | None,
    member: str,
    dest: Path,
    check: CheckMode,
    purpose: str,
) -> str:
    """Second pass for an archive whose database is not its first member (it is written
    there, so this pass never needs another)."""
    scratch = dest / ".db-check"
    stage(
        archive,
        scratch,
        identities=identities,
        check="none",
        write=lambda e, _first: e.path == member,
        purpose=purpose,
    )
    try:
        return integrity_of(scratch / member, check)
    finally:
        discard_tree(scratch)


def apply_metadata(staged: Staged, paths: Sequence[str], private: Sequence[str] = ()) -> None:
    """Give staged members their recorded modes and mtimes (folders last, deepest first).

    Modes lose setuid/setgid/sticky bits; members in ``private`` (the secrets file) get 0600.
    """
    members = [m for m in staged.manifest.members if any(_within(m.path, p) for p in paths)]
    for m in members:
        target = staged.root / m.path
        if m.type != "file" or not target.exists():
            continue
        mode = 0o600 if m.path in private else m.mode & 0o777
        os.chmod(target, mode)
        os.utime(target, (m.mtime, m.mtime))
    for m in sorted((m for m in members if m.type == "dir"), key=lambda m: -m.path.count("/")):
        target = staged.root / m.path
        if target.is_dir():
            os.chmod(target, (m.mode & 0o777) | 0o700)
            os.utime(target, (m.mtime, m.mtime))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")
