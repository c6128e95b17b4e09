"""The README's first command: the demo runs the whole job and proves the restore."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "aica_backup", "demo", "--dir", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("✓") == 3 and "✗ database" not in proc.stdout
    assert list((root / "backups").glob("backup_*.tar.gz"))
    assert list((root / "backups").glob("pre-restore_*.tar.gz"))
    offsite = tmp_path / "demo-offsite"
    assert list(offsite.glob("backup_*.tar.gz")) and list(offsite.glob("*.sha256"))
    assert "demo-secret" not in proc.stdout + proc.stderr


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "aica_backup", "demo", "--dir", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
