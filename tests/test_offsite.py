"""Offsite copies: verified pushes, complete/incomplete listing, retention per target, fetch.

The library tests use a folder target (fast); the command tests run the real command line as
a subprocess against a real SeaweedFS and the real rclone, including a server killed with
SIGKILL in the middle of an upload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyrage
import pytest

from aica_backup import offsite
from aica_backup.archive import check_against_manifest, scan_file
from aica_backup.backup import BackupOptions, create_archive
from aica_backup.catalog import sha256_file
from aica_backup.errors import ArchiveError, StorageError, UsageError
from aica_backup.layout import Layout
from aica_backup.offsite import LocalArchive, Target
from aica_backup.retention import Policy
from aica_backup.storage import AccessError, Storage, open_storage
from aica_backup.storage.local import LocalStorage

from .support.app import App, make_app
from .support.s3 import BUCKET, SeaweedServer, use_server

MIB = 1 << 20
NOW = datetime(2024, 10, 20, 12, 0, tzinfo=UTC)


def archive_of(app: App, recipients: list[Any] | None = None) -> LocalArchive:
    """A real archive of the sample app, as the offsite code sees it."""
    result = create_archive(Layout(root=app.root), BackupOptions(recipients=recipients or []))
    return LocalArchive(result.name, result.path, result.sha256, result.size)


def fake_archive(folder: Path, when: datetime, size: int = 1000) -> LocalArchive:
    """Bytes under an archive name: retention and transfer do not look inside."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"backup_{when.astimezone().strftime('%Y%m%d_%H%M%S')}.tar.gz"
    path = folder / name
    path.write_bytes(os.urandom(size))
    return LocalArchive(name, path, sha256_file(path), size)


def states(storage: Storage) -> dict[str, bool]:
    return {c.name: c.complete for c in offsite.list_copies(storage)}


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in folder.rglob("*"))


# -- push, markers, listing -------------------------------------------------------------------


def test_push_verifies_then_marks_the_copy_complete(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    copy = offsite.push(nas, archive, work_dir=tmp_path)
    assert copy.complete and copy.sha256 == archive.sha256
    assert states(nas) == {archive.name: True}
    # The marker is a plain sha256sum file: an operator can check a NAS copy by hand.
    marker = (tmp_path / "nas" / f"{archive.name}.sha256").read_text()
    assert marker.startswith(f"{archive.sha256}  {archive.name}\n")
    proc = subprocess.run(
        ["sha256sum", "-c", f"{archive.name}.sha256"],
        cwd=tmp_path / "nas",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and f"{archive.name}: OK" in proc.stdout
    assert no_temp_files(tmp_path)


def test_object_without_marker_is_incomplete_and_pushed_again(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    nas.put(archive.name, archive.path)  # an upload that died before its verification
    (copy,) = offsite.list_copies(nas)
    assert not copy.complete and "no checksum marker" in (copy.problem or "")
    assert offsite.missing([copy], [archive], sealed=False) == [archive]
    (report,) = offsite.sync([Target("nas", nas)], [archive], work_dir=tmp_path)
    assert report.ok and report.pushed == [archive.name]
    assert states(nas) == {archive.name: True}


def test_marker_of_another_size_makes_the_copy_incomplete(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    offsite.push(nas, archive, work_dir=tmp_path)
    with open(tmp_path / "nas" / archive.name, "ab") as fh:  # e.g. a torn overwrite
        fh.write(b"tail")
    (copy,) = offsite.list_copies(nas)
    assert not copy.complete and "verified at upload" in (copy.problem or "")


class Corrupting(LocalStorage):
    """A folder target that stores one flipped byte: the link or the disk is lying."""

    def put(self, name: str, src: Path) -> None:
        super().put(name, src)
        if not name.endswith(".sha256"):
            path = self.folder / name
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


def test_a_copy_that_reads_back_differently_gets_no_marker(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    bad = Corrupting(tmp_path / "nas")
    with pytest.raises(StorageError, match="differs from the archive"):
        offsite.push(bad, archive, work_dir=tmp_path)
    assert not (tmp_path / "nas" / f"{archive.name}.sha256").exists()
    assert states(bad) == {archive.name: False}


def test_a_new_upload_first_withdraws_the_old_marker(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    offsite.push(nas, archive, work_dir=tmp_path)

    class DiesOnUpload(LocalStorage):
        def put(self, name: str, src: Path) -> None:
            raise StorageError("connection reset")

    with pytest.raises(StorageError):
        offsite.push(DiesOnUpload(tmp_path / "nas"), archive, work_dir=tmp_path)
    # The marker of the previous copy must not vouch for whatever the failed upload left.
    assert states(nas) == {archive.name: False}


# -- fetch ------------------------------------------------------------------------------------


def test_fetch_downloads_a_verified_copy(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    offsite.push(nas, archive, work_dir=tmp_path)
    dest = tmp_path / "restore-here"
    dest.mkdir()
    path = offsite.fetch(nas, archive.name, dest)
    assert path == dest / archive.name
    assert sha256_file(path) == archive.sha256
    assert path.stat().st_mode & 0o777 == 0o600
    assert offsite.fetch(nas, archive.name, dest) == path  # already there: kept as is


def test_fetch_detects_a_corrupted_remote_object_and_writes_nothing(
    app: App, tmp_path: Path
) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    offsite.push(nas, archive, work_dir=tmp_path)
    obj = tmp_path / "nas" / archive.name
    data = bytearray(obj.read_bytes())
    data[100] ^= 0x01  # bit rot on the NAS: same size, so listing still says complete
    obj.write_bytes(bytes(data))
    dest = tmp_path / "restore-here"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="corrupt"):
        offsite.fetch(nas, archive.name, dest)
    assert list(dest.iterdir()) == []


def test_fetch_refuses_incomplete_and_missing_copies(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    nas.put(archive.name, archive.path)
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="incomplete"):
        offsite.fetch(nas, archive.name, dest)
    with pytest.raises(UsageError, match="no archive named"):
        offsite.fetch(nas, "backup_20990101_000000.tar.gz", dest)
    assert list(dest.iterdir()) == []


# -- encryption for the trip ------------------------------------------------------------------


def test_offsite_encryption_ships_age_and_keeps_the_local_archive_plain(
    app: App, tmp_path: Path
) -> None:
    identity = pyrage.x25519.Identity.generate()
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    work = tmp_path / "work"
    work.mkdir()
    (report,) = offsite.sync(
        [Target("nas", nas)], [archive], work_dir=work, recipients=[identity.to_public()]
    )
    remote = f"{archive.name}.age"
    assert report.ok and report.pushed == [remote]
    assert states(nas) == {remote: True}
    assert list(work.iterdir()) == []  # the encrypted temp file is gone
    assert sha256_file(archive.path) == archive.sha256  # local archive untouched
    # The marker vouches for the encrypted bytes; the plaintext comes back through age.
    dest = tmp_path / "back"
    dest.mkdir()
    fetched = offsite.fetch(nas, remote, dest)
    result = scan_file(fetched, [identity])
    check_against_manifest(result)
    # A local archive already encrypted ("all") is shipped as it is.
    assert offsite.missing(offsite.list_copies(nas), [archive], sealed=True) == []


def test_a_damaged_local_archive_is_reported_not_shipped(app: App, tmp_path: Path) -> None:
    archive = archive_of(app)
    data = bytearray(archive.path.read_bytes())
    data[-100] ^= 0x01
    archive.path.write_bytes(bytes(data))
    recipient = pyrage.x25519.Identity.generate().to_public()
    nas = LocalStorage(tmp_path / "nas")
    (report,) = offsite.sync(
        [Target("nas", nas)], [archive], work_dir=tmp_path, recipients=[recipient]
    )
    assert not report.ok and "no longer matches" in (report.error or "")
    assert nas.list() == []


# -- retention per target ---------------------------------------------------------------------


def test_retention_on_a_target(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(6)]  # newest first
    nas = LocalStorage(tmp_path / "nas")
    reports = offsite.sync([Target("nas", nas)], archives, work_dir=tmp_path)
    assert reports[0].ok and len(reports[0].pushed) == 6
    # An upload that died long ago, older than anything kept: cleaned up too.
    stale = fake_archive(local, NOW - timedelta(days=30))
    nas.put(stale.name, stale.path)
    pinned = frozenset({archives[5].name})
    removed = offsite.prune_copies(
        nas, offsite.list_copies(nas), Policy(keep_last=2), NOW, pinned=pinned
    )
    assert sorted(removed) == sorted(
        [archives[2].name, archives[3].name, archives[4].name, stale.name]
    )
    left = sorted(p.name for p in (tmp_path / "nas").iterdir())
    expected = [archives[i].name for i in (0, 1, 5)]
    assert left == sorted(expected + [f"{n}.sha256" for n in expected])  # markers went too


def test_retention_never_removes_the_newest_complete_copy(tmp_path: Path) -> None:
    local = tmp_path / "local"
    old = fake_archive(local, NOW - timedelta(days=400))
    nas = LocalStorage(tmp_path / "nas")
    offsite.push(nas, old, work_dir=tmp_path)
    newer = fake_archive(local, NOW)
    nas.put(newer.name, newer.path)  # newer, but incomplete: does not count
    removed = offsite.prune_copies(
        nas, offsite.list_copies(nas), Policy(keep_last=0, keep_within=timedelta(days=1)), NOW
    )
    assert removed == []
    assert states(nas) == {old.name: True, newer.name: False}


def test_sync_runs_retention_with_the_given_policy(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(4)]
    nas = LocalStorage(tmp_path / "nas")
    (report,) = offsite.sync(
        [Target("nas", nas)], archives, work_dir=tmp_path, policy=Policy(keep_last=3), now=NOW
    )
    assert report.pruned == [archives[3].name]
    assert set(states(nas)) == {a.name for a in archives[:3]}


# -- several targets --------------------------------------------------------------------------


def test_a_failing_target_does_not_stop_the_others(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(2)]
    good = LocalStorage(tmp_path / "nas")
    unmounted = LocalStorage(tmp_path / "not-mounted" / "share")
    reports = offsite.sync(
        [Target("bad", unmounted), Target("good", good)], archives, work_dir=tmp_path, parallel=2
    )
    assert [r.ok for r in reports] == [False, True]
    assert isinstance(reports[0].errors[0], AccessError)
    assert "parent folder does not exist" in (reports[0].error or "")
    assert sorted(reports[1].pushed) == sorted(a.name for a in archives)


def test_find_copy(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(2)]
    nas = LocalStorage(tmp_path / "nas")
    offsite.sync([Target("nas", nas)], archives, work_dir=tmp_path)
    copies = offsite.list_copies(nas)
    assert offsite.find_copy(copies, None).name == archives[0].name
    assert offsite.find_copy(copies, archives[1].name).name == archives[1].name
    with pytest.raises(UsageError, match="no archive named"):
        offsite.find_copy(copies, "backup_20000101_000000.tar.gz", "nas")


def test_marker_format_round_trip() -> None:
    name = "backup_20241010_030000.tar.gz"
    data = offsite.format_marker(name, "ab" * 32, 1234)
    assert offsite.parse_marker(data, name) == ("ab" * 32, 1234)
    assert offsite.parse_marker(f"{'cd' * 32} *{name}\n".encode(), name) == ("cd" * 32, None)
    for bad in (b"", b"nonsense\n", f"{'ab' * 32}  other.tar.gz\n".encode()):
        with pytest.raises(ValueError):
            offsite.parse_marker(bad, name)


# -- the command line, with real servers ------------------------------------------------------


def run_json(app: App, *args: str, code: int = 0) -> Any:
    proc = app.run(*args, "--json", check=False)
    assert proc.returncode == code, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.integration
def test_backup_copies_to_s3_and_pulls_back(
    app: App, s3_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", s3_location)
    report = run_json(app, "backup")
    (copy,) = report["offsite"]
    assert copy["ok"] and copy["target"] == s3_location and copy["name"] == report["archive"]
    assert copy["error"] is None and copy["seconds"] >= 0 and copy["pruned"] == []
    (listing,) = run_json(app, "offsite", "list")
    assert [(c["name"], c["complete"]) for c in listing["copies"]] == [(report["archive"], True)]
    assert listing["missing"] == []
    # The server's disk is gone: get the archive back from offsite.
    sha = report["sha256"]
    for p in app.archives():
        p.unlink()
    pulled = run_json(app, "offsite", "pull")
    assert pulled["name"] == report["archive"]
    assert sha256_file(Path(pulled["path"])) == sha
    assert no_temp_files(app.backups)


@pytest.mark.integration
def test_backup_copies_to_rclone_local_and_s3_remotes(
    app: App, tmp_path: Path, rclone_s3_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [f"rclone:local:{tmp_path / 'rclone-folder'}", rclone_s3_location]
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", ",".join(targets))
    report = run_json(app, "backup")
    assert [(c["target"], c["ok"]) for c in report["offsite"]] == [(t, True) for t in targets]
    for index in ("1", "2"):
        (listing,) = run_json(app, "offsite", "list", index)
        assert [(c["name"], c["complete"]) for c in listing["copies"]] == [
            (report["archive"], True)
        ]


def test_a_failing_target_warns_and_the_next_run_catches_up(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "nas-mount" / "aica"  # the NAS is not mounted yet
    good = tmp_path / "usb"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", f"{share},{good}")
    first = app.run("backup", check=False)
    assert first.returncode == 1, first.stderr  # WARNING: the backup itself succeeded
    assert str(share) in first.stderr and "offsite copy failed" in first.stderr
    (archive,) = app.archives()
    check_against_manifest(scan_file(archive))  # local archive intact
    assert sorted(p.name for p in good.iterdir()) == [archive.name, f"{archive.name}.sha256"]
    # The NAS comes back: the next run copies the new archive and the one it missed.
    share.parent.mkdir()
    second = run_json(app, "backup")
    assert all(c["ok"] for c in second["offsite"])
    assert sorted(second["offsite"][0]["pushed"]) == sorted(p.name for p in app.archives())
    (listing,) = run_json(app, "offsite", "list", str(share))
    assert {c["name"] for c in listing["copies"] if c["complete"]} == {
        p.name for p in app.archives()
    }


def test_offsite_push_copies_what_a_new_target_lacks(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.run("backup")
    app.run("backup")
    target = tmp_path / "new-target"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(target))
    (before,) = run_json(app, "offsite", "list")
    assert len(before["missing"]) == 2
    pushed = run_json(app, "offsite", "push", "1")
    assert pushed["ok"] and len(pushed["targets"][0]["pushed"]) == 2
    again = run_json(app, "offsite", "push")
    assert again["targets"][0]["pushed"] == []
    bad = app.run("offsite", "push", "7", check=False)
    assert bad.returncode == 3 and "no offsite target #7" in bad.stderr


@pytest.mark.integration
def test_corrupted_s3_object_is_detected_by_pull(
    app: App, s3_location: str, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", s3_location)
    report = run_json(app, "backup")
    key = f"{s3_location.split('/', 3)[3]}/{report['archive']}"
    client = seaweed.client()
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x10
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    for p in app.archives():
        p.unlink()
    proc = app.run("offsite", "pull", check=False)
    assert proc.returncode == 6, proc.stderr  # ArchiveError
    assert "corrupt" in proc.stderr
    assert app.archives() == [] and no_temp_files(app.backups)


@pytest.mark.integration
def test_encrypted_offsite_copy_on_s3(
    app: App, s3_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity_file = tmp_path / "identity.txt"
    keygen = app.run("keygen", "--output", str(identity_file), "--json")
    recipient = json.loads(keygen.stdout)["recipient"]
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", s3_location)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    report = run_json(app, "backup")
    assert report["archive"].endswith(".tar.gz")  # local copy stays plain ("offsite" mode)
    assert report["offsite"][0]["name"] == report["archive"] + ".age"
    (listing,) = run_json(app, "offsite", "list")
    assert [(c["name"], c["complete"]) for c in listing["copies"]] == [
        (report["archive"] + ".age", True)
    ]
    for p in app.archives():
        p.unlink()
    pulled = run_json(app, "offsite", "pull", "1", report["archive"])  # .age found by name
    path = Path(pulled["path"])
    assert path.name.endswith(".tar.gz.age")
    from aica_backup.crypto import load_identities

    check_against_manifest(scan_file(path, load_identities(identity_file)))


@pytest.mark.slow
@pytest.mark.integration
def test_s3_server_killed_mid_upload(
    tmp_path: Path, own_seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path / "app")
    with open(app.uploads / "video.bin", "wb") as fh:  # incompressible: a big archive
        for _ in range(256):
            fh.write(os.urandom(MIB))
    use_server(monkeypatch, own_seaweed)
    location = f"s3://{BUCKET}/killed"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", location)
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_RETRIES", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "backup", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = own_seaweed.client(attempts=1)
    killed_with_parts = 0
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix="killed/")
            for up in uploads.get("Uploads", []):
                parts = client.list_parts(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])
                if parts.get("Parts"):
                    killed_with_parts = len(parts["Parts"])
                    own_seaweed.kill()  # SIGKILL, mid-upload
                    break
            if killed_with_parts:
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_with_parts, "the upload was never caught in flight"
    assert proc.returncode == 1, stderr  # WARNING: backup made, offsite copy failed
    assert location in stderr  # the retry warnings name the target
    report = json.loads(stdout)
    (copy,) = report["offsite"]
    assert not copy["ok"] and copy["target"] == location
    assert "cannot connect" in copy["error"] and "gave up after 2 attempts" in copy["error"]
    # The local archive is intact and matches what the catalog recorded.
    (archive,) = app.archives()
    assert sha256_file(archive) == report["sha256"]
    check_against_manifest(scan_file(archive))
    # Back up: no half-object is listed as a backup.
    own_seaweed.start()
    target = open_storage(location)
    assert not any(c.complete for c in offsite.list_copies(target))
    (listing,) = run_json(app, "offsite", "list")
    assert archive.name in listing["missing"]
    # The next run completes the copy (and copies the new archive too).
    again = run_json(app, "backup")
    assert again["offsite"][0]["ok"], again["offsite"]
    assert sorted(again["offsite"][0]["pushed"]) == sorted(p.name for p in app.archives())
    assert {c.name for c in offsite.list_copies(target) if c.complete} == {
        p.name for p in app.archives()
    }


@pytest.mark.slow
@pytest.mark.integration
def test_memory_stays_flat_encrypting_and_uploading_1gb(
    s3_location: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Path(__file__).parent.parent / "bench" / "offsite_memory.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--location", s3_location, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    with capsys.disabled():
        print(f"\noffsite 1 GiB encrypt+upload+verify: {result}")
    assert result["bytes"] == 1024 * MIB and result["temp_files_left"] == []
    # Flat: the 1 GiB never comes near memory (measured: ~70 MiB whatever the size, 26 MiB
    # before the push); the budget covers the interpreter, boto3 and 4 x 16 MiB parts.
    assert result["peak_rss_mib"] < 150, result


def test_cli_storage_errors_are_short(app: App, tmp_path: Path) -> None:
    proc = app.run("offsite", "list", "ftp://nowhere/x", check=False)
    assert proc.returncode == 3 and "unknown storage location" in proc.stderr


def test_retry_wrapper_reports_attempts(tmp_path: Path) -> None:
    from aica_backup.storage import RetryingStorage

    class Down(LocalStorage):
        def list(self) -> list[Any]:
            raise StorageError("connection refused")

    storage = RetryingStorage(Down(tmp_path), 1, sleep=lambda _s: None)
    (report,) = offsite.sync([Target("down", storage)], [], work_dir=tmp_path)
    assert not report.ok and "gave up after 2 attempts" in (report.error or "")


# -- whenever recipients are set, nothing leaves unencrypted (issue 14, items 2 and 3) --------


def objects_on(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def keygen(app: App, tmp_path: Path) -> tuple[Path, str]:
    identity_file = tmp_path / "identity.txt"
    proc = app.run("keygen", "--output", str(identity_file), "--json")
    return identity_file, json.loads(proc.stdout)["recipient"]


def only_encrypted(folder: Path) -> bool:
    """True when every object on a folder target is an age file or the marker of one."""
    return all(n.endswith((".age", ".age.sha256")) for n in objects_on(folder))


def test_push_encrypts_a_plaintext_archive_whenever_recipients_are_given(
    app: App, tmp_path: Path
) -> None:
    identity = pyrage.x25519.Identity.generate()
    archive = archive_of(app)  # made before encryption was turned on: plain
    nas = LocalStorage(tmp_path / "nas")
    copy = offsite.push(nas, archive, work_dir=tmp_path, recipients=[identity.to_public()])
    assert copy.name == archive.name + ".age"
    assert objects_on(tmp_path / "nas") == [copy.name, copy.name + ".sha256"]
    dest = tmp_path / "back"
    dest.mkdir()
    check_against_manifest(scan_file(offsite.fetch(nas, copy.name, dest), [identity]))


@pytest.mark.parametrize("mode", ["all", "offsite"])
def test_archives_made_before_encryption_never_leave_in_plaintext(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    app.run("backup")  # two plain archives, made before encryption was turned on
    app.run("backup")
    old = [p.name for p in app.archives()]
    identity_file, recipient = keygen(app, tmp_path)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_ENCRYPT", mode)
    # `offsite push` to a target:
    pushed_to = tmp_path / "pushed"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(pushed_to))
    report = run_json(app, "offsite", "push")
    assert sorted(report["targets"][0]["pushed"]) == sorted(f"{n}.age" for n in old)
    assert only_encrypted(pushed_to), objects_on(pushed_to)
    # A normal backup to a newly added target:
    added = tmp_path / "added"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", f"{pushed_to},{added}")
    backup = run_json(app, "backup")
    assert all(c["ok"] for c in backup["offsite"])
    assert only_encrypted(added), objects_on(added)
    assert len([n for n in objects_on(added) if n.endswith(".age")]) == 3
    for name in old:  # every old plaintext archive reached the target encrypted, readable
        from aica_backup.crypto import load_identities

        check_against_manifest(scan_file(added / f"{name}.age", load_identities(identity_file)))


def test_offsite_list_and_doctor_report_plaintext_copies_and_the_command_replaces_them(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "nas"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(target))
    app.run("backup")  # copied in plaintext: no encryption configured yet
    app.run("backup")
    plain = objects_on(target)
    names = [n for n in plain if not n.endswith(".sha256")]
    assert len(names) == 2
    # The older archive is gone locally: its only source is the plaintext copy on the target.
    app.archives()[0].unlink()
    identity_file, recipient = keygen(app, tmp_path)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    (listing,) = run_json(app, "offsite", "list")
    assert sorted(listing["plaintext"]) == sorted(names)
    human = app.run("offsite", "list")
    assert "aica-backup offsite push --replace-plaintext" in human.stdout + human.stderr
    code, found = doctor_findings(app)
    assert code == 2 and "aica-backup offsite push --replace-plaintext" in str(
        found["offsite-plaintext"]["fix"]
    )
    assert target.exists() and objects_on(target) == plain  # reporting changes nothing

    report = run_json(app, "offsite", "push", "--replace-plaintext")
    assert report["ok"] and sorted(report["targets"][0]["replaced"]) == sorted(names)
    assert objects_on(target) == sorted(
        [f"{n}.age" for n in names] + [f"{n}.age.sha256" for n in names]
    )
    assert only_encrypted(target)
    from aica_backup.crypto import load_identities

    keys = load_identities(identity_file)
    copies = {c.name: c for c in offsite.list_copies(open_storage(str(target)))}
    for n in names:
        assert copies[f"{n}.age"].complete
        check_against_manifest(scan_file(target / f"{n}.age", keys))
    (listing,) = run_json(app, "offsite", "list")
    assert listing["plaintext"] == []
    code, found = doctor_findings(app)
    assert "offsite-plaintext" not in found


def doctor_findings(app: App) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = app.run("doctor", "--json", check=False)
    return proc.returncode, {f["code"]: f for f in json.loads(proc.stdout)["findings"]}


def test_one_backup_in_two_forms_is_one_backup_for_retention(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(3)]  # newest first
    nas = LocalStorage(tmp_path / "nas")
    offsite.sync([Target("nas", nas)], archives, work_dir=tmp_path)  # plain copies
    recipient = pyrage.x25519.Identity.generate().to_public()
    # Encryption turned on: each push adds the .age copies, and retention (keep 2) must neither
    # count them as extra backups nor delete them in favour of the plain ones.
    for _ in range(2):
        (report,) = offsite.sync(
            [Target("nas", nas)],
            archives[:2],
            work_dir=tmp_path,
            recipients=[recipient],
            policy=Policy(keep_last=2),
            now=NOW,
        )
        assert report.ok, report.error
    left = states(nas)
    for a in archives[:2]:
        assert left.get(a.name + ".age") is True, left
    assert not any(n.startswith(archives[2].name) for n in left), left  # one backup, both forms
    # Each push after the first has nothing to do: the encrypted copies stayed.
    assert report.pushed == [] and report.pruned == []


@pytest.mark.slow
def test_kill_9_during_an_encrypted_push_leaves_nothing_after_any_next_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path / "app")
    with open(app.uploads / "video.bin", "wb") as fh:  # incompressible: a big archive
        for _ in range(96):
            fh.write(os.urandom(MIB))
    app.run("backup")  # plain: made before encryption was turned on
    _, recipient = keygen(app, tmp_path)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(tmp_path / "nas"))
    meta = app.backups / ".aica-backup"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "offsite", "push"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    caught: list[Path] = []
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline and not caught:
            caught = [p for p in meta.glob(".tmp-*.age*") if p.stat().st_size > 8 * MIB]
            time.sleep(0.005)
        proc.kill()  # SIGKILL while the encrypted copy is being written or uploaded
    finally:
        proc.wait()
    assert caught, "the encrypted temp file was never caught in flight"
    assert all(p.exists() for p in caught)  # what the kill left behind
    app.run("list")  # any command, not only the next backup
    assert no_temp_files(app.backups), sorted(p.name for p in app.backups.rglob(".tmp-*"))


def test_backup_json_with_a_failed_copy_says_one_line_naming_the_target_once(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "nas-mount" / "aica"  # not mounted
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(share))
    proc = app.run("backup", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["offsite"][0]["ok"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "offsite copy failed" in lines[0], proc.stderr
    assert lines[0].count(str(share)) == 1, lines[0]  # not "share: share: …"
    human = app.run("backup", check=False)
    assert human.returncode == 1
    failed = [ln for ln in human.stderr.splitlines() if "offsite copy failed" in ln]
    assert len(failed) == 1 and failed[0].count(str(share)) == 1, human.stderr
    push = app.run("offsite", "push", check=False)
    assert push.returncode == 7
    assert push.stderr.count(str(share)) == 1, push.stderr


def test_offsite_list_never_cuts_names_when_not_on_a_terminal(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / ("a-rather-long-folder-name-for-the-nas-share-" * 3)
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(target))
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal's width must not leak into a pipe
    app.run("backup")
    (archive,) = app.archives()
    proc = app.run("offsite", "list")  # stdout is a pipe
    assert str(target) in proc.stdout
    (row,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("backup_")]
    assert row.split()[0] == archive.name and "complete" in row, proc.stdout


@pytest.mark.parametrize(("retries", "attempts"), [("0", 1), ("2", 3)])
def test_offsite_retries_counts_retries_after_the_first_attempt(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retries: str, attempts: int
) -> None:
    not_a_folder = tmp_path / "nas"
    not_a_folder.write_text("a file where the target folder should be")  # listing fails
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(not_a_folder))
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_RETRIES", retries)
    proc = app.run("offsite", "list", check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.count("retrying in") == attempts - 1, proc.stderr
    if attempts > 1:
        assert f"gave up after {attempts} attempts" in proc.stderr
    # The README says the same as the code.
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (row,) = [ln for ln in readme.splitlines() if ln.startswith("| `offsite.retries`")]
    assert "after its first attempt" in row and "up to 4 attempts" in row


# -- encrypted copies back: identity before the download (issue 14, item 14) -------------------


def encrypted_copy_setup(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Any]:
    """A backup whose only copy is an encrypted one on a folder target; returns (identity
    file, the backup's JSON report)."""
    identity_file, recipient = keygen(app, tmp_path)
    target = tmp_path / "nas"
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(target))
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    report = run_json(app, "backup")
    for p in app.archives():
        p.unlink()
    return identity_file, report


def test_pull_decrypt_needs_the_identity_before_downloading(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity_file, report = encrypted_copy_setup(app, tmp_path, monkeypatch)
    name = report["archive"]
    # No identity anywhere: refused at once, nothing downloaded.
    proc = app.run("offsite", "pull", "--decrypt", check=False)
    assert proc.returncode == 11, proc.stderr
    assert "identity" in proc.stderr
    assert app.archives("backup_*") == [] and no_temp_files(app.backups)
    missing_file = app.run("offsite", "pull", "--identity", str(tmp_path / "nope.txt"), check=False)
    assert missing_file.returncode == 11 and app.archives() == []
    # With it: the plaintext archive, verified, and no encrypted copy beside it.
    pulled = run_json(app, "offsite", "pull", "--decrypt", "--identity", str(identity_file))
    assert pulled["name"] == name and [p.name for p in app.archives()] == [name]
    assert sha256_file(app.backups / name) == report["sha256"]
    check_against_manifest(scan_file(app.backups / name))
    assert no_temp_files(app.backups)


def test_pull_hint_and_restore_from_name_the_identity(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity_file, report = encrypted_copy_setup(app, tmp_path, monkeypatch)
    proc = app.run("offsite", "pull", "--identity", str(identity_file))
    (path,) = app.archives()
    assert path.name == report["archive"] + ".age"
    assert f"restore {path.name} --identity {identity_file}" in proc.stdout, proc.stdout
    path.unlink()
    # restore --from without a key: refused before anything is downloaded.
    refused = app.run("restore", "--from", "1", "--yes", check=False)
    assert refused.returncode == 11, refused.stderr
    assert app.archives() == [] and no_temp_files(app.backups)


def test_undo_command_names_the_identity_for_an_encrypted_safety_backup(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity_file, recipient = keygen(app, tmp_path)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_ENCRYPT", "all")
    run_json(app, "backup")
    result = run_json(app, "restore", "--yes", "--identity", str(identity_file))
    undo = result["undo_command"]
    assert result["safety_backup"].endswith(".age")
    assert f"--identity {identity_file}" in undo, undo
    # The printed command works as it is.
    import shlex

    args = shlex.split(undo)
    assert args[0] == "aica-backup"
    proc = subprocess.run(
        [sys.executable, "-m", "aica_backup", *args[1:]], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_fetch_decrypting_with_a_wrong_key_leaves_nothing(app: App, tmp_path: Path) -> None:
    from aica_backup.errors import CryptoError

    identity = pyrage.x25519.Identity.generate()
    archive = archive_of(app)
    nas = LocalStorage(tmp_path / "nas")
    copy = offsite.push(nas, archive, work_dir=tmp_path, recipients=[identity.to_public()])
    dest = tmp_path / "back"
    dest.mkdir()
    with pytest.raises(CryptoError, match="wrong identity"):
        offsite.fetch(nas, copy.name, dest, [pyrage.x25519.Identity.generate()])
    assert list(dest.iterdir()) == []
    path = offsite.fetch(nas, copy.name, dest, [identity])
    assert path.name == archive.name and sha256_file(path) == archive.sha256
    assert sorted(p.name for p in dest.iterdir()) == [archive.name]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.integration
def test_plaintext_copies_on_s3_are_reported_by_backup_and_replaced(
    app: App, s3_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", s3_location)
    first = run_json(app, "backup")  # before encryption: a plaintext copy on S3
    _, recipient = keygen(app, tmp_path)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("AICA_BACKUP_ENCRYPTION_ENCRYPT", "all")
    second = app.run("backup")
    assert "--replace-plaintext" in second.stderr, second.stderr
    storage = open_storage(s3_location)
    assert {c.name for c in offsite.list_copies(storage) if c.complete} == {
        first["archive"],
        first["archive"] + ".age",
        app.archives()[-1].name,
    }
    report = run_json(app, "offsite", "push", "--replace-plaintext")
    assert report["targets"][0]["replaced"] == [first["archive"]]
    names = {o.name for o in storage.list()}
    assert names and all(n.endswith((".age", ".age.sha256")) for n in names), names
    assert all(c.complete for c in offsite.list_copies(storage))


def test_replace_plaintext_leaves_a_corrupt_copy_and_replaces_the_others(tmp_path: Path) -> None:
    local = tmp_path / "local"
    archives = [fake_archive(local, NOW - timedelta(days=d)) for d in range(2)]
    nas = LocalStorage(tmp_path / "nas")
    offsite.sync([Target("nas", nas)], archives, work_dir=tmp_path)  # plain copies
    bad = tmp_path / "nas" / archives[0].name
    data = bytearray(bad.read_bytes())
    data[10] ^= 0x01  # bit rot: same size, so it still lists as complete
    bad.write_bytes(bytes(data))
    recipient = pyrage.x25519.Identity.generate().to_public()
    (report,) = offsite.sync(  # the local archives are gone: the copies are the only source
        [Target("nas", nas)], [], work_dir=tmp_path, recipients=[recipient], replace=True
    )
    assert not report.ok and "corrupt" in (report.error or "")
    assert report.replaced == [archives[1].name]
    assert states(nas) == {archives[0].name: True, archives[1].name + ".age": True}
    assert report.plaintext == [archives[0].name]
    assert no_temp_files(tmp_path)


def test_a_copy_killed_on_a_folder_target_is_cleared_by_the_next_push(
    app: App, tmp_path: Path
) -> None:
    """kill -9 of ``offsite push`` while it writes to a folder target left the full-size
    ``.tmp-NAME.PID`` there for good: the next push copied NAME again beside it. A push of
    NAME now removes what an earlier, dead push of NAME left."""
    import signal

    big = app.uploads / "big.bin"
    big.write_bytes(os.urandom(80 << 20))
    app.run("backup", "--no-offsite")
    target = tmp_path / "nas"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aica_backup",
            "--root",
            str(app.root),
            "offsite",
            "push",
            str(target),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if target.is_dir() and any(p.name.startswith(".tmp-") for p in target.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the copy ended before it could be killed")
    assert [p for p in target.iterdir() if p.name.startswith(".tmp-")]
    app.run("offsite", "push", str(target))
    assert not [p for p in target.iterdir() if p.name.startswith(".tmp-")]


def test_a_target_folder_that_cannot_be_written_is_named_once(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted but read-only share: the error named the share three times ("SHARE: cannot
    write SHARE/NAME: Read-only file system: SHARE/.tmp-NAME.PID")."""
    from .support.fs import tmpfs

    with tmpfs(tmp_path / "ro", "1m", readonly=True) as share:
        monkeypatch.setenv("AICA_BACKUP_OFFSITE_TARGETS", str(share))
        monkeypatch.setenv("AICA_BACKUP_OFFSITE_RETRIES", "0")
        proc = app.run("backup", "--json", check=False)
        assert proc.returncode == 1, proc.stderr
        [line] = [ln for ln in proc.stderr.splitlines() if "offsite copy failed" in ln]
        assert line.count(str(share)) == 1 and "Read-only file system" in line, line
