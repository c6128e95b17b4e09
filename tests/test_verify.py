"""verify: passes a good archive, names the member of a damaged one."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from aica_backup.errors import StorageError
from aica_backup.fsutil import free_bytes
from aica_backup.staging import stage
from aica_backup.verify import verify_archive
from tests.support.app import App, make_app
from tests.support.fs import listing, tmpfs

ORDER = ["backend/aica_sys.db", "public", ".env.production", "manifest.json"]


def unpack(archive: Path, into: Path) -> Path:
    into.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(into)], check=True)
    return into


def repack(folder: Path, dest: Path) -> Path:
    subprocess.run(["tar", "-czf", str(dest), "-C", str(folder), *ORDER], check=True)
    return dest


def reseal(folder: Path, member: str) -> None:
    """Make the manifest agree with a changed member, as a careful forger would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / member).read_bytes()
    for m in manifest["members"]:
        if m["path"] == member:
            m["sha256"] = hashlib.sha256(data).hexdigest()
            m["size"] = len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def good(app: App) -> Path:
    app.run("backup")
    return app.archives()[-1]


def verify(app: App, archive: Path) -> tuple[int, dict[str, object]]:
    proc = app.run("verify", str(archive), "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_good_archive_passes_and_is_recorded(app: App, good: Path) -> None:
    code, report = verify(app, good)
    assert code == 0
    entry = report["archives"][0]  # type: ignore[index]
    assert entry["ok"] and entry["database"] == "ok"
    listed = json.loads(app.run("list", "--json").stdout)
    assert listed[0]["verification"]["ok"] is True
    assert "integrity_check" in listed[0]["verification"]["how"]


def test_flipped_byte_in_one_upload_names_it(app: App, good: Path, tmp_path: Path) -> None:
    raw = bytearray(gzip.decompress(good.read_bytes()))
    needle = (app.uploads / "avatars/alice.png").read_bytes()
    at = raw.find(needle)
    assert at > 0
    raw[at + 100] ^= 0x01
    bad = app.backups / "backup_20200101_000001.tar.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    code, report = verify(app, bad)
    assert code == 6
    problems = report["archives"][0]["problems"]  # type: ignore[index]
    assert any("public/uploads/avatars/alice.png" in p and "SHA-256" in p for p in problems)


def test_truncated_archive_fails(app: App, good: Path) -> None:
    bad = app.backups / "backup_20200101_000002.tar.gz"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, report = verify(app, bad)
    assert code == 6
    assert "truncated" in report["archives"][0]["problems"][0]  # type: ignore[index]


def test_database_failing_integrity_check_fails(app: App, good: Path, tmp_path: Path) -> None:
    app.add_rows(3000)  # enough pages for an index page to damage
    app.run("backup")
    folder = unpack(app.archives()[-1], tmp_path / "x")
    db = folder / "backend/aica_sys.db"
    data = bytearray(db.read_bytes())
    page = 4096
    pages = len(data) // page
    for p in range(2, pages):  # scribble over every b-tree page body but the first's header
        data[p * page + 100 : p * page + 400] = b"\xa5" * 300
    db.write_bytes(bytes(data))
    reseal(folder, "backend/aica_sys.db")
    bad = repack(folder, app.backups / "backup_20200101_000003.tar.gz")
    code, report = verify(app, bad)
    assert code == 6
    problems = report["archives"][0]["problems"]  # type: ignore[index]
    assert any(p.startswith("backend/aica_sys.db") and "integrity" in p for p in problems)


def test_member_missing_from_manifest_fails(app: App, good: Path, tmp_path: Path) -> None:
    folder = unpack(good, tmp_path / "x")
    (folder / "public/uploads/smuggled.sh").write_text("echo hi\n")
    bad = repack(folder, app.backups / "backup_20200101_000004.tar.gz")
    code, report = verify(app, bad)
    assert code == 6
    problems = report["archives"][0]["problems"]  # type: ignore[index]
    assert any("smuggled.sh" in p and "not listed" in p for p in problems)


def test_verify_all_and_backup_verify(app: App) -> None:
    proc = app.run("backup", "--verify", "--json")
    assert json.loads(proc.stdout)["verification"]["ok"] is True
    app.run("backup")
    code = app.run("verify", "--all").returncode
    assert code == 0


def _fill(disk: Path, leave: int) -> None:
    """Take the free space of ``disk`` down to ``leave`` bytes with one file."""
    free = free_bytes(disk)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)


def test_a_nearly_full_disk_is_a_storage_fault_and_retention_keeps_the_good_backups(
    tmp_path: Path,
) -> None:
    """Issue 14.1, as reported: a 160 MB tmpfs, three ``backup --verify``, 55 MiB left free.

    ``verify --all`` must report the machine's fault (exit 7) without recording any archive
    as FAILED, a restore must say the same (not "hostile archive") and change nothing, and
    the next backup's retention must keep every good archive.
    """
    with tmpfs(tmp_path / "disk", "160m") as disk:
        app = make_app(disk / "app", rows=2000)
        for _ in range(3):
            app.run("backup", "--verify")
        good = [p.name for p in app.archives()]
        assert len(good) == 3
        _fill(disk, 55 << 20)
        index = app.backups / ".aica-backup" / "catalog"
        records = {n: (index / f"{n}.json").read_bytes() for n in good}

        proc = app.run("verify", "--all", check=False)
        assert proc.returncode == 7, proc.stdout + proc.stderr
        for name in good:
            assert f"not enough free space to check {name}: " in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert {n: (index / f"{n}.json").read_bytes() for n in good} == records  # nothing recorded

        before = listing(app.root)
        proc = app.run("restore", "--yes", check=False)
        assert proc.returncode == 7, proc.stdout + proc.stderr
        assert "not enough free space to restore " in proc.stderr
        assert "hostile" not in proc.stderr and "bomb" not in proc.stderr
        assert listing(app.root) == before

        app.run("backup")
        kept = [p.name for p in app.archives()]
        assert set(good) < set(kept) and len(kept) == 4
        for name in good:
            record = json.loads((index / f"{name}.json").read_text())
            assert record["verification"]["ok"] is True


def test_verify_counts_only_what_it_writes(app: App, tmp_path: Path) -> None:
    """verify writes only the database: uploads larger than the scratch disk's free space
    are hashed, not refused as a bomb (they were: the cap counted every member's size)."""
    (app.uploads / "big.bin").write_bytes(bytes(48 << 20))  # compresses to ~50 KB
    app.run("backup")
    archive = app.archives()[-1]
    with tmpfs(tmp_path / "scratch", "96m") as scratch:
        report = verify_archive(archive, scratch / "meta")
        assert report["ok"], report
        assert report["finished"] is True
        with pytest.raises(StorageError, match=f"not enough free space to restore {archive.name}"):
            stage(archive, scratch / "dest", check="none")
