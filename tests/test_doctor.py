"""doctor: names holders, cleans a stale WAL the safe way, reports and fixes permissions."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from tests.support.app import App
from tests.support.fs import permissions_enforced
from tests.test_restore import kill_writer_leaving_wal


def findings(app: App, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    proc = app.run("doctor", "--json", *args, check=False)
    report = json.loads(proc.stdout)
    return proc.returncode, {f["code"]: f for f in report["findings"]}


def test_healthy_app_after_a_backup(app: App) -> None:
    app.run("backup")
    code, found = findings(app)
    assert found == {}
    assert code == 0


def test_no_backups(app: App) -> None:
    code, found = findings(app)
    assert code == 2
    assert "./scripts/backup.sh" in str(found["no-backups"]["fix"])


def test_an_old_or_damaged_newest_backup(app: App) -> None:
    """The same judgement as /health (aica_backup.status): the newest regular backup's age and
    last verification, read from the catalog."""
    app.run("backup")
    name = app.archives()[-1].name
    old = "backup_20200101_030000.tar.gz"
    (app.backups / name).rename(app.backups / old)
    code, found = findings(app)
    assert set(found) == {"backup-too-old"} and code == 1
    assert f"newest backup {old} is " in str(found["backup-too-old"]["diagnosis"])

    app.run("backup")
    newer = app.archives()[-1]
    with open(newer, "r+b") as fh:
        fh.seek(fh.seek(0, 2) // 2)
        fh.write(b"\0" * 64)
    assert app.run("verify", newer.name, check=False).returncode != 0
    code, found = findings(app)
    assert set(found) == {"backup-failed-verify"} and code == 2


def test_stale_wal_is_folded_in_without_losing_rows(app: App) -> None:
    app.run("backup")
    before = len(app.rows())
    kill_writer_leaving_wal(app.db, 7)
    wal = app.db.with_name("aica_sys.db-wal")
    assert wal.exists()
    code, found = findings(app)
    assert "stale-wal" in found and code == 1
    assert wal.exists()  # diagnosis alone changes nothing
    code, found = findings(app, "--fix")
    assert found["stale-wal"]["fixed"] is True
    assert code == 0
    assert not wal.exists()
    assert len(app.rows()) == before + 7  # the WAL's committed rows are in the database


def test_holder_is_named_and_its_wal_left_alone(app: App) -> None:
    app.run("backup")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1])\n"
            "c.execute('BEGIN EXCLUSIVE'); c.execute(\"INSERT INTO notes(body) VALUES ('x')\")\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(app.db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        code, found = findings(app, "--fix")
        assert code == 2
        locked = found["database-locked"]
        assert f"pid {holder.pid}" in str(locked["diagnosis"])
        assert "stale-wal" not in found
    finally:
        holder.kill()
        holder.wait()


def test_permissions_reported_and_fixed(app: App) -> None:
    app.run("backup")
    app.env.chmod(0o644)
    app.archives()[-1].chmod(0o644)
    app.backups.chmod(0o755)
    code, found = findings(app)
    assert code == 2
    assert found["permissions"]
    code, found = findings(app, "--fix")
    assert code == 0
    assert app.env.stat().st_mode & 0o777 == 0o600
    assert app.archives()[-1].stat().st_mode & 0o777 == 0o600
    assert app.backups.stat().st_mode & 0o777 == 0o700


def test_missing_and_corrupt_database(app: App) -> None:
    app.run("backup")
    app.db.rename(app.db.with_name("elsewhere.db"))
    code, found = findings(app)
    assert code == 2
    assert "init_db" in str(found["database-missing"]["fix"])
    app.db.write_bytes(b"garbage" * 1000)
    code, found = findings(app)
    assert code == 2
    assert "database-unreadable" in found or "database-corrupt" in found
    conn = sqlite3.connect(app.db.with_name("elsewhere.db"))
    conn.close()


def test_a_restore_leftover_that_cannot_be_removed_is_reported(app: App) -> None:
    """Every command removes a dead restore's staging first; what it cannot remove (here a
    folder its user may not empty), doctor names, with the command that removes it."""
    app.run("backup")
    preexec = permissions_enforced()
    staging = app.root / ".aica-restore" / "20200101T000000-4194304"  # a pid above pid_max
    (staging / "new").mkdir(parents=True)
    (staging / "new" / ".env.production").write_text("API_SECRET=x\n")
    (staging / "new").chmod(0o500)
    try:
        proc = app.run("doctor", "--json", check=False, preexec_fn=preexec)
        found = {f["code"]: f for f in json.loads(proc.stdout)["findings"]}
        assert proc.returncode == 1, proc.stdout
        assert str(staging) in str(found["restore-leftover"]["diagnosis"])
        assert f"rm -rf {staging}" in str(found["restore-leftover"]["fix"])
    finally:
        (staging / "new").chmod(0o700)
    app.run("list")  # removable again: gone
    assert not (app.root / ".aica-restore").exists()
