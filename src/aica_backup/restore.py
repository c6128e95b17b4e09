"""Restore: the guide's ten steps as one transaction (DESIGN "Restore").

1–3. list, choose, confirm — the command layer (:mod:`aica_backup.cli.restore`);
4.   safety backup of the current state (``pre-restore_*``) — before any live change;
5.   unpack into staging on the same file system, through the hostile-archive reader;
6–8. every checksum and the staged database's integrity verified, *then* database, uploads and
     config swapped in by the journal (:mod:`aica_backup.journal`), recoverable after kill -9;
9.   integrity check of the live result, the app started again and its health checked;
10.  commit, or roll back to exactly the previous state on any failure.

The caller holds the lock and has already finished any interrupted restore.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import appctl, interrupt
from .backup import BackupOptions, create_archive
from .catalog import Catalog, prune
from .errors import AicaBackupError, ArchiveError, RolledBackError, StorageError
from .fsutil import (
    check_writable_dir,
    discard_tree,
    ensure_private_dir,
    nearest_existing,
    same_filesystem,
    spread_subfolders,
    sync_to_disk,
)
from .journal import JOURNAL_NAME, Item, Journal, crashpoint
from .layout import COMPONENT_ORDER, Component, Layout
from .retention import Policy
from .snapshot import CheckMode, open_snapshot
from .staging import Staged, apply_metadata, stage


@dataclass(frozen=True)
class RestoreOptions:
    only: frozenset[Component] = frozenset(COMPONENT_ORDER)
    dry_run: bool = False
    check: CheckMode = "integrity"
    identities: Sequence[Any] | None = None
    stop_command: str = ""
    start_command: str = ""
    health_url: str = ""
    health_timeout: float = 30
    safety_keep: int = 3
    safety_options: BackupOptions = field(default_factory=lambda: BackupOptions(check="none"))
    # SHA-256 of the archive's database as verify recorded it after a passing integrity_check:
    # the same bytes are not fully checked again (a quick_check still runs).
    checked_sha256: str = ""


@dataclass
class Change:
    """What a restore does to one component."""

    component: Component
    action: str  # replace, create, remove, keep (not in archive / not selected)
    current: str
    archive: str
    details: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": str(self.component),
            "action": self.action,
            "current": self.current,
            "archive": self.archive,
            **self.details,
        }


@dataclass
class RestoreResult:
    archive: str
    root: Path
    dry_run: bool
    changes: list[Change]
    safety_backup: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    database_check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "archive": self.archive,
            "root": str(self.root),
            "dry_run": self.dry_run,
            "changes": [c.to_dict() for c in self.changes],
            "safety_backup": self.safety_backup,
            "database_check": self.database_check,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "notes": self.notes,
        }


# -- describing the current state and the difference --------------------------------------


def _describe_file(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "absent"
    stamp = datetime.fromtimestamp(st.st_mtime, UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    return f"{st.st_size:,} bytes, modified {stamp}"


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    """Relative path → (size, mtime) of every file under ``root`` (links not followed)."""
    out: dict[str, tuple[int, float]] = {}

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, f"{prefix}{e.name}/")
                else:
                    st = e.stat(follow_symlinks=False)
                    out[prefix + e.name] = (st.st_size, st.st_mtime)

    if root.is_dir():
        walk(str(root), "")
    return out


def compare(layout: Layout, staged: Staged, only: frozenset[Component]) -> list[Change]:
    """Per component: what the live state is, what the archive holds, what will happen."""
    changes: list[Change] = []
    for comp in COMPONENT_ORDER:
        info = staged.manifest.components.get(comp)
        live = layout.path(comp)
        if comp is Component.UPLOADS:
            current_tree = _tree(live)
            current = f"{len(current_tree):,} files" if live.is_dir() else "absent"
        else:
            current = _describe_file(live)
        if comp not in only:
            changes.append(Change(comp, "keep", current, "not selected"))
            continue
        if info is None or not info.present:
            if comp is Component.DATABASE:
                changes.append(Change(comp, "keep", current, "absent (live database kept)"))
            else:
                action = "remove" if live.exists() else "keep"
                changes.append(Change(comp, action, current, "absent"))
            continue
        staged_path = staged.root / info.path
        if comp is Component.UPLOADS:
            archived = _tree(staged_path)
            added = len(archived.keys() - current_tree.keys())
            removed = len(current_tree.keys() - archived.keys())
            changed = sum(
                1 for k in archived.keys() & current_tree.keys() if archived[k] != current_tree[k]
            )
            details = {"added": added, "changed": changed, "removed": removed}
            changes.append(
                Change(
                    comp,
                    "replace" if live.exists() else "create",
                    current,
                    f"{len(archived):,} files",
                    details,
                )
            )
        else:
            changes.append(
                Change(
                    comp,
                    "replace" if live.exists() else "create",
                    current,
                    _describe_file(staged_path),
                )
            )
    return changes


# -- the transaction ----------------------------------------------------------------------


def _work_dir(layout: Layout) -> Path:
    ensure_private_dir(layout.restore_dir)
    spread_subfolders(layout.restore_dir)  # staging away from the live files' block group
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return layout.restore_dir / f"{stamp}-{os.getpid()}"


def _preflight(layout: Layout, archive: Path, only: frozenset[Component]) -> None:
    """Refuse a read-only or foreign-file-system destination before any destructive step."""
    if not archive.is_file():
        raise StorageError(f"archive not found: {archive}")
    layout.root.mkdir(parents=True, exist_ok=True)
    check_writable_dir(layout.root)
    for comp in only:
        parent = nearest_existing(layout.path(comp).parent)
        check_writable_dir(parent)
        if not same_filesystem(parent, layout.root):
            raise StorageError(
                f"{layout.relpath(comp)} is on another file system than the app root "
                f"{layout.root}: it cannot be swapped in atomically",
                hint="restore with --target into a folder on one file system, then move it",
            )


def _items(layout: Layout, staged: Staged, work: Path, only: frozenset[Component]) -> list[Item]:
    items: list[Item] = []
    for comp in COMPONENT_ORDER:
        info = staged.manifest.components.get(comp)
        if comp not in only:
            continue
        if comp is Component.DATABASE and (info is None or not info.present):
            continue  # an archive without a database never takes the live one away
        new = str(staged.root / info.path) if info is not None and info.present else None
        live = layout.path(comp)
        paths = appctl.database_files(live) if comp is Component.DATABASE else [live]
        for i, path in enumerate(paths):
            rel = path.relative_to(layout.root)
            items.append(Item(str(path), str(work / "old" / rel), new if i == 0 else None, comp))
    return items


def _chown_like(staged_path: Path, live: Path) -> None:
    """Running as root, give restored files the owner of what they replace (the app's user)."""
    if os.geteuid() != 0 or not staged_path.exists():
        return
    ref = live if live.exists() else nearest_existing(live.parent)
    st = ref.stat()
    top = staged_path.stat()
    if (top.st_uid, top.st_gid) == (st.st_uid, st.st_gid):
        return  # staged by this user into folders of the same group: every file is so owned
    os.chown(staged_path, st.st_uid, st.st_gid)
    if staged_path.is_dir():
        for folder, dirs, files in os.walk(staged_path):
            for name in dirs + files:
                os.chown(Path(folder) / name, st.st_uid, st.st_gid)


def _safety_backup(layout: Layout, options: RestoreOptions) -> str | None:
    """Archive the current state as ``pre-restore_*``; None when there is nothing to save."""
    if not any(layout.path(c).exists() for c in COMPONENT_ORDER):
        return None
    current = Layout(
        root=layout.root,
        database=layout.database,
        uploads=layout.uploads,
        config=layout.config,
        backups=layout.backups_dir,
        app_name=layout.app_name,
        database_optional=True,
    )
    try:
        result = create_archive(current, options.safety_options, kind="pre-restore")
    except AicaBackupError as exc:
        raise StorageError(
            f"cannot make the safety backup of the current state, nothing was changed: {exc}",
            hint=exc.hint,
        ) from exc
    prune(
        Catalog(layout.backups_dir),
        Policy(keep_last=options.safety_keep),
        datetime.now(UTC),
        kind="pre-restore",
    )
    return result.name


def restore(
    layout: Layout,
    archive: Path,
    options: RestoreOptions = RestoreOptions(),
    *,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Restore ``archive`` into ``layout``; on failure the live state is exactly as before."""
    timings: dict[str, float] = {}
    _preflight(layout, archive, options.only)
    if not options.dry_run and not options.stop_command:
        appctl.refuse_if_held(layout.database_path)  # fail fast, before minutes of unpacking

    work = _work_dir(layout)
    t0 = time.perf_counter()
    try:
        work.mkdir(mode=0o700)
        staged = stage(
            archive,
            work / "new",
            identities=options.identities,
            check=options.check,
            progress=progress,
            writeback=True,
            checked_sha256=options.checked_sha256,
        )
        timings["stage_and_verify"] = time.perf_counter() - t0
        staged.raise_if_bad()
        if staged.manifest.app_name != layout.app_name:
            raise ArchiveError(
                f"archive was made for app {staged.manifest.app_name!r}, "
                f"this is {layout.app_name!r}",
                hint="check --root, or set app_name in aica-backup.toml",
            )
        changes = compare(layout, staged, options.only)
        if options.dry_run:
            _discard(work)
            return RestoreResult(
                archive.name,
                layout.root,
                True,
                changes,
                timings=timings,
                database_check=staged.db_check,
            )
        paths = [info.path for info in staged.manifest.components.values() if info.present]
        config_info = staged.manifest.components.get(Component.CONFIG)
        apply_metadata(staged, paths, private=[config_info.path] if config_info else [])
        items = _items(layout, staged, work, options.only)
        for item in items:
            if item.new is not None:
                _chown_like(Path(item.new), Path(item.live))
        t0 = time.perf_counter()
        sync_to_disk(work)
        timings["flush_to_disk"] = time.perf_counter() - t0
        checked = _checked_database(items)
    except BaseException:
        _discard(work)
        raise

    stopped = False
    try:
        if options.stop_command:
            appctl.stop_app(
                options.stop_command, layout.database_path, options.health_url, root=layout.root
            )
            stopped = True
        appctl.refuse_if_held(layout.database_path)
        t0 = time.perf_counter()
        safety = _safety_backup(layout, options)
        timings["safety_backup"] = time.perf_counter() - t0
    except BaseException:
        _discard(work)
        if stopped:
            appctl.run_command(options.start_command, "start")
        raise

    journal = Journal(
        path=layout.restore_dir / JOURNAL_NAME,
        archive=str(archive),
        items=items,
        cleanup=[str(work)],
        safety_backup=safety,
        start_command=options.start_command if stopped else "",
        app_stopped=stopped,
    )
    result = RestoreResult(
        archive.name, layout.root, False, changes, safety, timings, database_check=staged.db_check
    )
    t0 = time.perf_counter()
    try:
        journal.save()
        crashpoint("journal-saved")
        journal.swap()
        crashpoint("swapped")
        _check_live(layout, checked)
        crashpoint("checked")
        if stopped:
            appctl.run_command(options.start_command, "start")
            if options.health_url:
                appctl.wait_healthy(options.health_url, options.health_timeout)
        journal.set_state("committed")
        crashpoint("committed")
    except BaseException as exc:
        _roll_back(journal, layout, options, stopped)
        if isinstance(exc, Exception):
            also = "".join(f"; {note}" for note in journal.notes)
            raise RolledBackError(
                f"restore failed and was rolled back, the previous state is intact: {exc}{also}"
            ) from exc
        raise
    # Done: Ctrl-C now waits for the parked old version and staging to go (rather than leave
    # them, and the journal, to the next command), then says the restore was made.
    with interrupt.deferred(f"{archive.name} was restored"):
        journal.finish()
    timings["swap_and_check"] = time.perf_counter() - t0
    result.notes += journal.notes
    return result


def _discard(work: Path) -> None:
    """Remove a work folder, and the restore folder too once it is empty."""
    discard_tree(work)
    with contextlib.suppress(OSError):
        work.parent.rmdir()


def _checked_database(items: list[Item]) -> tuple[int, ...] | None:
    """The identity of the staged database file that passed the check (None: no database)."""
    for item in items:
        if item.component == Component.DATABASE and item.new:
            st = os.stat(item.new)
            return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return None


def _check_live(layout: Layout, checked: tuple[int, ...] | None) -> None:
    """The live database is the file that passed the check in staging, and opens there.

    The swap is a rename, so the file at the live path must be that very file (same device,
    inode, size and mtime): its bytes are the ones whose SHA-256 matched and that passed the
    full check, and re-reading them (a quick_check from the same page cache) could find
    nothing new. What the swap can get wrong is checked: another file in its place, a stray
    ``-wal``/``-shm`` beside it, a file SQLite cannot open or read the schema of there.
    """
    if checked is None:
        return
    db = layout.database_path
    leftovers = [p.name for p in appctl.database_files(db)[1:] if p.exists()]
    if leftovers:
        raise StorageError(f"unexpected files beside the restored database: {', '.join(leftovers)}")
    st = os.stat(db)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != checked:
        raise StorageError(f"{db} is not the database file that was checked in staging")
    try:
        with open_snapshot(db) as conn:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"restored database does not open where it now lives: {exc}") from exc


def _roll_back(journal: Journal, layout: Layout, options: RestoreOptions, stopped: bool) -> None:
    """Undo the swap; the app is stopped while files move so it never sees a mix."""
    if stopped and options.stop_command:
        # It may not have started at all; the rollback must go on regardless.
        with contextlib.suppress(AicaBackupError):
            appctl.stop_app(
                options.stop_command, layout.database_path, options.health_url, root=layout.root
            )
    journal.rollback()
    journal.finish()
    if stopped:
        try:
            appctl.run_command(options.start_command, "start")
        except AicaBackupError as exc:
            journal.notes.append(f"the app could not be started again: {exc}")
