"""A backups folder shared by the app's owner and root (``sudo ./scripts/backup.sh``).

A real second user: the app folder belongs to an unprivileged account, and the commands run
as that account (``setpriv``) and as root, in turn, the way an operator mixes cron and sudo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aica_backup.errors import ExitCode
from tests.support.app import App, make_app
from tests.support.fs import permissions_enforced
from tests.support.users import chown_tree, owner_account


@pytest.fixture
def owned() -> Iterator[tuple[App, list[str], int, int]]:
    """An app folder owned by the second user, in a folder that user may enter."""
    with owner_account() as (prefix, account):
        base = Path(tempfile.mkdtemp(prefix="aica-owned-"))
        try:
            base.chmod(0o755)
            app = make_app(base / "app")
            (app.root / "aica-backup.toml").write_text("[retention]\nkeep_last = 2\n")
            chown_tree(app.root, account.pw_uid, account.pw_gid)
            yield app, prefix, account.pw_uid, account.pw_gid
        finally:
            shutil.rmtree(base, ignore_errors=True)


def as_owner(prefix: list[str], app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "aica_backup", "--root", str(app.root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=app.root,
    )


def foreign(folder: Path, uid: int) -> list[str]:
    """Entries under ``folder`` (itself included) that ``uid`` does not own."""
    found = []
    for here, dirs, files in os.walk(folder):
        for p in [Path(here), *(Path(here) / n for n in [*dirs, *files])]:
            if p.lstat().st_uid != uid:
                found.append(str(p.relative_to(folder.parent)))
    return sorted(set(found))


def test_a_sudo_run_leaves_every_file_to_the_owner(
    owned: tuple[App, list[str], int, int],
) -> None:
    """The reported case: owner, then root, then owner again. Root's archive, index entry,
    lock and log lines are the owner's; the owner's next backup works, is logged and prunes."""
    app, prefix, uid, _gid = owned
    first = as_owner(prefix, app, "backup")
    assert first.returncode == 0, first.stderr
    sudo = app.run("backup")  # as root, on the owner's folder
    assert sudo.returncode == 0
    assert foreign(app.backups, uid) == []
    again = as_owner(prefix, app, "backup")
    assert again.returncode == 0, again.stderr
    assert len(app.archives()) == 2  # keep_last = 2: the owner's run pruned root's archive too
    log = (app.backups / ".aica-backup" / "aica-backup.log").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in log] == ["ok", "ok", "ok"]
    listed = as_owner(prefix, app, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == [p.name for p in app.archives()][::-1]
    doctor = as_owner(prefix, app, "doctor", "--json")
    assert not [f for f in json.loads(doctor.stdout)["findings"] if f["code"] == "backups-owner"]


def test_doctor_flags_files_the_owner_cannot_manage(
    owned: tuple[App, list[str], int, int],
) -> None:
    """What an older version left behind (root's index entry and archive): named, with the
    chown that fixes it; the owner's ``list`` still shows every archive and warns."""
    app, prefix, uid, gid = owned
    assert as_owner(prefix, app, "backup").returncode == 0
    [archive] = app.archives()
    index = app.backups / ".aica-backup" / "catalog" / f"{archive.name}.json"
    for p in (archive, index):
        os.chown(p, 0, 0)
    doctor = as_owner(prefix, app, "doctor", "--json")
    assert doctor.returncode == ExitCode.ERROR, doctor.stdout
    [finding] = [f for f in json.loads(doctor.stdout)["findings"] if f["code"] == "backups-owner"]
    assert archive.name in finding["diagnosis"] and "2 files" in finding["diagnosis"]
    assert f"chown -R {uid}:{gid} {app.backups}" in finding["fix"]


def test_list_shows_an_unreadable_archive_and_warns(app: App) -> None:
    """One archive this user cannot read: ``list`` shows the others and that one, warns
    once, and exits 1 (not 7, which told the operator every backup was out of reach)."""
    preexec = permissions_enforced()
    app.run("backup")
    app.run("backup")
    old, new = app.archives()
    (app.backups / ".aica-backup" / "catalog" / f"{old.name}.json").unlink()
    old.chmod(0)
    proc = app.run("list", check=False, preexec_fn=preexec)
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    assert old.name in proc.stdout and new.name in proc.stdout
    assert "cannot read" in proc.stderr and old.name in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_index_entry_that_cannot_be_written_still_logs_and_prunes(
    owned: tuple[App, list[str], int, int],
) -> None:
    """The archive is published, then its index entry fails (the index folder is root's, as
    an older version's sudo run left it): the run is logged, retention is applied, the exit
    code is a warning naming the problem, and ``list`` shows the archive."""
    app, prefix, _uid, _gid = owned
    for _ in range(2):
        assert as_owner(prefix, app, "backup").returncode == 0
    os.chown(app.backups / ".aica-backup" / "catalog", 0, 0)
    proc = as_owner(prefix, app, "backup")
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    assert "index entry" in proc.stderr and "Traceback" not in proc.stderr
    assert len(app.archives()) == 2  # keep_last = 2: the oldest went
    lines = (app.backups / ".aica-backup" / "aica-backup.log").read_text().splitlines()
    last = json.loads(lines[-1])
    assert len(lines) == 3
    assert last["outcome"] == "warning" and last["archive"] == app.archives()[-1].name
    assert "index entry" in last["warning"]
    listed = as_owner(prefix, app, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == [p.name for p in app.archives()][::-1]


def test_doctor_flags_a_backups_folder_that_is_not_the_apps(
    owned: tuple[App, list[str], int, int],
) -> None:
    """A backups folder root made inside the owner's app (an older version's first run
    under sudo): the owner cannot create anything in it; doctor says so."""
    app, prefix, _uid, _gid = owned
    app.backups.mkdir(mode=0o700)  # as root
    doctor = as_owner(prefix, app, "doctor", "--json")
    [finding] = [f for f in json.loads(doctor.stdout)["findings"] if f["code"] == "backups-owner"]
    assert "1 files" in finding["diagnosis"] and "backups" in finding["diagnosis"]
