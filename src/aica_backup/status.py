"""Backup freshness for health endpoints: is there a recent, undamaged backup?

Read from the catalog's index only — archives are never opened — so an app's ``/health`` can
call it on every request. Only regular backups count: a safety backup made before a restore
says nothing about whether the scheduled job runs.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .catalog import Catalog

DEFAULT_MAX_AGE_HOURS = 26.0  # a daily job, plus slack for a slow or late run


def backup_status(
    backups_dir: Path, max_age_hours: float = DEFAULT_MAX_AGE_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """Status of the newest backup in ``backups_dir``.

    ``status`` is ``"ok"``, ``"degraded"`` (the newest backup is older than ``max_age_hours``
    or failed its last verification; ``reason`` says which) or ``"none"`` (no backup at all).
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    catalog = Catalog(backups_dir)
    names = catalog.names(("backup",))
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # pruned between listing and reading
            entry = catalog.entry(name, read_missing=False)
            break
    else:
        return {
            "status": "none",
            "newest": None,
            "age_hours": None,
            "created_at": None,
            "verified": None,
            "count": 0,
            "max_age_hours": max_age_hours,
            "reason": "no backups yet",
        }
    # The name's local time, as list and retention use; a clock set back gives age 0, not < 0.
    age_hours = max(0.0, (now - entry.local_time).total_seconds() / 3600)
    reasons: list[str] = []
    if age_hours > max_age_hours:
        reasons.append(f"newest backup is {age_hours:.1f} h old (limit {max_age_hours:g} h)")
    if entry.failed:
        problems = (entry.verification or {}).get("problems") or ["no detail recorded"]
        reasons.append(f"newest backup failed verification: {problems[0]}")
    return {
        "status": "degraded" if reasons else "ok",
        "newest": entry.name,
        "age_hours": round(age_hours, 3),
        "created_at": entry.local_time.astimezone(UTC).isoformat(),
        "verified": entry.verification,
        "count": len(names),
        "max_age_hours": max_age_hours,
        "reason": "; ".join(reasons) or None,
    }
