"""The package as others install it: the wheel built by ``python -m build``, installed into a
clean venv and with pipx (never this editable checkout), adopts a bare app root with ``init``
and backs it up, restores and verifies through the written wrappers and make targets, with
cron's bare PATH. Missing package data (templates, py.typed) fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.app import App, make_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MINIMAL_PATH = "/usr/bin:/bin"


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 300)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built once per session from a copy of what the sdist needs (the
    checkout stays clean), without isolation: setuptools comes from the dev extras."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = work / "dist"
    run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        timeout=300,
    )
    return out


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("aica_backup-*.whl")
    return found


def test_twine_check_passes_and_the_metadata_is_complete(dist: Path, wheel: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2 and any(f.endswith(".tar.gz") for f in files)
    run([sys.executable, "-m", "twine", "check", "--strict", *files])
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(metadata_name).decode()
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
    assert "aica_backup/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for key in ("License-Expression: MIT", "Classifier: ", "Project-URL: ", "Requires-Python"):
        assert key in metadata, key
    assert "Description-Content-Type: text/markdown" in metadata
    shipped = {n for n in names if n.startswith("aica_backup/templates/")}
    templates = REPO / "src" / "aica_backup" / "templates"
    assert shipped == {
        f"aica_backup/{p.relative_to(templates.parent)}"
        for p in templates.rglob("*")
        if p.is_file()
    }
    assert modes["aica_backup/templates/scripts/backup.sh"] & 0o111


@pytest.fixture(scope="session")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel installed (and its dependencies, from pip's cache/index)."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=600)
    return venv


def bare_app_root(root: Path) -> App:
    """The reference backend's files and its data; nothing of aica-backup's."""
    app = make_app(root)
    for source in (REPO / "backend").glob("*.py"):
        shutil.copy2(source, app.db.parent / source.name)
    return app


def minimal_env(home: Path) -> dict[str, str]:
    return {"PATH": MINIMAL_PATH, "HOME": str(home), "LANG": "C.UTF-8"}


def adopt_and_use(tool: Path, app: App, home: Path) -> None:
    """``init`` with ``tool``, then the guide's commands from the app root with cron's PATH."""
    env = minimal_env(home)
    first = run([str(tool), "init"], cwd=app.root, env=env)
    assert "wrote scripts/backup.sh" in first.stdout
    snapshot = {p: p.read_bytes() for p in app.root.rglob("*") if p.is_file()}
    again = run([str(tool), "init"], cwd=app.root, env=env)
    assert "wrote" not in again.stdout
    assert {p: p.read_bytes() for p in app.root.rglob("*") if p.is_file()} == snapshot
    assert f"AICA_INIT_BIN={tool}\n" in (app.root / "scripts" / "_aica.sh").read_text()

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return run(["sh", "-c", command], cwd=app.root, env=env)

    sh("./scripts/backup.sh")
    sh("make backup")
    first_archive, _ = app.archives()
    app.add_rows(3, prefix="after")
    sh(f"make restore ARCHIVE={first_archive} ARGS=--yes")
    assert len(app.rows()) == 50
    verified = sh("make verify")
    assert first_archive.name in verified.stdout
    # The cron line `schedule cron` gives, run as cron runs it: env -i, cwd elsewhere.
    lines = json.loads(run([str(tool), "schedule", "cron", "--json"], cwd=app.root, env=env).stdout)
    command = lines["lines"][0].split(" ", 5)[5]
    assert f"AICA_BACKUP_BIN={tool} " in command
    Path(lines["log"]).parent.mkdir(parents=True, exist_ok=True)
    run(["env", "-i", f"PATH={MINIMAL_PATH}", f"HOME={home}", "sh", "-c", command], cwd="/")
    assert len(app.archives()) == 3
    assert "Backup created" in Path(lines["log"]).read_text()


def test_the_wheel_runs_the_demo_and_adopts_an_app(wheel_venv: Path, tmp_path: Path) -> None:
    python, tool = wheel_venv / "bin" / "python", wheel_venv / "bin" / "aica-backup"
    where = run([str(python), "-c", "import aica_backup; print(aica_backup.__file__)"])
    assert str(wheel_venv) in where.stdout  # the wheel's copy, not this checkout
    assert run([str(tool), "-V"]).stdout.strip() == run([str(tool), "--version"]).stdout.strip()
    demo = run([str(tool), "demo", "--dir", str(tmp_path / "demo")], env=minimal_env(tmp_path))
    assert demo.stdout.strip()
    app = bare_app_root(tmp_path / "aica-sys")
    adopt_and_use(tool, app, tmp_path)


def test_a_pipx_install_adopts_an_app(wheel: Path, tmp_path: Path) -> None:
    """pipx puts the tool in its own bin folder, out of cron's PATH: the wrappers init wrote
    still find it (the reported case: 'No module named aica_backup' every night)."""
    home, bin_dir = tmp_path / "pipx-home", tmp_path / "bin"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIPX_", "AICA_BACKUP_"))},
        "PIPX_HOME": str(home),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    run([sys.executable, "-m", "pipx", "install", str(wheel)], env=env, timeout=600)
    tool = bin_dir / "aica-backup"
    assert tool.exists()
    app = bare_app_root(tmp_path / "aica-sys")
    adopt_and_use(tool, app, tmp_path)
