"""The catalog: archive names, the index beside them, and a ``list`` that never opens archives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aica_backup.backup import BackupOptions, create_archive
from aica_backup.catalog import Catalog, new_name, parse_name, prune, sha256_file
from aica_backup.errors import UsageError
from aica_backup.layout import Layout
from aica_backup.retention import Policy
from tests.support.app import App

FAST = BackupOptions(check="none", threads=1)

# --------------------------------------------------------------------------------------------
# Which files get opened: an audit hook (PEP 578) sees every open() and os.open() of the
# process, the real thing rather than a mock. Hooks cannot be removed, so this one is gated.
_watching: list[set[str]] = []
_opened: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watching and args and isinstance(args[0], (str, os.PathLike)):
        path = os.fspath(args[0])
        if path in _watching[-1]:
            _opened.append(path)


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """``watch(paths)`` then look at the list: which of those paths were opened."""
    _opened.clear()
    yield _opened
    _watching.clear()
    _opened.clear()


def watch(paths: list[Path]) -> None:
    _watching.clear()
    _watching.append({str(p) for p in paths})


def stamp(i: int) -> str:
    when = datetime(2024, 1, 1, 3, 0, tzinfo=UTC) + timedelta(hours=i)
    return when.strftime("%Y%m%d_%H%M%S")


# --------------------------------------------------------------------------------------------


def test_two_hundred_archives_of_1_gb_list_without_opening_them(
    app: App, opened: list[str]
) -> None:
    real = create_archive(Layout(root=app.root), FAST)
    catalog = Catalog(app.backups)
    summary = catalog.read_index(real.name)["summary"]  # type: ignore[index]
    paths = []
    for i in range(200):
        path = app.backups / f"backup_{stamp(i)}.tar.gz"
        with open(path, "wb") as fh:
            fh.truncate(1 << 30)  # sparse: 1 GB to stat(), no disk used
        catalog.record_new(path.name, 1 << 30, f"{i:064x}", summary)
        paths.append(path)
    paths.append(real.path)
    watch(paths)

    started = time.perf_counter()
    entries = catalog.entries()
    seconds = time.perf_counter() - started

    assert opened == []
    assert len(entries) == 201
    assert entries[0].name == real.name  # made now: the newest
    assert [e.name for e in entries[1:]] == [p.name for p in reversed(paths[:-1])]
    assert all(e.size == 1 << 30 and e.summary == summary for e in entries[1:])
    assert entries[5].sha256 == f"{199 - 4:064x}"
    assert seconds < 1.0, f"listing 200 archives took {seconds:.2f} s"

    # and the real command, as a process: the whole run in well under a few seconds
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(json.loads(proc.stdout)) == 201
    assert time.perf_counter() - started < 5


def test_an_archive_copied_in_by_hand_is_indexed_once(app: App, opened: list[str]) -> None:
    real = create_archive(Layout(root=app.root), FAST)
    copy = app.backups / f"backup_{stamp(0)}.tar.gz"
    shutil.copy(real.path, copy)
    catalog = Catalog(app.backups)
    assert catalog.read_index(copy.name) is None
    watch([real.path, copy])

    entries = {e.name: e for e in catalog.entries()}
    assert opened == [str(copy), str(copy)]  # scanned once, hashed once; the other not at all
    index = catalog.read_index(copy.name)
    assert index is not None and index["origin"] == "indexed"
    assert index["sha256"] == sha256_file(copy) == real.sha256
    assert entries[copy.name].summary == entries[real.name].summary
    assert entries[copy.name].index_error is None

    opened.clear()
    catalog.entries()
    assert opened == []


def test_a_replaced_archive_is_indexed_again(app: App) -> None:
    first = create_archive(Layout(root=app.root), FAST)
    catalog = Catalog(app.backups)
    catalog.set_pinned(first.name, True)
    (app.uploads / "more.bin").write_bytes(os.urandom(5000))
    second = create_archive(Layout(root=app.root), FAST)
    shutil.copy(second.path, first.path)  # same name, other content and size

    entry = catalog.entry(first.name)
    assert entry.sha256 == second.sha256
    assert entry.summary is not None and entry.summary["uploads"]["file_count"] == 5
    assert entry.pinned is True  # a pin survives re-indexing


def test_a_damaged_archive_copied_in_is_listed_with_its_error(app: App) -> None:
    damaged = app.backups / f"backup_{stamp(0)}.tar.gz"
    app.backups.mkdir()
    damaged.write_bytes(b"\x1f\x8b" + os.urandom(500))
    [entry] = Catalog(app.backups).entries()
    assert entry.summary is None and entry.index_error
    proc = app.run("list")
    assert damaged.name in proc.stdout and "?" in proc.stdout


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("backup_20241010_030000.tar.gz", ("backup", "2024-10-10 03:00:00", 0, ".tar.gz")),
        ("backup_20241010_030000_12.tar.gz", ("backup", "2024-10-10 03:00:00", 12, ".tar.gz")),
        (
            "pre-restore_20241010_030000.tar.zst.age",
            ("pre-restore", "2024-10-10 03:00:00", 0, ".tar.zst.age"),
        ),
    ],
)
def test_parse_name(name: str, parts: tuple[str, str, int, str]) -> None:
    parsed = parse_name(name)
    assert parsed is not None
    assert (
        parsed.kind,
        parsed.local_time.strftime("%Y-%m-%d %H:%M:%S"),
        parsed.seq,
        parsed.suffix,
    ) == parts
    assert parsed.local_time.tzinfo is not None


@pytest.mark.parametrize(
    "name",
    [
        "backup_20241010_030000.tar",
        "backup_20241310_030000.tar.gz",  # month 13
        "backup_2024101_030000.tar.gz",
        "backup_20241010_030000.tar.gz.tmp",
        ".tmp-backup_20241010_030000.tar.gz",
        "snapshot_20241010_030000.tar.gz",
        "../backup_20241010_030000.tar.gz",
        "backup_20241010_030000_.tar.gz",
    ],
)
def test_parse_name_rejects(name: str) -> None:
    assert parse_name(name) is None


def test_new_name_never_collides(tmp_path: Path) -> None:
    when = datetime(2024, 10, 10, 3, 0, tzinfo=UTC)
    local = when.astimezone().strftime("%Y%m%d_%H%M%S")
    names = []
    for _ in range(4):
        name = new_name(tmp_path, "backup", when, ".tar.gz")
        (tmp_path / name).touch()
        names.append(name)
    assert names == [
        f"backup_{local}.tar.gz",
        f"backup_{local}_1.tar.gz",
        f"backup_{local}_2.tar.gz",
        f"backup_{local}_3.tar.gz",
    ]
    # another format with the same stem takes the stem too
    (tmp_path / f"backup_{local}_4.tar.zst.age").touch()
    assert new_name(tmp_path, "backup", when, ".tar.gz") == f"backup_{local}_5.tar.gz"
    # a safety backup of the same second is its own series
    assert new_name(tmp_path, "pre-restore", when, ".tar.gz") == f"pre-restore_{local}.tar.gz"


def test_names_newest_first_and_by_kind(tmp_path: Path) -> None:
    files = [
        "backup_20241010_030000.tar.gz",
        "backup_20241010_030000_2.tar.gz",
        "backup_20241010_030000_10.tar.gz",
        "backup_20241009_030000.tar.zst",
        "pre-restore_20241011_000000.tar.gz",
        "notes.txt",
        ".tmp-backup_20241012_000000.tar.gz",
    ]
    for f in files:
        (tmp_path / f).touch()
    catalog = Catalog(tmp_path)
    assert catalog.names(("backup",)) == [
        "backup_20241010_030000_10.tar.gz",
        "backup_20241010_030000_2.tar.gz",
        "backup_20241010_030000.tar.gz",
        "backup_20241009_030000.tar.zst",
    ]
    assert catalog.names()[0] == "pre-restore_20241011_000000.tar.gz"
    assert Catalog(tmp_path / "missing").names() == []


def test_path_of_refuses_what_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "backups").mkdir()
    (tmp_path / "backup_20241010_030000.tar.gz").touch()  # beside, not inside
    catalog = Catalog(tmp_path / "backups")
    for name in ("../backup_20241010_030000.tar.gz", "notes.txt", "backup_20241010_030001.tar.gz"):
        with pytest.raises(UsageError, match="no archive named"):
            catalog.path_of(name)
    with pytest.raises(UsageError):
        catalog.set_pinned("backup_20241010_030001.tar.gz", True)


def test_clean_leftovers(app: App) -> None:
    real = create_archive(Layout(root=app.root), FAST)
    catalog = Catalog(app.backups)
    meta = app.backups / ".aica-backup"
    junk = [
        app.backups / ".tmp-backup_20240101_000000.tar.gz",
        meta / ".tmp-snapshot-123.db",
        meta / "catalog" / ".tmp-x.json.99",
    ]
    for p in junk:
        p.write_bytes(b"partial")
    orphan = meta / "catalog" / "backup_20240101_000000.tar.gz.json"
    orphan.write_text("{}")
    assert sorted(catalog.clean_leftovers()) == sorted(p.name for p in junk)
    assert not any(p.exists() for p in junk) and not orphan.exists()
    assert catalog.read_index(real.name) is not None and real.path.exists()


def test_remove_deletes_archive_and_index(app: App) -> None:
    real = create_archive(Layout(root=app.root), FAST)
    catalog = Catalog(app.backups)
    catalog.remove(real.name)
    assert not real.path.exists() and catalog.read_index(real.name) is None
    assert catalog.entries() == []


def test_prune_keeps_pinned_and_never_counts_failed(app: App) -> None:
    catalog = Catalog(app.backups)
    names = [create_archive(Layout(root=app.root), FAST).name for _ in range(6)]
    catalog.set_pinned(names[0], True)
    catalog.record_verification(names[5], {"ok": False, "problems": ["x: SHA-256 mismatch"]})
    catalog.record_verification(names[4], {"ok": True})

    decision = prune(catalog, Policy(keep_last=2), datetime.now(UTC), dry_run=True)
    assert sorted(c.name for c in decision.remove) == sorted(names[1:3])
    assert len(catalog.names()) == 6  # a dry run

    prune(catalog, Policy(keep_last=2), datetime.now(UTC))
    # the failed newest is kept (newer than the oldest kept) but took no slot: 4 and 3 fill them
    assert sorted(catalog.names()) == sorted([names[0], names[3], names[4], names[5]])
    assert catalog.entry(names[5]).failed and not catalog.entry(names[4]).failed


def test_prune_deletes_nothing_for_a_verification_that_did_not_finish(app: App) -> None:
    """Issue 14.1: records of a failure without ``finished`` (an older release took a full
    disk for a damaged archive) never get an archive deleted, nor count as good; a finished
    failure older than the kept ones goes as before."""
    catalog = Catalog(app.backups)
    names = [create_archive(Layout(root=app.root), FAST).name for _ in range(4)]  # oldest first
    legacy = {"ok": False, "problems": ["archive expands beyond 0 bytes: decompression bomb"]}
    catalog.record_verification(names[0], legacy)
    catalog.record_verification(names[1], legacy)
    catalog.record_verification(names[2], {"ok": False, "finished": True, "problems": ["x"]})
    assert catalog.entry(names[0]).unsure and not catalog.entry(names[2]).unsure

    decision = prune(catalog, Policy(keep_last=1), datetime.now(UTC))
    assert [c.name for c in decision.remove] == [names[2]]
    assert sorted(catalog.names()) == sorted([names[0], names[1], names[3]])
    assert any("did not finish" in r for r in decision.reasons[names[0]])
