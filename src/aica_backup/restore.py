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
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import appctl, interrupt
from .backup import BackupOptions, create_archive
from .catalog import Catalog, prune, sha256_file
from .errors import AicaBackupError, ArchiveError, RolledBackError, StorageError
from .fsutil import (
    check_writable_dir,
    discard_tree,
    ensure_private_dir,
    nearest_existing,
    same_filesystem,
    spread_subfolders,
    sync_to_disk,
    walk_tree,
)
from .journal import JOURNAL_NAME, Item, Journal, crashpoint
from .layout import COMPONENT_ORDER, Component, Layout
from .leftovers import staging_folder, staging_name
from .manifest import Member, check_app_name
from .retention import Policy
from .snapshot import DB_ERRORS, CheckMode, open_snapshot
from .staging import Staged, apply_metadata, expected_bytes, stage

# How many of the files a restore replaces or deletes the confirm screen names, largest first.
LARGEST = 10


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
    action: str  # replace, create, remove, unchanged (same bytes), keep (absent / not selected)
    current: str
    archive: str
    details: dict[str, int] = field(default_factory=dict)
    # The largest live files this replaces or deletes: (path from the app root, size, which).
    largest: list[tuple[str, int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": str(self.component),
            "action": self.action,
            "current": self.current,
            "archive": self.archive,
            **self.details,
            "largest": [{"path": p, "size": n, "action": a} for p, n, a in self.largest],
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
    return _described(st.st_size, st.st_mtime)


def _described(size: int, mtime: float) -> str:
    stamp = datetime.fromtimestamp(mtime, UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    return f"{size:,} bytes, modified {stamp}"


def _tree(root: Path) -> dict[str, os.stat_result]:
    """Relative path → lstat of every non-folder under ``root`` (links not followed)."""
    out: dict[str, os.stat_result] = {}
    if root.is_dir():
        for rel, e in walk_tree(root):
            if not e.is_dir(follow_symlinks=False):
                out[rel] = e.stat(follow_symlinks=False)
    return out


ALL_COMPONENTS = frozenset(COMPONENT_ORDER)


def removes_absent(comp: Component, only: frozenset[Component]) -> bool:
    """Whether a component the archive recorded as absent takes the live one away.

    Only when the operator named it with ``--only`` (a subset of the components): an archive
    made while ``.env.production`` was missing must not delete the live file in a full
    restore. A live database is never taken away.
    """
    return comp is not Component.DATABASE and comp in only and only != ALL_COMPONENTS


def _same_content(path: Path, st: os.stat_result, member: Member) -> bool:
    """Whether the live file holds the archived bytes: the size first, then the SHA-256
    (skipped when size and modification time both match, as rsync and restic do)."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != member.size:
        return False
    if abs(st.st_mtime_ns - member.mtime * 1e9) < 1000:  # a float's precision, ~0.2 µs
        return True
    try:
        return sha256_file(path) == member.sha256
    except OSError:
        return False  # unreadable: it is replaced all the same


def _largest(files: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    return sorted(files, key=lambda f: (-f[1], f[0]))[:LARGEST]


def _deleted(
    layout: Layout, comp: Component, tree: dict[str, os.stat_result]
) -> tuple[dict[str, int], list[tuple[str, int, str]]]:
    """Details and largest files of a component that the restore deletes as a whole."""
    top = layout.relpath(comp)
    if comp is not Component.UPLOADS:
        size = layout.path(comp).lstat().st_size
        return {}, [(top, size, "deleted")]
    gone = [(f"{top}/{rel}", st.st_size, "deleted") for rel, st in tree.items()]
    details = {"added": 0, "changed": 0, "removed": len(gone), "unchanged": 0}
    return {**details, "bytes_replaced": sum(g[1] for g in gone)}, _largest(gone)


def kept_uploads(staged: Staged) -> list[str]:
    """The uploads (files or folders, relative to the uploads folder) that the backup could
    not read and skipped: the archive has no version of them, so the restore keeps the live
    ones in place of deleting them (as restic does for paths not in its snapshot)."""
    info = staged.manifest.components.get(Component.UPLOADS)
    if info is None or not info.present:
        return []
    top = info.path + "/"
    rels = sorted(
        s["path"][len(top) :] for s in staged.manifest.skipped if s["path"].startswith(top)
    )
    out: list[str] = []
    for rel in rels:  # sorted: a folder comes before what lies under it
        if not _under(rel, out):
            out.append(rel)
    return out


def _under(rel: str, tops: list[str]) -> bool:
    """Whether ``rel`` is one of ``tops`` or lies under one of them."""
    return any(rel == t or rel.startswith(t + "/") for t in tops)


def compare(layout: Layout, staged: Staged, only: frozenset[Component]) -> list[Change]:
    """Per component: what the live state is, what the archive holds, what will happen.

    Uploads are compared by content against the manifest (size and SHA-256 of every member),
    so an identical tree shows no change, whatever the file times of the staged copy.
    """
    changes: list[Change] = []
    for comp in COMPONENT_ORDER:
        info = staged.manifest.components.get(comp)
        live = layout.path(comp)
        current_tree: dict[str, os.stat_result] = {}
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
                changes.append(Change(comp, "keep", current, "absent: the live one is kept"))
            elif removes_absent(comp, only):
                action = "remove" if live.exists() else "keep"
                details, gone = _deleted(layout, comp, current_tree) if live.exists() else ({}, [])
                then = "absent: the live one is DELETED" if live.exists() else "absent"
                changes.append(Change(comp, action, current, then, details, gone))
            else:
                why = f"absent: the live one is kept (--only {comp} deletes it)"
                changes.append(Change(comp, "keep", current, why))
            continue
        if comp is Component.UPLOADS:
            top = info.path + "/"
            archived = {
                m.path[len(top) :]: m for m in staged.manifest.files() if m.path.startswith(top)
            }
            touched: list[tuple[str, int, str]] = []  # (path, live size, replaced|deleted)
            added = changed = 0
            for rel, member in archived.items():
                st = current_tree.get(rel)
                if st is None:
                    added += 1
                elif not _same_content(live / rel, st, member):
                    changed += 1
                    touched.append((f"{layout.relpath(comp)}/{rel}", st.st_size, "replaced"))
            kept = kept_uploads(staged)
            removed = [
                (f"{layout.relpath(comp)}/{rel}", st.st_size, "deleted")
                for rel, st in current_tree.items()
                if rel not in archived and not _under(rel, kept)
            ]
            touched += removed
            details = {
                "added": added,
                "changed": changed,
                "removed": len(removed),
                "unchanged": len(archived) - added - changed,
                "bytes_replaced": sum(t[1] for t in touched),
            }
            if kept:  # live files the backup could not read: not in the archive, kept
                details["kept"] = sum(_under(rel, kept) for rel in current_tree)
            changes.append(
                Change(
                    comp,
                    "replace" if live.exists() else "create",
                    current,
                    f"{len(archived):,} files",
                    details,
                    _largest(touched),
                )
            )
        else:
            record = staged.manifest.member(info.path)
            size = live.stat().st_size if live.is_file() else None
            replaced = [(layout.relpath(comp), size, "replaced")] if size is not None else []
            # The archive's very bytes already live there: nothing is replaced (issue 14.11).
            same = (
                size is not None and record is not None and _same_content(live, live.stat(), record)
            )
            changes.append(
                Change(
                    comp,
                    "unchanged" if same else "replace" if live.exists() else "create",
                    current,
                    # The manifest's record: the staged copy has the unpack time until the swap.
                    _described(record.size, record.mtime) if record else "absent",
                    largest=[] if same else replaced,
                )
            )
    return changes


# -- the transaction ----------------------------------------------------------------------


def _work_dir(layout: Layout) -> Path:
    ensure_private_dir(layout.restore_dir)
    spread_subfolders(layout.restore_dir)  # staging away from the live files' block group
    return layout.restore_dir / staging_name()


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
        if (info is None or not info.present) and not removes_absent(comp, only):
            continue  # an absent component takes the live one away only when asked by name
        new = str(staged.root / info.path) if info is not None and info.present else None
        live = layout.path(comp)
        paths = appctl.database_files(live) if comp is Component.DATABASE else [live]
        if comp is Component.UPLOADS and new is not None:
            items += _kept_items(layout, staged, work)
        for i, path in enumerate(paths):
            rel = path.relative_to(layout.root)
            items.append(Item(str(path), str(work / "old" / rel), new if i == 0 else None, comp))
    return items


def _kept_items(layout: Layout, staged: Staged, work: Path) -> list[Item]:
    """One journal item per skipped upload that exists live, swapped just before the uploads
    item: the live copy moves (a rename: no read permission needed) into the same place in
    the staged tree, whatever staging holds there (a skipped folder's empty entry) parked
    aside; the uploads item then swaps that tree in. The archive has no version of these
    files, so they are kept, as restic keeps paths not in its snapshot. A rollback (or the
    recovery after a kill -9 before the commit) undoes the uploads item first, then moves
    each back: the journal's rules as for any item, with the staged path as its "live"."""
    info = staged.manifest.components[Component.UPLOADS]
    items: list[Item] = []
    for rel in kept_uploads(staged):
        live = layout.uploads_path / rel
        if not os.path.lexists(live):
            continue  # gone since the backup: nothing to keep
        in_staging = staged.root / info.path / rel
        items.append(Item(str(in_staging), str(work / "kept" / rel), str(live), Component.UPLOADS))
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
        for _rel, e in walk_tree(staged_path):
            os.chown(e.path, st.st_uid, st.st_gid, follow_symlinks=False)


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
    confirm: Callable[[list[Change]], None] | None = None,
) -> RestoreResult:
    """Restore ``archive`` into ``layout``; on failure the live state is exactly as before.

    ``confirm(changes)`` is called once the archive is staged and verified and the difference
    with the live state is known, before anything live is touched; raising from it cancels
    the restore (nothing changed, the staging removed). Not called for a dry run.
    """
    existing = nearest_existing(layout.root)  # a --target folder may be new: made here
    try:
        _preflight(layout, archive, options.only)
        if not options.dry_run and not options.stop_command:
            appctl.refuse_if_held(layout.database_path)  # fail fast, before minutes of unpacking
        # Held by this process while it lives: the next command removes it only once it is dead.
        with staging_folder(_work_dir(layout)) as work:
            return _transaction(layout, archive, options, work, progress, confirm)
    except BaseException:
        _remove_made_folders(layout.root, existing)  # a failed restore changes nothing
        raise


def _remove_made_folders(root: Path, existing: Path) -> None:
    """Remove ``root`` and its parents up to ``existing`` (excluded), as long as they are
    empty: the folders a failed restore into a new target made."""
    folder = root
    while folder != existing and existing in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or not ours to remove): kept
        folder = folder.parent


def _transaction(
    layout: Layout,
    archive: Path,
    options: RestoreOptions,
    work: Path,
    progress: Callable[[int], None] | None,
    confirm: Callable[[list[Change]], None] | None,
) -> RestoreResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        staged = stage(
            archive,
            work / "new",
            identities=options.identities,
            check=options.check,
            progress=progress,
            writeback=True,
            checked_sha256=options.checked_sha256,
            expect_bytes=expected_bytes(archive),
        )
        timings["stage_and_verify"] = time.perf_counter() - t0
        crashpoint("staged")
        staged.raise_if_bad()
        check_app_name(staged.manifest, layout.app_name)
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
        if confirm is not None:
            confirm(changes)
        paths = [info.path for info in staged.manifest.components.values() if info.present]
        config_info = staged.manifest.components.get(Component.CONFIG)
        apply_metadata(staged, paths, private=[config_info.path] if config_info else [])
        items = _items(layout, staged, work, options.only)
        for item in items:
            # Not a kept upload's item: its "new" is the live file itself, owned as it is.
            if item.new is not None and Path(item.new).is_relative_to(work):
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
        crashpoint("safety-made")
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
    except DB_ERRORS as exc:
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
