"""Backup freshness (aica_backup.status) and the backend's /health reporting it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aica_backup.catalog import Catalog
from aica_backup.status import app_backup_status, backup_status
from tests.support.app import App
from tests.support.backend import Backend, running_backend

OLD_NAME = "backup_20200101_030000.tar.gz"


def _backup(app: App) -> str:
    return str(json.loads(app.run("backup", "--json").stdout)["archive"])


def _stamp(when: datetime) -> str:
    return when.astimezone().strftime("%Y%m%d_%H%M%S")


def test_no_backups(tmp_path: Path) -> None:
    for folder in (tmp_path / "missing", tmp_path):
        status = backup_status(folder)
        assert status["status"] == "none"
        assert status["newest"] is None and status["count"] == 0


def test_fresh_backup_is_ok_and_an_old_one_degraded(app: App) -> None:
    name = _backup(app)
    status = backup_status(app.backups)
    assert (status["status"], status["newest"], status["reason"]) == ("ok", name, None)
    assert status["verified"] is None and status["age_hours"] < 1
    created = datetime.fromisoformat(status["created_at"])
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    later = backup_status(app.backups, now=created + timedelta(hours=30))
    assert later["status"] == "degraded"
    assert "30.0 h old (limit 26 h)" in later["reason"]
    assert backup_status(app.backups, 48, now=created + timedelta(hours=30))["status"] == "ok"


def test_a_failed_verification_degrades(app: App) -> None:
    name = _backup(app)
    catalog = Catalog(app.backups)
    catalog.record_verification(name, {"ok": True, "how": "full", "at": "2024-10-10T03:00:00"})
    status = backup_status(app.backups)
    assert status["status"] == "ok" and status["verified"]["ok"] is True

    failure = {"ok": False, "how": "full", "problems": ["checksum mismatch: backend/aica_sys.db"]}
    catalog.record_verification(name, failure)
    status = backup_status(app.backups)
    assert status["status"] == "degraded"
    assert (
        status["reason"]
        == "newest backup failed verification: checksum mismatch: backend/aica_sys.db"
    )
    assert status["verified"] == failure


def test_only_regular_backups_count_and_archives_are_not_opened(app: App) -> None:
    name = _backup(app)
    future = _stamp(datetime.now(UTC) + timedelta(hours=1))
    # A safety backup made before a restore says nothing about the scheduled job.
    (app.backups / f"pre-restore_{future}.tar.gz").write_bytes(b"x")
    (app.backups / OLD_NAME).write_bytes(b"x")
    status = backup_status(app.backups)
    assert (status["status"], status["newest"], status["count"]) == ("ok", name, 2)

    # Garbage under a newer name, never indexed: judged by its name alone, and left unread.
    garbage = f"backup_{future}.tar.gz"
    (app.backups / garbage).write_bytes(b"not an archive")
    status = backup_status(app.backups)
    assert (status["status"], status["newest"]) == ("ok", garbage)
    assert Catalog(app.backups).read_index(garbage) is None


def test_now_must_be_aware(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        backup_status(tmp_path, now=datetime(2024, 1, 1))  # noqa: DTZ001 - the point of the test


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


def test_app_status_reads_the_apps_settings(app: App) -> None:
    assert app_backup_status(app.root)["status"] == "none"
    name = _backup(app)
    ok = app_backup_status(app.root)
    assert (ok["status"], ok["newest"], ok["max_age_hours"]) == ("ok", name, 26.0)
    # Slots for continuous protection and restore drills: present, empty until they exist.
    assert set(ok) == KEYS and ok["replication"] is None and ok["drill"] is None

    (app.root / "aica-backup.toml").write_text('[paths]\nbackups = "elsewhere"\n')
    assert app_backup_status(app.root)["status"] == "none"
    (app.backups).rename(app.root / "elsewhere")
    later = datetime.now(UTC) + timedelta(hours=30)
    assert app_backup_status(app.root, now=later)["status"] == "degraded"
    assert app_backup_status(app.root, 48, now=later)["status"] == "ok"


def test_app_status_reports_what_it_cannot_read_and_never_raises(app: App) -> None:
    """Every state has every key; an unreadable part is a status ("unknown"), not an exception."""
    seen = {}
    seen["none"] = app_backup_status(app.root)
    name = _backup(app)
    seen["ok"] = app_backup_status(app.root)
    seen["degraded"] = app_backup_status(app.root, now=datetime.now(UTC) + timedelta(hours=27))

    # An index entry edited by hand into another shape: the archive is still not opened.
    index = Catalog(app.backups).index_dir / f"{name}.json"
    record = json.loads(index.read_text())
    index.write_text(json.dumps({**record, "verification": ["not", "a", "record"]}))
    broken_index = app_backup_status(app.root)
    assert broken_index["status"] == "unknown"
    assert f"cannot judge the backups in {app.backups}" in broken_index["reason"]

    # The backups folder is a file.
    moved = app.root / "moved"
    app.backups.rename(moved)
    app.backups.write_text("not a folder")
    not_a_folder = app_backup_status(app.root)
    assert not_a_folder["status"] == "unknown"
    assert f"cannot read {app.backups}" in not_a_folder["reason"]
    app.backups.unlink()
    moved.rename(app.backups)

    # A configuration the tool itself would refuse.
    (app.root / "aica-backup.toml").write_text("[health]\nmax_age_hours = -1\n")
    bad_config = app_backup_status(app.root)
    assert bad_config["status"] == "unknown"
    assert "cannot read aica-backup settings" in bad_config["reason"]
    assert "max_age_hours" in bad_config["reason"]

    for state, status in [*seen.items(), ("index", broken_index), ("file", not_a_folder)]:
        assert set(status) == KEYS, state
        assert status["status"] == state or state in ("index", "file"), status


def test_replication_and_drill_slot_in(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """What continuous protection and restore drills will report joins the status: a part that
    is not ok degrades it with its reason, and a part that fails is a reason, not an exception.
    (Stand-ins: neither part exists yet.)"""
    from aica_backup import status as status_module

    _backup(app)
    lagging = {"status": "degraded", "reason": "12 min behind", "lag_seconds": 720.0}
    monkeypatch.setattr(status_module, "replication_status", lambda _settings: lagging)
    status = app_backup_status(app.root)
    assert (status["status"], status["replication"]) == ("degraded", lagging)
    assert status["reason"] == "replication: 12 min behind"

    def broken(_settings: object) -> dict[str, object]:
        raise RuntimeError("drill record unreadable")

    monkeypatch.setattr(status_module, "last_drill", broken)
    status = app_backup_status(app.root)
    assert status["drill"] == {
        "status": "unknown",
        "reason": "cannot read it: RuntimeError: drill record unreadable",
    }
    assert status["reason"] == (
        "replication: 12 min behind; drill: cannot read it: RuntimeError: drill record unreadable"
    )


@pytest.mark.integration
def test_health_follows_backup_freshness(backend: Backend, backend_app: App) -> None:
    code, health = backend.health()
    assert (code, health["status"], health["backup"]["status"]) == (200, "degraded", "none")

    name = _backup(backend_app)
    code, health = backend.health()
    assert (code, health["status"]) == (200, "ok")
    assert health["backup"]["newest"] == name and health["backup"]["status"] == "ok"
    # Through aica_backup.integrations.fastapi: every field, the slots to come included.
    assert set(health["backup"]) == KEYS and health["backup"]["replication"] is None

    # Age the only backup: health degrades (still 200: the app itself serves fine).
    (backend_app.backups / name).rename(backend_app.backups / OLD_NAME)
    code, health = backend.health()
    assert (code, health["status"]) == (200, "degraded")
    assert health["backup"]["newest"] == OLD_NAME
    assert "h old (limit 26 h)" in health["backup"]["reason"]

    newer = _backup(backend_app)
    code, health = backend.health()
    assert (code, health["status"], health["backup"]["newest"]) == (200, "ok", newer)


@pytest.mark.integration
def test_health_reads_the_tools_configuration(backend: Backend, backend_app: App) -> None:
    config = backend_app.root / "aica-backup.toml"
    config.write_text('[paths]\nbackups = "elsewhere"\n[health]\nmax_age_hours = 0.0002\n')
    name = _backup(backend_app)
    assert (backend_app.root / "elsewhere" / name).is_file()

    deadline = time.monotonic() + 5  # 0.0002 h is 0.72 s
    while (health := backend.health()[1])["status"] != "degraded":
        assert health["backup"]["newest"] == name
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert "limit 0.0002 h" in health["backup"]["reason"]

    # A broken configuration must not take /health down, nor pass for a healthy backup.
    config.write_text("[health]\nmax_age_hours = -1\n")
    code, health = backend.health()
    assert (code, health["status"], health["backup"]["status"]) == (200, "degraded", "unknown")
    assert "max_age_hours" in health["backup"]["reason"]


@pytest.mark.integration
def test_health_without_aica_backup_installed(backend_app: App, tmp_path: Path) -> None:
    # A package of the same name that fails to import, first on the path: as if not installed.
    shadow = tmp_path / "shadow" / "aica_backup"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("aica-backup is not installed here")\n')
    with running_backend(backend_app.root, env={"PYTHONPATH": str(shadow.parent)}) as server:
        code, health = server.health()
    # Nothing to judge backups by: the app's own health decides.
    assert (code, health["status"]) == (200, "ok")
    assert health["backup"] == {"status": "unknown", "reason": "aica-backup not installed"}
