"""``doctor``: the guide's troubleshooting table, automated — and never destructive.

Each check yields a :class:`Finding`: a one-line diagnosis and the fix. With ``fix=True`` only
safe fixes are applied: permissions are tightened, and a stale ``-wal``/``-shm`` left by a dead
writer is folded back into the database by SQLite itself (open, checkpoint, close) — never
deleted, since a WAL file can hold committed transactions. A missing or damaged database is
only diagnosed: recreating or restoring it is the operator's decision.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import sqlite3
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .appctl import database_files, describe
from .errors import AicaBackupError
from .holders import find_holders
from .layout import Layout
from .leftovers import scan
from .snapshot import connect_existing, open_snapshot
from .status import backup_age_hours, newest_backup

if TYPE_CHECKING:
    from .offsite import Target

ERROR = "error"
WARNING = "warning"
INFO = "info"  # shown, but does not make the exit code non-zero


@dataclass
class Finding:
    code: str
    severity: str  # "error", "warning" or "info"
    diagnosis: str
    fix: str
    fixed: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_backups(layout: Layout, max_age_hours: float) -> list[Finding]:
    try:
        newest, _count = newest_backup(layout.backups_dir)
    except OSError:  # a folder this user may not read: check_ownership names it
        return []
    if newest is None:
        return [
            Finding(
                "no-backups",
                ERROR,
                f"no backups in {layout.backups_dir}",
                "make one now: ./scripts/backup.sh (and schedule it: aica-backup schedule cron)",
            )
        ]
    findings: list[Finding] = []
    age = backup_age_hours(newest, datetime.now(UTC))
    if age > max_age_hours:
        findings.append(
            Finding(
                "backup-too-old",
                WARNING,
                f"newest backup {newest.name} is {age:.0f} h old (limit {max_age_hours:.0f} h)",
                "check the schedule (cron, systemd timer or CI) and its log",
            )
        )
    if newest.failed:
        findings.append(
            Finding(
                "backup-failed-verify",
                ERROR,
                f"newest backup {newest.name} failed verification",
                "run ./scripts/backup.sh --verify, then aica-backup verify --all",
            )
        )
    return findings


def check_database(layout: Layout, fix: bool) -> list[Finding]:
    db = layout.database_path
    init = 'cd backend && python3 -c "from database import init_db; init_db()"'
    if not db.exists():
        if layout.database_optional:
            return []
        return [
            Finding(
                "database-missing",
                ERROR,
                f"database not found: {db}",
                f"restore the newest backup (./scripts/restore.sh) or start fresh: {init}",
            )
        ]
    findings: list[Finding] = []
    holders = find_holders(database_files(db))
    wal = db.with_name(db.name + "-wal")
    shm = db.with_name(db.name + "-shm")
    stale = (wal.exists() or shm.exists()) and not holders  # looked at before anything opens it
    if holders:
        findings.append(
            Finding(
                "database-in-use",
                INFO,
                f"database open in {describe(holders)}",
                "nothing to do while the app runs; stop it before a restore",
            )
        )
        if _write_locked(db):
            return [
                *findings,
                Finding(
                    "database-locked",
                    ERROR,
                    f"database is locked, held by {describe(holders)}",
                    "stop that process cleanly (do not delete -wal/-shm files: they can hold "
                    "committed data), then run aica-backup doctor --fix",
                ),
            ]
    try:
        # Without holders or a WAL, read immutably: opening must not create -wal/-shm files.
        opener = connect_existing(db, readonly=True) if holders or stale else open_snapshot(db)
        with opener as conn:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
            result = "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check(5)"))
    except sqlite3.DatabaseError as exc:
        return [
            Finding(
                "database-unreadable",
                ERROR,
                f"database cannot be opened: {exc}",
                f"restore the newest good backup: ./scripts/restore.sh (or {init})",
            )
        ]
    if result != "ok":
        findings.append(
            Finding(
                "database-corrupt",
                ERROR,
                f"database failed quick_check: {result}",
                "restore the newest good backup: ./scripts/restore.sh",
            )
        )
    if stale:
        size = wal.stat().st_size if wal.exists() else 0
        finding = Finding(
            "stale-wal",
            WARNING,
            f"{wal.name}/{shm.name} left by a process that ended ({size:,} bytes "
            "of write-ahead log, possibly committed data)",
            "aica-backup doctor --fix folds it into the database safely (never rm it)",
        )
        if fix:
            finding.fixed = _checkpoint(db)
        findings.append(finding)
    if mode == "delete" and _header_mode(db) != "wal":
        findings.append(
            Finding(
                "not-wal",
                WARNING,
                "database is not in WAL mode: writers and backups block each other",
                "cd backend && python3 ../scripts/sqlite-optimization.py",
            )
        )
    return findings


def _write_locked(db: Path) -> bool:
    """True if another connection holds the write lock beyond a short wait."""
    conn = sqlite3.connect(db, timeout=1)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    finally:
        conn.close()


def _header_mode(db: Path) -> str:
    """Journal mode from the file header (bytes 18-19 are 2 in WAL mode): immutable reads say
    'delete' for every database, so the header is the truth."""
    with open(db, "rb") as fh:
        header = fh.read(20)
    return "wal" if header[18:20] == b"\x02\x02" else "rollback"


def _checkpoint(db: Path) -> bool:
    """Let SQLite replay and remove a stale WAL: open read-write, checkpoint, close."""
    if find_holders(database_files(db)):
        return False  # someone opened it meanwhile: their WAL is not stale any more
    conn = sqlite3.connect(db, timeout=5)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection closing removes -wal and -shm
    return not db.with_name(db.name + "-wal").exists()


def check_permissions(layout: Layout, fix: bool) -> list[Finding]:
    findings: list[Finding] = []
    wanted: list[tuple[Path, int]] = []
    if layout.backups_dir.is_dir():
        wanted.append((layout.backups_dir, 0o700))
        with contextlib.suppress(OSError):  # unreadable: check_ownership names it
            wanted += [(p, 0o600) for p in layout.backups_dir.iterdir() if p.is_file()]
    if layout.config_path.is_file():
        wanted.append((layout.config_path, 0o600))
    for path, mode in wanted:
        current = _mode(path)
        if current & 0o077:
            finding = Finding(
                "permissions",
                ERROR,
                f"{path} is readable by others (mode {current:o}, want {mode:o})",
                f"chmod {mode:o} {path} (or aica-backup doctor --fix)",
            )
            if fix:
                path.chmod(mode)
                finding.fixed = True
            findings.append(finding)
    return findings


def check_ownership(layout: Layout) -> list[Finding]:
    """Entries in the backups folder its owner cannot manage: owned by another user (an
    archive, index entry, lock or log left by ``sudo`` with an older version), or without
    the owner's own read/write permission. The owner's runs would fail on each of them.
    Only diagnosed: which owner is right is the operator's call."""
    top = layout.backups_dir
    try:
        owner = top.stat()
    except OSError:
        return []
    bad: list[str] = []
    with contextlib.suppress(OSError):  # inside the app root, it should be the app's
        app = layout.root.stat()
        if layout.root in top.parents and app.st_uid != owner.st_uid:
            bad.append(str(top.relative_to(top.parent)))
            owner = app
    stack = [top]
    while stack:  # iterative: bounded by the folder's entries, not its depth
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            bad.append(str(folder.relative_to(top.parent)))
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            need = stat.S_IRWXU if is_dir else stat.S_IRUSR | stat.S_IWUSR
            if st.st_uid != owner.st_uid or (st.st_mode & need) != need:
                bad.append(str(Path(e.path).relative_to(top.parent)))
            if is_dir:
                stack.append(Path(e.path))
    bad = sorted(set(bad))  # a folder can be both foreign and unreadable
    if not bad:
        return []
    try:
        who = f"{pwd.getpwuid(owner.st_uid).pw_name} (uid {owner.st_uid})"
    except KeyError:
        who = f"uid {owner.st_uid}"
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return [
        Finding(
            "backups-owner",
            ERROR,
            f"{len(bad)} files in {top} that its owner {who} cannot manage (another owner, "
            f"or no read/write permission for the owner): {shown}",
            f"sudo chown -R {owner.st_uid}:{owner.st_gid} {top} && sudo chmod -R u+rwX {top}",
        )
    ]


def check_leftovers(layout: Layout) -> list[Finding]:
    """What interrupted restores left that the start-up cleanup could not remove."""
    findings: list[Finding] = []
    for item in scan(layout.restore_dir):
        if item.owner is not None:
            findings.append(
                Finding(
                    "restore-running",
                    INFO,
                    f"a restore by pid {item.owner} is running ({item.kind} {item.path})",
                    "nothing to do: it is removed when that restore ends",
                )
            )
            continue
        what = "a copy of the app, secrets included" if item.kind == "staging" else "a temp file"
        findings.append(
            Finding(
                "restore-leftover",
                WARNING,
                f"{item.path} was left by an interrupted restore ({what}) and could not be "
                "removed",
                f"check its owner and permissions, then: rm -rf {shlex.quote(str(item.path))}",
            )
        )
    return findings


def check_offsite_plaintext(targets: Sequence[Target], replace_command: str) -> list[Finding]:
    """Unencrypted copies on the targets, for when encryption recipients are set (the caller
    only asks then): each target holding any is an error, fixed by ``replace_command TARGET``.
    A target that cannot be listed is a warning: it could not be checked."""
    from .offsite import list_copies, plaintext

    findings: list[Finding] = []
    for t in targets:
        try:
            names = [c.name for c in plaintext(list_copies(t.storage))]
        except AicaBackupError as exc:
            findings.append(
                Finding(
                    "offsite-unreachable",
                    WARNING,
                    f"cannot check offsite target {t.label}: {exc.message}",
                    "check the target (aica-backup offsite list)",
                )
            )
            continue
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            findings.append(
                Finding(
                    "offsite-plaintext",
                    ERROR,
                    f"{len(names)} unencrypted copies on {t.label} although encryption "
                    f"recipients are set: {shown}",
                    f"{replace_command} {shlex.quote(t.label)}",
                )
            )
    return findings


def diagnose(layout: Layout, *, max_age_hours: float = 26, fix: bool = False) -> list[Finding]:
    """Every finding for this app, fixing the safe ones when asked."""
    return (
        check_database(layout, fix)
        + check_backups(layout, max_age_hours)
        + check_permissions(layout, fix)
        + check_ownership(layout)
        + check_leftovers(layout)
    )
