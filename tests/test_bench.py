"""The shipped benchmark (bench/): its data set is deterministic and its runner completes.

Timings are not asserted here: the benchmark reports them (bench/README.md); the test suite
only checks that the generator makes the documented layout, the same bytes for the same seed,
and that ``bench/run.py`` runs end to end at a tiny scale and prints its table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCALE = 0.005


def _load(name: str) -> ModuleType:
    """Import a bench/ script as a module (bench/ is a folder of scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import each other by bare name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    return _load("generate")


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def test_generator_is_deterministic_and_makes_the_documented_layout(
    tmp_path: Path, generate: ModuleType
) -> None:
    a = generate.generate(tmp_path / "a", SCALE, seed=7, quiet=True)
    b = generate.generate(tmp_path / "b", SCALE, seed=7, quiet=True)
    other = generate.generate(tmp_path / "c", SCALE, seed=8, quiet=True)

    for root in (tmp_path / "a", tmp_path / "b"):
        db = root / "backend" / "aica_sys.db"
        assert db.is_file()
        assert (root / "public" / "uploads").is_dir()
        env = root / ".env.production"
        assert env.is_file() and (env.stat().st_mode & 0o777) == 0o600
    # Same seed: byte-identical uploads, the same rows; another seed: other bytes.
    tree_a = _tree(tmp_path / "a" / "public" / "uploads")
    assert tree_a == _tree(tmp_path / "b" / "public" / "uploads")
    assert a["uploads"] == b["uploads"] and a["rows"] == b["rows"]
    db_a, db_b = tmp_path / "a/backend/aica_sys.db", tmp_path / "b/backend/aica_sys.db"
    assert _counts(db_a) == _counts(db_b)
    assert other["uploads"]["tree_sha256"] != a["uploads"]["tree_sha256"]

    # Uploads nest like the reference backend stores them: YYYY/MM/<uuid>-<name>.
    assert all(len(Path(rel).parts) == 3 for rel in tree_a)
    assert len(tree_a) == a["uploads"]["files"] == max(4, round(generate.UPLOAD_FILES * SCALE))
    total = sum((tmp_path / "a/public/uploads" / rel).stat().st_size for rel in tree_a)
    assert total == a["uploads"]["bytes"]
    assert abs(total - generate.UPLOAD_BYTES * SCALE) < 0.01 * generate.UPLOAD_BYTES * SCALE

    conn = sqlite3.connect(tmp_path / "a/backend/aica_sys.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"notes_created_at", "events_kind_created", "comments_note"} <= indexes
        # The uploads table describes the files on disk, as the backend would have recorded them.
        rows = conn.execute("SELECT path, size, sha256 FROM uploads").fetchall()
    finally:
        conn.close()
    assert {p: h for p, _s, h in rows} == tree_a
    assert a["rows"]["events"] > 0 and a["rows"]["notes"] > 0


def test_small_files_variant_keeps_the_bytes(tmp_path: Path, generate: ModuleType) -> None:
    normal = generate.generate(tmp_path / "n", SCALE, seed=1, quiet=True)
    small = generate.generate(
        tmp_path / "s", SCALE, seed=1, db_scale=0.001, small_files=300, quiet=True
    )
    assert small["uploads"]["files"] == 300
    assert len(_tree(tmp_path / "s/public/uploads")) == 300
    assert (
        abs(small["uploads"]["bytes"] - normal["uploads"]["bytes"])
        < 0.02 * normal["uploads"]["bytes"]
    )
    # A second call with the same parameters reuses the data set; other parameters refuse.
    again = generate.generate(
        tmp_path / "s", SCALE, seed=1, db_scale=0.001, small_files=300, quiet=True
    )
    assert again["generated_at"] == small["generated_at"]
    with pytest.raises(SystemExit):
        generate.generate(tmp_path / "s", SCALE, seed=2, quiet=True)


def test_files_test_backs_up_the_same_database_in_both_trees(
    tmp_path: Path, generate: ModuleType
) -> None:
    run = _load("run")
    many = tmp_path / "many"
    few = tmp_path / "few"
    generate.generate(many, SCALE, seed=1, db_scale=0.001, small_files=300, quiet=True)
    generate.generate(few, SCALE, seed=1, db_scale=0.001, small_files=30, quiet=True)
    db = generate.DB_REL
    assert _counts(few / db)["uploads"] == 30  # each tree's own rows: not the same bytes
    stale = few / (db + "-wal")
    stale.write_bytes(b"left by an earlier run")
    size = run.share_database(many, few)
    assert (few / db).read_bytes() == (many / db).read_bytes()
    assert size == (many / db).stat().st_size
    assert not stale.exists()  # never replayed into the copied database
    assert _counts(few / db)["uploads"] == 300
    assert _tree(few / "public/uploads") != _tree(many / "public/uploads")
    assert run.share_database(many, few) == size  # already equal: nothing to do


def test_warm_reads_every_file_and_the_load_control_ends_on_time(tmp_path: Path) -> None:
    measure, loadtest = _load("measure"), _load("loadtest")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "big").write_bytes(os.urandom(3 << 20))
    (tmp_path / "a" / "small").write_bytes(b"x" * 10)
    os.mkfifo(tmp_path / "a" / "fifo")  # would block a read forever
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b" / "big")
    (tmp_path / "backups").mkdir()  # what an interrupted run left: not the data set
    (tmp_path / "backups" / "old.tar.gz").write_bytes(b"y" * 99)
    assert measure.warm(tmp_path) == (3 << 20) + 10
    started = time.perf_counter()
    loadtest.busy_loop(0.3)  # one SCHED_IDLE process per core, each until its deadline
    assert 0.3 <= time.perf_counter() - started < 10


def test_report_helpers_read_aica_json() -> None:
    pipelines = _load("pipelines")
    loadtest = _load("loadtest")
    restore_json = {
        "ok": True,
        "safety_backup": "pre-restore_x.tar.gz",
        "timings": {"stage_and_verify": 1.5, "safety_backup": 2.25},
    }
    assert pipelines.find_seconds(restore_json, ("safety",)) == 2.25
    assert pipelines.find_seconds({"timings": {}}, ("safety",)) is None
    text = 'progress line\n{"a": 1}\n'
    assert pipelines.last_json(text) == {"a": 1}
    assert loadtest.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert loadtest.percentile([5.0], 50) == 5.0


def test_retire_frees_the_space_but_keeps_inodes_and_shared_archives(tmp_path: Path) -> None:
    measure = _load("measure")
    app_archive = tmp_path / "app-backups" / "a.tar.gz"
    app_archive.parent.mkdir()
    app_archive.write_bytes(b"archive" * 100)
    slot = tmp_path / "round0" / "restored"
    (slot / "deep").mkdir(parents=True)
    (slot / "deep" / "file").write_bytes(b"x" * 5000)
    (slot / "readonly").write_bytes(b"y" * 5000)
    (slot / "readonly").chmod(0o444)  # as restic's and borg's repository files are
    os.link(app_archive, slot / "a.tar.gz")  # as the runner's `cp -al` of the backups folder
    graveyard = tmp_path / "graveyard"
    measure.retire(slot, graveyard)
    measure.retire(tmp_path / "missing", graveyard)  # nothing there: nothing to do
    assert not slot.exists()
    [kept] = graveyard.iterdir()
    assert (kept / "deep" / "file").stat().st_size == 0
    assert (kept / "readonly").stat().st_size == 0
    assert app_archive.read_bytes() == b"archive" * 100


@pytest.mark.slow
def test_runner_completes_at_a_tiny_scale_and_prints_the_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICA_BACKUP_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--scale",
            str(SCALE),
            "--rounds",
            "1",
            "--only",
            "aica,baseline",
            "--extras",
            "none",
            "--data-dir",
            str(tmp_path / "data"),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| operation | tool | wall s |" in out
    assert "| backup | sqlite3 .backup + tar -czf (gzip -6) |" in out
    assert "| backup | aica-backup backup |" in out, proc.stderr[-3000:]
    assert "| restore | tar -xzf |" in out
    assert (tmp_path / "results" / "latest.md").read_text().startswith("# aica-backup benchmark")
    results = json.loads((tmp_path / "results" / "latest.json").read_text())
    backup = results["ops"]["backup"]
    assert backup["aica"]["wall"] > 0 and backup["aica"]["size"] > 0
    assert backup["baseline"]["rss"] > 0
    assert results["machine"]["cores"] >= 1
    # The benchmark's scratch folder is gone; the data set stays for the next run.
    assert not (tmp_path / "data" / "work").exists()
    assert (tmp_path / "data" / f"scale-{SCALE:g}" / "backend" / "aica_sys.db").is_file()


def test_targets_show_how_far_the_rounds_spread() -> None:
    run = _load("run")

    def op(walls: list[float], safety: list[float] | None = None) -> dict[str, Any]:
        samples = [
            {"wall": w, "parts": {"restore.safety_backup": s} if safety else {}}
            for w, s in zip(walls, safety or walls, strict=True)
        ]
        median_safety = {"restore.safety_backup": sorted(safety)[1]} if safety else {}
        return {"wall": sorted(walls)[1], "parts": median_safety, "samples": samples,
                "rss_max": 1}

    results = {
        "params": {"rounds": 3},
        "ops": {
            "backup": {"aica": op([2.0, 2.6, 2.2]), "baseline": op([25.0, 26.0, 22.0])},
            "restore": {"aica": op([4.0, 5.0, 4.4], safety=[2.0, 2.0, 2.2]),
                        "baseline": op([4.0, 4.0, 5.0])},
            "verify": {"aica": op([2.0, 2.1, 2.2])},
        },
    }
    measured = {r["target"].split(" ")[0]: r["measured"] for r in run.targets(results)
                if "peak" not in r["target"]}
    assert measured["backup"].endswith("; rounds 0.080–0.100×)")  # 2.0/25 … 2.6/26
    assert measured["restore"].endswith("; rounds 0.44–0.75×)")  # (4.4-2.2)/5 … (5-2)/4
    assert measured["verify"].endswith("; rounds 0.44–0.53×)")  # 2.2/5 … 2.1/4
    results["params"]["rounds"] = 4  # a round missing: no pairing, no spread
    assert not any("rounds" in r["measured"] for r in run.targets(results))
