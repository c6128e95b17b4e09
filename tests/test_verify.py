"""verify: passes a good archive, names the member of a damaged one."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.app import App

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
