"""A component missing at backup time (issue 14, item 6): recorded absent, never silently.

The backup that finds a component gone which the previous backup had warns (exit 1, the
webhook hears it); restoring an archive that recorded a component absent keeps the live one
unless the operator names that component with ``--only``, and the confirm screen says which.
"""

from __future__ import annotations

import json
import os

from aica_backup.errors import ExitCode
from tests.support.app import App
from tests.test_notify import Receiver, configure, receiver  # noqa: F401 - the fixture

# The confirm screen's table wraps its cells to the terminal: a wide one keeps each phrase whole.
WIDE = {**os.environ, "COLUMNS": "240"}


def test_a_component_gone_since_the_last_backup_is_a_notified_warning(
    app: App,
    receiver: Receiver,  # noqa: F811
) -> None:
    configure(app, receiver)
    app.run("backup")
    receiver.requests.clear()
    app.env.unlink()
    proc = app.run("backup", check=False)
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    assert "config (.env.production) is missing" in proc.stderr
    assert len(app.archives()) == 2  # the backup itself was made
    hook = next(body for p, body in receiver.requests if p == "/hooks/slack")
    assert hook["outcome"] == "warning" and ".env.production" in str(hook["text"])
    assert "/ping/abc" in [p for p, _ in receiver.requests]  # done: not a failure ping
    log = (app.backups / ".aica-backup" / "aica-backup.log").read_text().splitlines()
    assert json.loads(log[-1])["outcome"] == "warning"
    # the next run compares with this one: still absent is no news
    assert app.run("backup").returncode == 0


def test_a_full_restore_keeps_a_config_the_archive_recorded_absent(app: App) -> None:
    """The reported case: the archive was made while .env.production was missing; restoring
    it deleted the live file. Now it stays, and the screen says why."""
    secret = app.env.read_bytes()
    app.env.unlink()
    app.run("backup")
    [archive] = app.archives()
    app.env.write_bytes(secret)
    app.env.chmod(0o600)
    proc = app.run("restore", archive.name, "--yes", env=WIDE)
    assert app.env.read_bytes() == secret
    screen = " ".join(proc.stderr.split())  # the table wraps on a narrow terminal
    assert "absent: the live one is kept (--only config deletes it)" in screen
    assert "--only config deletes it" in proc.stdout


def test_only_config_removes_a_config_the_archive_recorded_absent(app: App) -> None:
    """Asked by name, the restore makes the config what the archive says: absent; the
    confirm screen says DELETED first, and the safety backup holds the file."""
    secret = app.env.read_bytes()
    app.env.unlink()
    app.run("backup")
    [archive] = app.archives()
    app.env.write_bytes(secret)
    proc = app.run("restore", archive.name, "--only", "config", "--yes", env=WIDE)
    assert not app.env.exists()
    assert "absent: the live one is DELETED" in " ".join(proc.stderr.split())
    assert [p.name for p in app.archives("pre-restore_*")]  # the undo holds the file
