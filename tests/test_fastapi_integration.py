"""aica_backup.integrations.fastapi: an app's own FastAPI app gains backup status in two lines.

The app below is written the way an operator would, saved as the app tree's backend/main.py and
served by the real uvicorn on 127.0.0.1 (tests.support.backend starts and stops it). Backups,
verifications and the damage are made by the real command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.app import App
from tests.support.backend import Backend, running_backend

# The operator's app: its own /health, plus the two lines of the integration.
OPERATORS_APP = """
from pathlib import Path

from fastapi import FastAPI

from aica_backup.integrations.fastapi import backup_health, backup_status_router

ROOT = Path(__file__).resolve().parent.parent
app = FastAPI()
app.include_router(backup_status_router(root=ROOT))


@app.get("/health")
def health() -> dict:
    return {"status": "ok", "version": "4.2", "backup": backup_health(ROOT)}
"""

KEYS = {
    "status",
    "reason",
    "newest",
    "created_at",
    "age_hours",
    "max_age_hours",
    "count",
    "verified",
    "replication",
    "drill",
}


@pytest.fixture
def server(app: App) -> Iterator[Backend]:
    (app.root / "backend" / "main.py").write_text(OPERATORS_APP)
    with running_backend(app.root) as served:
        yield served


def _statuses(server: Backend) -> tuple[int, dict[str, Any]]:
    """(code, body) of GET /health/backup, checked against the app's own /health."""
    r = httpx.get(server.url("/health/backup"), timeout=10)
    code, own = server.health()
    assert code == 200 and own["status"] == "ok" and own["version"] == "4.2"
    body: dict[str, Any] = r.json()
    assert set(body) == KEYS and set(own["backup"]) == KEYS
    # Two requests, so the ages differ by a few ms: everything else is the same.
    assert {**own["backup"], "age_hours": None} == {**body, "age_hours": None}
    return r.status_code, body


def _backup(app: App) -> str:
    return str(json.loads(app.run("backup", "--json").stdout)["archive"])


@pytest.mark.integration
def test_an_apps_own_health_gains_backup_status(app: App, server: Backend) -> None:
    code, status = _statuses(server)
    assert (code, status["status"], status["reason"]) == (503, "none", "no backups yet")
    # Until continuous protection and restore drills exist: present, and empty.
    assert status["replication"] is None and status["drill"] is None

    name = _backup(app)
    code, status = _statuses(server)
    assert (code, status["status"], status["newest"], status["verified"]) == (200, "ok", name, None)
    assert status["age_hours"] < 0.1 and status["max_age_hours"] == 26

    app.run("verify", name)
    code, status = _statuses(server)
    assert (code, status["status"]) == (200, "ok")
    verified = status["verified"]
    assert (verified["ok"], verified["finished"]) == (True, True)
    assert abs(datetime.fromisoformat(verified["at"]) - datetime.now(UTC)) < timedelta(minutes=1)

    # Stale: the only backup is from 2020 (its name is its time, as for list and retention).
    old = "backup_20200101_030000.tar.gz"
    (app.backups / name).rename(app.backups / old)
    code, status = _statuses(server)
    assert (code, status["status"], status["newest"]) == (503, "degraded", old)
    assert "h old (limit 26 h)" in status["reason"]

    # A newer backup makes it fresh again; once verify finds it damaged, it is degraded.
    newer = _backup(app)
    assert _statuses(server)[:1] == (200,)
    with open(app.backups / newer, "r+b") as fh:
        fh.seek(fh.seek(0, 2) // 2)
        fh.write(b"\0" * 64)
    assert app.run("verify", newer, check=False).returncode != 0
    code, status = _statuses(server)
    assert (code, status["status"], status["newest"]) == (503, "degraded", newer)
    assert status["reason"].startswith("newest backup failed verification: ")
    assert (status["verified"]["ok"], status["verified"]["finished"]) == (False, True)


@pytest.mark.integration
def test_a_broken_backups_folder_is_a_status_not_a_500(app: App, server: Backend) -> None:
    _backup(app)
    moved = app.root / "moved"
    app.backups.rename(moved)
    app.backups.write_text("a file where the backups folder should be")
    code, status = _statuses(server)
    assert (code, status["status"]) == (503, "unknown")
    assert f"cannot read {app.backups}" in status["reason"]

    app.backups.unlink()
    moved.rename(app.backups)
    assert _statuses(server)[1]["status"] == "ok"
    (app.root / "aica-backup.toml").write_text("[paths]\nbackups = ")  # a half-saved edit
    code, status = _statuses(server)
    assert (code, status["status"]) == (503, "unknown")
    assert "cannot read aica-backup settings" in status["reason"]


@pytest.mark.integration
def test_the_threshold_and_path_are_the_operators(app: App) -> None:
    (app.root / "backend" / "main.py").write_text(
        OPERATORS_APP.replace(
            "backup_status_router(root=ROOT)",
            'backup_status_router(root=ROOT, max_age_hours=0.0002, path="/backups",'
            " unhealthy_status_code=200)",
        )
    )
    name = _backup(app)
    with running_backend(app.root) as served:
        deadline = datetime.now(UTC) + timedelta(seconds=10)  # 0.0002 h is 0.72 s
        while (r := httpx.get(served.url("/backups"), timeout=10)).json()["status"] == "ok":
            assert datetime.now(UTC) < deadline, r.json()
            time.sleep(0.1)
        assert (r.status_code, r.json()["newest"]) == (200, name)
        assert "limit 0.0002 h" in r.json()["reason"]
        assert httpx.get(served.url("/health/backup"), timeout=10).status_code == 404
        # The app's /health keeps the app's own threshold (the settings' 26 h).
        assert served.health()[1]["backup"]["status"] == "ok"


def test_aica_backup_does_not_import_fastapi() -> None:
    """The core and every command work where fastapi is not installed."""
    code = (
        "import importlib, sys\n"
        "import aica_backup, aica_backup.status, aica_backup.cli\n"
        "from aica_backup.cli import COMMANDS\n"
        "for m in set(COMMANDS.values()): importlib.import_module('aica_backup.cli.' + m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"
