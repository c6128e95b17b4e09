"""``aica-backup init``: what it writes into an app root, that it writes only what is absent,
that an app's own Makefile keeps working, and that the files it ships are the repository's."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from aica_backup import adopt
from aica_backup.config import Settings
from aica_backup.errors import ExitCode
from tests.support.app import App, make_app
from tests.test_schedule import analyze_verify, complaints, needs_systemd_analyze

REPO = Path(__file__).resolve().parents[1]
TOOL = Path(sys.executable).parent / "aica-backup"
MINIMAL = {"PATH": "/usr/bin:/bin"}

# Every shipped template with the repository file it must equal byte for byte.
REPO_COPIES = {
    "scripts/_aica.sh": "scripts/_aica.sh",
    "scripts/backup.sh": "scripts/backup.sh",
    "scripts/restore.sh": "scripts/restore.sh",
    "deploy/cron/aica-backup.cron": "deploy/cron/aica-backup.cron",
    "deploy/systemd/aica-backup.service": "deploy/systemd/aica-backup.service",
    "deploy/systemd/aica-backup.timer": "deploy/systemd/aica-backup.timer",
    "github/scheduled-backup.yml": ".github/workflows/scheduled-backup.yml",
    "compose/docker-compose.yml": "docker-compose.yml",
    "compose/dockerignore": ".dockerignore",
    "compose/Dockerfile": "backend/Dockerfile",
}


def init(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOL), "--root", str(root), "init", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root``: content, mode, mtime (ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def sh(
    root: Path, command: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], cwd=root, capture_output=True, text=True, timeout=300,
        env=env if env is not None else MINIMAL,
    )  # fmt: skip


# -- one source: the package's templates are the repository's files ---------------------------


@pytest.mark.parametrize(("name", "repo_path"), REPO_COPIES.items())
def test_shipped_templates_are_the_repository_files(name: str, repo_path: str) -> None:
    assert adopt.template(name) == (REPO / repo_path).read_bytes(), (
        f"{repo_path} and src/aica_backup/templates/{name} drifted: make them identical"
    )


def test_every_template_is_checked_against_the_repository() -> None:
    shipped = {
        str(p.relative_to(REPO / "src/aica_backup/templates"))
        for p in (REPO / "src/aica_backup/templates").rglob("*")
        if p.is_file()
    }
    assert shipped == {*REPO_COPIES, "Makefile.block"}


def test_the_repository_makefile_holds_the_shipped_block() -> None:
    assert adopt.template("Makefile.block").decode() in (REPO / "Makefile").read_text()


def test_commented_config_uncommented_gives_the_defaults() -> None:
    text = adopt.commented_config()
    assert all(not line or line.startswith("#") for line in text.splitlines())  # all comments
    uncommented = "\n".join(
        line[2:]
        for line in text.splitlines()
        if re.match(r"# (\[[a-z_.]+\]|[a-z_]+ = )", line) and "..." not in line
    )
    data = tomllib.loads(uncommented)
    defaults = Settings()
    assert data["app_name"] == defaults.app_name
    for section in ("paths", "backup", "retention", "restore", "notify", "log", "health"):
        for key, value in data[section].items():
            assert getattr(getattr(defaults, section), key) == value, (section, key)
    assert set(data["backup"]) | {"level"} == {
        f for f in vars(defaults.backup) if not f.startswith("_")
    }


# -- init in an app root ------------------------------------------------------------------------


def test_init_makes_a_working_app_root_under_a_minimal_path(app: App) -> None:
    """The reported case: cron's PATH=/usr/bin:/bin, the tool in a venv that is not the app's:
    the wrapper written by init runs the tool that wrote it (before: exit 127 or 'No module
    named aica_backup')."""
    proc = init(app.root)
    assert proc.returncode == 0, proc.stderr
    for name in ("scripts/backup.sh", "scripts/restore.sh", "scripts/_aica.sh"):
        mode = (app.root / name).stat().st_mode
        assert mode & stat.S_IXUSR and not mode & stat.S_IWOTH, name
    for name in ("Makefile", "aica-backup.toml"):
        assert not (app.root / name).stat().st_mode & (stat.S_IWOTH | stat.S_IXUSR), name
    assert not (app.root / "aica-backup.toml").stat().st_mode & 0o077  # may hold tokens
    assert "Next:" in proc.stderr and "wrote scripts/backup.sh" in proc.stdout
    backup = sh(app.root, "./scripts/backup.sh")
    assert backup.returncode == 0, backup.stderr
    assert len(app.archives()) == 1
    made = sh(app.root, "make backup && make verify && make list")
    assert made.returncode == 0, made.stderr
    (first, _second) = app.archives()
    app.add_rows(5, prefix="later")
    restored = sh(app.root, f"make restore ARCHIVE={first} ARGS=--yes")
    assert restored.returncode == 0, restored.stderr
    assert len(app.rows()) == 50
    # An explicit AICA_BACKUP_BIN still wins over the recorded path.
    other = sh(app.root, "./scripts/backup.sh", {**MINIMAL, "AICA_BACKUP_BIN": "/bin/false"})
    assert other.returncode == 1


def test_init_twice_changes_nothing(app: App) -> None:
    assert init(app.root, "--with", ",".join(adopt.EXTRAS)).returncode == 0
    before = tree(app.root)
    again = init(app.root, "--with", ",".join(adopt.EXTRAS))
    assert again.returncode == 0, again.stderr
    assert tree(app.root) == before
    assert "wrote" not in again.stdout and "kept scripts/backup.sh (up to date)" in again.stdout


def test_dry_run_writes_nothing(app: App) -> None:
    before = tree(app.root)
    proc = init(app.root, "--dry-run", "--with", "cron,systemd")
    assert proc.returncode == 0, proc.stderr
    assert "would write scripts/backup.sh" in proc.stdout
    assert "Dry run: nothing was written." in proc.stderr
    assert tree(app.root) == before
    assert not (app.root / "backups").exists()


def test_an_apps_own_makefile_keeps_its_targets(app: App) -> None:
    own = "# the app's own\nCC ?= cc\n\nhello:\n\t@echo hello from the app\n"
    (app.root / "Makefile").write_text(own)
    assert init(app.root).returncode == 0
    text = (app.root / "Makefile").read_text()
    assert text.startswith(own)
    assert sh(app.root, "make hello").stdout == "hello from the app\n"
    assert sh(app.root, "make backup").returncode == 0 and len(app.archives()) == 1
    # --force replaces the block only; the app's lines stay byte for byte.
    (app.root / "Makefile").write_text(text.replace("verify --all", "verify --all --json") + "x:\n")
    forced = init(app.root, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (app.root / "Makefile").read_text() == text + "x:\n"


def test_a_makefile_with_its_own_backup_target_is_left_alone(app: App) -> None:
    own = "backup:\n\t@echo the app's own backup\n"
    (app.root / "Makefile").write_text(own)
    proc = init(app.root)
    assert proc.returncode == 0, proc.stderr
    assert (app.root / "Makefile").read_text() == own
    assert "already has target(s) backup" in proc.stdout


def test_force_replaces_changed_files_but_never_the_settings(app: App) -> None:
    assert init(app.root).returncode == 0
    (app.root / "scripts/backup.sh").write_text("#!/bin/sh\nexit 9\n")
    (app.root / "aica-backup.toml").write_text('app_name = "mine"\n')
    kept = init(app.root)
    assert "kept scripts/backup.sh (exists; --force replaces it)" in kept.stdout
    assert (app.root / "scripts/backup.sh").read_text() == "#!/bin/sh\nexit 9\n"
    assert init(app.root, "--force").returncode == 0
    assert (app.root / "scripts/backup.sh").read_bytes() == adopt.template("scripts/backup.sh")
    assert (app.root / "aica-backup.toml").read_text() == 'app_name = "mine"\n'


def test_a_folder_without_app_files_is_refused_unless_forced(tmp_path: Path) -> None:
    empty = tmp_path / "docs"
    empty.mkdir()
    proc = init(empty)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "does not look like an app root" in proc.stderr and "--force" in proc.stderr
    assert list(empty.iterdir()) == []
    assert init(empty, "--force").returncode == 0
    assert (empty / "aica-backup.toml").is_file()
    # aica-backup.toml makes it an app root for every other command.
    listed = subprocess.run([str(TOOL), "--root", str(empty), "list"], capture_output=True)
    assert listed.returncode == 0, listed.stderr


def test_with_fills_in_the_apps_root_user_and_tool(app: App) -> None:
    proc = init(app.root, "--with", "cron,systemd,compose,github")
    assert proc.returncode == 0, proc.stderr
    service = (app.root / "deploy/systemd/aica-backup.service").read_text()
    assert f"WorkingDirectory={app.root}\n" in service
    assert f"ExecStart={app.root}/scripts/backup.sh --verify" in service
    assert f"Environment=AICA_BACKUP_BIN={TOOL}\n" in service
    assert "/path/to/aica-sys" not in service.split("[Unit]")[1]
    cron = (app.root / "deploy/cron/aica-backup.cron").read_text()
    jobs = [line for line in cron.splitlines() if line and not line.startswith("#")]
    assert len(jobs) == 2 and all(f"AICA_BACKUP_BIN={TOOL} ./scripts/backup.sh" in j for j in jobs)
    for name in ("docker-compose.yml", ".dockerignore", "backend/Dockerfile",
                 ".github/workflows/scheduled-backup.yml"):  # fmt: skip
        assert (app.root / name).is_file(), name
    # The cron line runs as cron would run it.
    command = jobs[0].split(" ", 5)[5]
    ran = subprocess.run(
        ["sh", "-c", command], env={**MINIMAL, "HOME": str(app.root)}, cwd="/", timeout=300
    )
    assert ran.returncode == 0
    assert len(app.archives()) == 1


def test_unknown_extra_is_a_usage_error(app: App) -> None:
    proc = init(app.root, "--with", "cron,kubernetes")
    assert proc.returncode == ExitCode.USAGE and "unknown --with kubernetes" in proc.stderr
    assert not (app.root / "scripts").exists()


def test_schedule_records_the_running_tool(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    assert init(app.root).returncode == 0
    proc = subprocess.run(
        [str(TOOL), "--root", str(app.root), "schedule", "cron"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert all(f"AICA_BACKUP_BIN={TOOL} " in line for line in proc.stdout.splitlines())
    assert os.access(app.root / "scripts/backup.sh", os.X_OK)


@needs_systemd_analyze
def test_the_filled_in_systemd_units_pass_systemd_analyze_verify(app: App) -> None:
    assert init(app.root, "--with", "systemd").returncode == 0
    units = app.root / "deploy" / "systemd"
    proc = analyze_verify(units / "aica-backup.service", units / "aica-backup.timer")
    assert proc.returncode == 0, proc.stderr
    assert complaints(proc, units) == []
