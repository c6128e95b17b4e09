"""Backup status in a FastAPI app, in two lines — a route of its own::

    from aica_backup.integrations.fastapi import backup_status_router
    app.include_router(backup_status_router(root="/srv/aica"))  # GET /health/backup

or a part of the app's existing ``/health``::

    from aica_backup.integrations.fastapi import backup_health
    ...  return {"status": "ok", ..., "backup": backup_health("/srv/aica")}

Both answer from :func:`aica_backup.status.app_backup_status` (the catalog's index only, never
an archive; the app's ``aica-backup.toml`` and ``AICA_BACKUP_*`` variables) and never raise: a
broken backups folder or configuration is a status (``"unknown"`` with its reason), not a 500.
Needs ``fastapi`` (the ``backend`` extra); the rest of aica_backup does not import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..status import app_backup_status

__all__ = ["backup_health", "backup_status_router"]


def _app_root(root: str | os.PathLike[str] | None) -> Path:
    # As the command line: --root, else AICA_BACKUP_ROOT, else the current directory.
    return Path(root if root is not None else os.environ.get("AICA_BACKUP_ROOT") or ".").absolute()


def backup_health(
    root: str | os.PathLike[str] | None = None, max_age_hours: float | None = None
) -> dict[str, Any]:
    """The backup status of the app at ``root`` (default: ``AICA_BACKUP_ROOT``, else the
    current directory), for an existing ``/health`` to include.

    ``status`` is ``"ok"``, ``"degraded"`` (stale or failed verification: ``reason``),
    ``"none"`` (no backup yet) or ``"unknown"`` (cannot be read: ``reason``); beside it the
    newest backup's name, ``created_at``, ``age_hours`` against ``max_age_hours`` (default:
    ``health.max_age_hours`` of the app's settings), ``verified`` (its last verification:
    ``ok``, ``at``, ``finished``), ``count``, and ``replication`` and ``drill`` (None until
    those features are set up).
    """
    return app_backup_status(_app_root(root), max_age_hours)


def backup_status_router(
    root: str | os.PathLike[str] | None = None,
    *,
    max_age_hours: float | None = None,
    path: str = "/health/backup",
    unhealthy_status_code: int = 503,
) -> APIRouter:
    """A router serving ``GET path`` with :func:`backup_health`'s status as JSON: HTTP 200
    when ``status`` is ``"ok"``, ``unhealthy_status_code`` otherwise (503 by default, so an
    uptime monitor that only reads codes alerts on a stale, failed or missing backup).

    ``root`` is resolved now, when the app starts, not on each request.
    """
    if max_age_hours is not None and not max_age_hours > 0:
        raise ValueError(f"max_age_hours must be > 0, not {max_age_hours}")
    app_root = _app_root(root)
    router = APIRouter(tags=["health"])

    # A plain function: FastAPI runs it in its thread pool, so its file reads never block
    # the event loop.
    @router.get(path, summary="Backup status: freshness and last verification")
    def backup_status_endpoint() -> JSONResponse:
        status = app_backup_status(app_root, max_age_hours)
        code = 200 if status["status"] == "ok" else unhealthy_status_code
        return JSONResponse(status, status_code=code)

    return router
