"""verify: passes a good archive, names the member of a damaged one."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aica_backup.errors import StorageError
from aica_backup.fsutil import discard_tree, free_bytes
from aica_backup.staging import stage
from aica_backup.verify import verify_archive
from tests.support.app import App, make_app
from tests.support.fs import listing, tmpfs

# The run log is written by every command, failed ones too (a restore refused is logged).
RUN_LOG = Path(".aica-backup/aica-backup.log")

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

        before = listing(app.root, skip=app.backups / RUN_LOG)
        proc = app.run("restore", "--yes", check=False)
        assert proc.returncode == 7, proc.stdout + proc.stderr
        assert "not enough free space to restore " in proc.stderr
        assert "hostile" not in proc.stderr and "bomb" not in proc.stderr
        assert listing(app.root, skip=app.backups / RUN_LOG) == before

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


# -- issue 14.9: verify ok ⇒ restore ok; what restore refuses, verify refuses, same words ----


def rebuild(
    good: Path,
    dest: Path,
    *,
    add: dict[str, bytes | None] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    tail: bytes = b"",
) -> Path:
    """``good`` with members added (None: a folder) and listed in a manifest recomputed to
    agree with them, then ``edit`` applied to the manifest; ``tail`` goes after the tar end."""
    with tarfile.open(good) as tar:
        old = [(info, tar.extractfile(info).read() if info.isfile() else None) for info in tar]
    manifest = json.loads(old.pop()[1] or b"")
    entries = [(info, data) for info, data in old]
    for path, data in (add or {}).items():
        info = tarfile.TarInfo(path)
        info.mtime = 1_700_000_000
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = len(data), 0o644
        entries.append((info, data))
        manifest["members"].append(
            {
                "path": path,
                "type": "dir" if data is None else "file",
                "size": 0 if data is None else len(data),
                "mode": info.mode,
                "mtime": 1_700_000_000,
                "sha256": "" if data is None else hashlib.sha256(data).hexdigest(),
                "component": "uploads",
            }
        )
    files = [m for m in manifest["members"] if m["component"] == "uploads" and m["type"] == "file"]
    manifest["components"]["uploads"]["file_count"] = len(files)
    manifest["components"]["uploads"]["total_bytes"] = sum(m["size"] for m in files)
    if edit is not None:
        edit(manifest)
    body = json.dumps(manifest).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(body)
    entries.append((info, body))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    dest.write_bytes(gzip.compress(buf.getvalue() + tail, mtime=0))
    return dest


def refused_alike(app: App, archive: Path, why: str) -> None:
    """verify and restore both refuse ``archive`` (exit 6) with ``why``; nothing changes."""
    code, report = verify(app, archive)
    problems = report["archives"][0]["problems"]  # type: ignore[index]
    assert code == 6 and why in problems[0], problems
    before = listing(app.root, skip=app.backups / RUN_LOG)
    proc = app.run("restore", str(archive), "--yes", check=False)
    assert proc.returncode == 6, proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr
    assert listing(app.root, skip=app.backups / RUN_LOG) == before


def _present(component: str, value: bool) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["components"][component]["present"] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (_present("uploads", False), "uploads is recorded absent but 'public/uploads' is listed"),
        (_present("database", False), "database is recorded absent"),
        (
            lambda m: m["members"].pop(0),  # the database, still "present"
            "database is recorded present but not listed",
        ),
    ],
    ids=["uploads absent with members", "database absent with its member", "database missing"],
)
def test_a_manifest_that_contradicts_itself_is_refused(
    app: App, good: Path, edit: Callable[[dict[str, Any]], None], why: str
) -> None:
    bad = rebuild(good, app.backups / "backup_20200101_000010.tar.gz", edit=edit)
    started = time.monotonic()
    refused_alike(app, bad, why)
    assert time.monotonic() - started < 30  # no nested .db-check re-reads


@pytest.mark.parametrize(
    ("add", "why"),
    [
        (
            {"public/uploads/empty.txt/child": b"x"},
            "'public/uploads/empty.txt/child' lies under the file 'public/uploads/empty.txt'",
        ),
        ({"public/uploads/" + "n" * 256: b"x"}, "a name in it is longer than 255 bytes"),
        ({"public/uploads/" + "d/" * 2000 + "f": b"x"}, "path longer than 3072 bytes"),
    ],
    ids=["file then file/child", "256-byte name", "2000 levels"],
)
def test_what_restore_cannot_create_verify_refuses(
    app: App, good: Path, add: dict[str, bytes | None], why: str
) -> None:
    bad = rebuild(good, app.backups / "backup_20200101_000011.tar.gz", add=add)
    refused_alike(app, bad, why)


def test_an_archive_of_another_app_warns_in_verify_with_restores_words(
    app: App, good: Path
) -> None:
    bad = rebuild(good, app.backups / "backup_20200101_000012.tar.gz", edit=_set_app("other"))
    proc = app.run("verify", str(bad), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    why = "archive was made for app 'other', this is 'aica-sys'"
    assert why in proc.stderr and "OK" in proc.stdout
    restored = app.run("restore", str(bad), "--yes", check=False)
    assert restored.returncode == 6 and why in restored.stderr


def _set_app(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["app_name"] = name

    return edit


def test_zeros_after_the_end_marker_are_not_read_to_the_end(app: App, good: Path) -> None:
    """2 GiB of zeros after the tar end marker (a 2 MB file): refused within a second or
    two, not read to the end (20 GiB took 15 s)."""
    with tarfile.open(good) as tar:
        tar_bytes = gzip.decompress(good.read_bytes())
        assert tar.getmembers()
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    bad = app.backups / "backup_20200101_000013.tar.gz"
    with open(bad, "wb") as fh:
        fh.write(gzip.compress(tar_bytes, mtime=0))
        for _ in range(32):
            fh.write(zeros)
    started = time.monotonic()
    code, report = verify(app, bad)
    assert time.monotonic() - started < 5
    assert code == 6
    assert "padding after the end of the tar archive" in report["archives"][0]["problems"][0]  # type: ignore[index]


def test_a_985_level_tree_backs_up_verifies_and_restores(app: App, tmp_path: Path) -> None:
    """No recursion over the depth of uploads: the real case was a 985-level tree that
    backed up and verified and could not be restored (RecursionError, exit 2)."""
    deep = app.uploads
    for _ in range(985):  # Path.mkdir(parents=True) and os.makedirs recurse
        deep = deep / "d"
        deep.mkdir()
    (deep / "leaf.txt").write_bytes(b"deep")
    target = tmp_path / "elsewhere"
    try:
        app.run("backup", "--verify")
        archive = app.archives()[-1]
        (deep / "leaf.txt").write_bytes(b"changed")
        app.run("restore", str(archive), "--yes")
        assert (deep / "leaf.txt").read_bytes() == b"deep"
        assert not (app.root / ".aica-restore").exists()
        app.run("restore", str(archive), "--yes", "--target", str(target))
        restored = target / "public/uploads" / deep.relative_to(app.uploads) / "leaf.txt"
        assert restored.read_bytes() == b"deep"
    finally:  # pytest's own clean-up of tmp_path recurses once per level too
        discard_tree(app.root)
        discard_tree(target)


def test_ctrl_c_during_verify_all_records_nothing_unfinished(app: App) -> None:
    """A real SIGINT to a real ``verify --all``: whichever archive it lands in, no record of
    a failure appears (every archive is good), only finished verifications are recorded."""
    (app.uploads / "noise.bin").write_bytes(os.urandom(4 << 20))
    for _ in range(12):
        app.run("backup")
    index = app.backups / ".aica-backup" / "catalog"
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from aica_backup.cli import main; main(sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--root", str(app.root), "verify", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any("verification" in p.read_text() for p in index.glob("*.json")):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    records = [json.loads(p.read_text()).get("verification") for p in index.glob("*.json")]
    done = [r for r in records if r is not None]
    assert done and all(r["ok"] and r["finished"] for r in done), done
    if proc.returncode == 130:
        assert len(done) < 12


def test_backup_skips_what_restore_could_not_create_and_says_so(app: App, tmp_path: Path) -> None:
    """A tree deeper than a restore can recreate (member paths over 3,072 bytes): backup
    archives what fits, warns for the rest, and that archive verifies and restores."""
    deep = app.uploads
    for _ in range(1600):  # public/uploads/d/…: 3,214 bytes at the bottom
        deep = deep / "d"
        deep.mkdir()
    (deep / "leaf.txt").write_bytes(b"too deep")
    try:
        proc = app.run("backup", "--verify")
        assert "path longer than 3072 bytes" in proc.stderr and "not archived" in proc.stderr
        archive = app.archives()[-1]
        (app.uploads / "empty.txt").write_bytes(b"changed")
        app.run("restore", str(archive), "--yes")
        assert (app.uploads / "empty.txt").read_bytes() == b""
        assert not (deep / "leaf.txt").exists()
        assert (app.uploads / "/".join(["d"] * 1500)).is_dir()
    finally:  # pytest's own clean-up of tmp_path recurses once per level
        discard_tree(app.root)


def test_a_backup_whose_verify_could_not_run_does_not_push_good_backups_out(
    tmp_path: Path,
) -> None:
    """Issue 14.1: ``backup --verify`` on a disk with room for the archive but not for its
    check. The new archive is neither verified nor freshly checked, so retention must not
    delete verified archives in its favour (it removed two of the three, keep_last = 2)."""
    with tmpfs(tmp_path / "disk", "160m") as disk:
        app = make_app(disk / "app", rows=2000)
        (app.root / "aica-backup.toml").write_text("[retention]\nkeep_last = 2\n")
        for _ in range(2):
            app.run("backup", "--verify")
        good = [p.name for p in app.archives()]
        _fill(disk, 30 << 20)

        proc = app.run("backup", "--verify", check=False)
        assert proc.returncode == 7, proc.stdout + proc.stderr
        assert "could not be verified: not enough free space to check" in proc.stderr
        assert "Removed by retention" not in proc.stdout
        assert set(good) < {p.name for p in app.archives()}


def test_a_killed_verify_leaves_no_scratch_folder(app: App) -> None:
    """kill -9 of verify left ``.aica-backup/.tmp-verify-PID/`` (the archive's database
    unpacked in it) for good: no command removed a dead verify's folder. The next command
    does."""
    (app.uploads / "big.bin").write_bytes(os.urandom(60 << 20))
    app.run("backup")
    meta = app.backups / ".aica-backup"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "verify"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".tmp-verify-") for p in meta.iterdir()):
            time.sleep(0.05)  # into the archive: the database is unpacked first
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("verify ended before it could be killed")
    assert [p for p in meta.iterdir() if p.name.startswith(".tmp-verify-")]
    nxt = app.run("list")
    assert not [p for p in meta.iterdir() if p.name.startswith(".tmp-verify-")], nxt.stderr
