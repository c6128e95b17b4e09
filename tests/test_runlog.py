"""The run log and small command-line facts (issue 14, item 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aica_backup.errors import ExitCode
from tests.support.app import App


def log_lines(app: App) -> list[dict[str, Any]]:
    text = (app.backups / ".aica-backup" / "aica-backup.log").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]  # every line: one JSON object


def test_backups_verifies_and_restores_are_logged_in_one_format(app: App) -> None:
    app.run("backup", "--verify")
    app.run("verify", "--all", "--json")
    [archive] = app.archives()
    app.run("restore", archive.name, "--yes")
    proc = app.run("restore", "backup_19990101_000000.tar.gz", "--yes", check=False)
    assert proc.returncode != 0
    lines = log_lines(app)
    ops = [(x["operation"], x["outcome"]) for x in lines]
    # the safety backup a restore makes is part of the restore, not a run of its own
    assert ops == [("backup", "ok"), ("verify", "ok"), ("restore", "ok")], ops
    assert lines[0]["verified"] is True and lines[0]["archive"] == archive.name
    assert lines[2]["archive"] == archive.name and lines[2]["safety_backup"].startswith("pre-")


def test_a_warning_is_logged_as_a_warning_not_failed(app: App) -> None:
    app.run("backup")
    app.env.unlink()
    assert app.run("backup", check=False).returncode == ExitCode.WARNING
    last = log_lines(app)[-1]
    assert last["outcome"] == "warning" and last["ok"] is True
    assert "FAILED" not in (app.backups / ".aica-backup" / "aica-backup.log").read_text()


def test_help_gives_the_real_check_default(app: App) -> None:
    text = " ".join(app.run("backup", "--help").stdout.split())
    assert "default: quick" in text and "default: integrity" not in text


@pytest.mark.parametrize(
    "args", [["backup"], ["restore", "--yes"], ["offsite", "push"]], ids=lambda a: a[0]
)
def test_a_negative_wait_is_refused(app: App, args: list[str]) -> None:
    proc = app.run(*args, "--wait", "-5", check=False)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "--wait" in proc.stderr
    assert not app.archives()


def test_a_verify_that_could_not_run_is_logged(app: App, tmp_path: Path) -> None:
    """verify of one encrypted archive without its key (exit 11; a full scratch disk is the
    same path, exit 7) left no line in the run log: only verify --all logged such runs."""
    from aica_backup.crypto import generate_identity

    recipient = generate_identity(tmp_path / "id.txt")
    (app.root / "aica-backup.toml").write_text(
        f'[encryption]\nrecipients = ["{recipient}"]\nencrypt = "all"\n'
    )
    app.run("backup")
    proc = app.run("verify", check=False)
    assert proc.returncode == ExitCode.CRYPTO, proc.stderr
    last = log_lines(app)[-1]
    assert (last["operation"], last["outcome"]) == ("verify", "failed"), last
    assert "identity" in last["error"], last
