"""Backup freshness for health endpoints: is there a recent, undamaged backup?

Read from the catalog's index only — archives are never opened — so an app's ``/health`` can
call it on every request. Only regular backups count: a safety backup made before a restore
says nothing about whether the scheduled job runs. :func:`app_backup_status` is what a web
framework adapter calls (``aica_backup.integrations.fastapi``): it reads the app's settings and
never raises.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import ArchiveEntry, Catalog
from .errors import AicaBackupError

if TYPE_CHECKING:
    from .config import Settings

DEFAULT_MAX_AGE_HOURS = 26.0  # a daily job, plus slack for a slow or late run

# Every status has every key, whatever its state, so a monitor can read them without checks.
# ``replication`` and ``drill`` stay None until continuous protection and restore drills
# exist; each will be a dict with its own ``status`` and ``reason``, which degrade the whole.
_BLANK: dict[str, Any] = {
    "status": "unknown",
    "reason": None,
    "newest": None,
    "created_at": None,
    "age_hours": None,
    "max_age_hours": None,
    "count": 0,
    "verified": None,
    "replication": None,
    "drill": None,
}


def newest_backup(backups_dir: Path) -> tuple[ArchiveEntry | None, int]:
    """The newest regular backup's catalog entry (from its index, never the archive) and how
    many regular backups there are; ``(None, 0)`` without any."""
    catalog = Catalog(backups_dir)
    names = catalog.names(("backup",))
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # pruned between listing and reading
            return catalog.entry(name, read_missing=False), len(names)
    return None, 0


def backup_age_hours(entry: ArchiveEntry, now: datetime) -> float:
    """Hours since ``entry`` was made, by its name's local time as list and retention read it;
    a clock set back gives 0, not < 0."""
    return max(0.0, (now - entry.local_time).total_seconds() / 3600)


def backup_status(
    backups_dir: Path, max_age_hours: float = DEFAULT_MAX_AGE_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """Status of the newest backup in ``backups_dir``.

    ``status`` is ``"ok"``, ``"degraded"`` (the newest backup is older than ``max_age_hours``
    or failed its last verification; ``reason`` says which) or ``"none"`` (no backup at all).
    ``verified`` is the newest backup's last verification record as ``verify`` wrote it
    (``ok``, ``at``, ``finished``, ``how``, ``problems``), None if it was never verified.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    entry, count = newest_backup(backups_dir)
    if entry is None:
        return {
            **_BLANK,
            "status": "none",
            "max_age_hours": max_age_hours,
            "reason": "no backups yet",
        }
    age_hours = backup_age_hours(entry, now)
    reasons: list[str] = []
    if age_hours > max_age_hours:
        reasons.append(f"newest backup is {age_hours:.1f} h old (limit {max_age_hours:g} h)")
    if entry.failed:
        problems = (entry.verification or {}).get("problems") or ["no detail recorded"]
        reasons.append(f"newest backup failed verification: {problems[0]}")
    return {
        **_BLANK,
        "status": "degraded" if reasons else "ok",
        "newest": entry.name,
        "age_hours": round(age_hours, 3),
        "created_at": entry.local_time.astimezone(UTC).isoformat(),
        "verified": entry.verification,
        "count": count,
        "max_age_hours": max_age_hours,
        "reason": "; ".join(reasons) or None,
    }


def app_backup_status(
    root: Path,
    max_age_hours: float | None = None,
    *,
    config_file: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """:func:`backup_status` of the app at ``root``, by its aica-backup settings (the file and
    ``AICA_BACKUP_*`` variables, as the command line reads them); ``max_age_hours`` overrides
    ``health.max_age_hours``.

    Never raises: it answers a web request, where an exception is an error page and a broken
    backups folder must be seen, not hidden behind a 500. What cannot be read (settings, the
    backups folder, its index) gives ``status`` ``"unknown"`` with the ``reason``.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")  # the caller's bug, not a state to report
    from .config import load_settings  # here: importing this module stays cheap for the CLI

    try:
        settings = load_settings(root, config_file=config_file)
        backups_dir = settings.layout().backups_dir
    except AicaBackupError as exc:
        return {**_BLANK, "reason": f"cannot read aica-backup settings: {exc.message}"}
    except Exception as exc:
        return {**_BLANK, "reason": f"cannot read aica-backup settings: {_describe(exc)}"}
    limit = settings.health.max_age_hours if max_age_hours is None else max_age_hours
    try:
        status = backup_status(backups_dir, limit, now)
    except OSError as exc:
        return {**_BLANK, "max_age_hours": limit, "reason": f"cannot read {backups_dir}: {exc}"}
    except Exception as exc:  # e.g. an index entry edited by hand into another shape
        reason = f"cannot judge the backups in {backups_dir}: {_describe(exc)}"
        return {**_BLANK, "max_age_hours": limit, "reason": reason}
    reasons = [status["reason"]] if status["reason"] else []
    for key, part in (("replication", replication_status), ("drill", last_drill)):
        # Each part that is not ok degrades the whole, with its reason.
        try:
            section = part(settings)
        except Exception as exc:
            section = {"status": "unknown", "reason": f"cannot read it: {_describe(exc)}"}
        status[key] = section
        if section is not None and section.get("status") != "ok":
            reasons.append(f"{key}: {section.get('reason')}")
            if status["status"] == "ok":
                status["status"] = "degraded"
    status["reason"] = "; ".join(reasons) or None
    return status


def replication_status(settings: Settings) -> dict[str, Any] | None:
    """Lag of the continuous replication of the database and uploads: None until it exists;
    then ``{"status": ..., "reason": ..., "lag_seconds": ...}`` from its local state only."""
    return None


def last_drill(settings: Settings) -> dict[str, Any] | None:
    """When the last restore drill ran and how it ended: None until drills exist; then
    ``{"status": ..., "reason": ..., "at": ..., "ok": ...}`` from its local record only."""
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
