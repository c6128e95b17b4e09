"""A wrong ``--root`` (issue 14, item 13): no command creates anything there, each says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aica_backup.errors import ExitCode
from tests.support.app import App
from tests.support.fs import listing

COMMANDS = [
    ["backup"],
    ["list"],
    ["prune"],
    ["verify", "--all"],
    ["restore", "--yes"],
    ["pin", "backup_20240101_030000.tar.gz"],
    ["offsite", "push"],
    ["offsite", "list"],
    ["doctor"],
]


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aica_backup", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=root,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_a_folder_that_is_not_an_app_root_is_left_alone(tmp_path: Path, args: list[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# not an app\n")
    before = listing(docs)
    proc = run(docs, *args)
    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"{docs} does not look like an app root" in line
    assert listing(docs) == before
    assert not (docs / "backups").exists()


def test_a_config_file_alone_makes_a_new_app_root(tmp_path: Path) -> None:
    """The way to start an app root from nothing (or for disaster recovery on a new
    machine): put aica-backup.toml there."""
    root = tmp_path / "new"
    root.mkdir()
    (root / "aica-backup.toml").write_text("[backup]\ndatabase_optional = true\n")
    assert run(root, "list").returncode == 0
    made = run(root, "backup")
    assert made.returncode == 0, made.stderr
    assert len(list((root / "backups").glob("backup_*"))) == 1


def test_any_component_marks_an_app_root(app: App) -> None:
    """A new app with only its database (no uploads, no config yet) backs up as before."""
    for p in sorted(app.uploads.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    app.uploads.rmdir()
    app.env.unlink()
    assert app.run("backup").returncode == 0
