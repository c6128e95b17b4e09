"""One conformance suite that every storage backend passes, against real servers.

Backends: a local folder, S3 on SeaweedFS (boto3), rclone with a local remote, and rclone with an
S3 remote on the same SeaweedFS. Each test gets a fresh, empty location.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aica_backup.errors import StorageError, UsageError
from aica_backup.storage import NotFoundError, RetryingStorage, Storage, open_storage
from aica_backup.storage.local import LocalStorage
from aica_backup.storage.rclone import RcloneStorage
from aica_backup.storage.s3 import MIN_CHUNK, S3Storage

from ..support.s3 import BUCKET, SeaweedServer

MIB = 1 << 20

# Every form of name the tool stores: archives of both kinds, compressions, sequence
# numbers, encryption, and their checksum markers.
ARCHIVE_NAMES = [
    "backup_20241010_030000.tar.gz",
    "backup_20241010_030000_12.tar.zst.age",
    "pre-restore_20241231_235959_1.tar.gz.age",
    "backup_20241010_030000.tar.gz.sha256",
]


@dataclass
class Target:
    kind: str
    storage: Storage
    server: SeaweedServer | None = None
    key_prefix: str = ""  # for server-side checks on S3 backends

    def etag(self, name: str) -> str:
        assert self.server is not None
        head = self.server.client().head_object(Bucket=BUCKET, Key=f"{self.key_prefix}/{name}")
        return str(head["ETag"]).strip('"')


BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("retry-local", id="retry-local"),  # wrappers are storages too
    pytest.param("s3", id="s3", marks=pytest.mark.integration),
    pytest.param("rclone-local", id="rclone-local", marks=pytest.mark.integration),
    pytest.param("rclone-s3", id="rclone-s3", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    kind: str = request.param
    if kind == "local":
        return Target(kind, open_storage(str(tmp_path / "target")))
    if kind == "retry-local":
        return Target(kind, RetryingStorage(open_storage(str(tmp_path / "target")), 2))
    if kind == "s3":
        location: str = request.getfixturevalue("s3_location")
        server: Any = request.getfixturevalue("seaweed")
        storage = open_storage(location, chunk_size=MIN_CHUNK)
        assert isinstance(storage, S3Storage)
        return Target(kind, storage, server, storage.prefix)
    if kind == "rclone-local":
        request.getfixturevalue("rclone_env")
        return Target(kind, open_storage(f"rclone:local:{tmp_path / 'remote'}"))
    location = request.getfixturevalue("rclone_s3_location")
    storage = open_storage(location)
    assert isinstance(storage, RcloneStorage)
    prefix = location.split("/", 1)[1]
    return Target(kind, storage, request.getfixturevalue("seaweed"), prefix)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def fetch(storage: Storage, name: str) -> bytes:
    buf = io.BytesIO()
    storage.get(name, buf)
    return buf.getvalue()


def test_put_get_round_trip_is_byte_exact(target: Target, tmp_path: Path) -> None:
    data = os.urandom(300_000) + bytes(range(256)) * 10
    target.storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", data))
    assert fetch(target.storage, "backup_20241010_030000.tar.gz") == data


def test_empty_object(target: Target, tmp_path: Path) -> None:
    target.storage.put("backup_20241010_030000.tar.gz.sha256", write(tmp_path / "e", b""))
    assert fetch(target.storage, "backup_20241010_030000.tar.gz.sha256") == b""
    info = target.storage.stat("backup_20241010_030000.tar.gz.sha256")
    assert info is not None and info.size == 0


def test_list_and_stat(target: Target, tmp_path: Path) -> None:
    assert target.storage.list() == []  # a location nobody wrote to yet is empty, not an error
    before = datetime.now(UTC) - timedelta(minutes=5)
    for i, name in enumerate(ARCHIVE_NAMES):
        target.storage.put(name, write(tmp_path / f"f{i}", b"x" * (i + 1)))
    listed = {o.name: o for o in target.storage.list()}
    assert sorted(listed) == sorted(ARCHIVE_NAMES)
    for i, name in enumerate(ARCHIVE_NAMES):
        assert listed[name].size == i + 1
        assert listed[name].mtime.tzinfo is not None
        info = target.storage.stat(name)
        assert info is not None and info.name == name and info.size == i + 1
        assert info.mtime > before


def test_delete(target: Target, tmp_path: Path) -> None:
    src = write(tmp_path / "a", b"data")
    target.storage.put("backup_20241010_030000.tar.gz", src)
    target.storage.put("backup_20241011_030000.tar.gz", src)
    target.storage.delete("backup_20241010_030000.tar.gz")
    assert [o.name for o in target.storage.list()] == ["backup_20241011_030000.tar.gz"]
    assert target.storage.stat("backup_20241010_030000.tar.gz") is None
    # Deleting what is already gone is not an error (a retried delete must succeed).
    target.storage.delete("backup_20241010_030000.tar.gz")


def test_missing_object(target: Target) -> None:
    assert target.storage.stat("backup_20990101_000000.tar.gz") is None
    buf = io.BytesIO()
    with pytest.raises(NotFoundError):
        target.storage.get("backup_20990101_000000.tar.gz", buf)
    assert buf.getvalue() == b""
    assert isinstance(NotFoundError("x"), StorageError)


def test_overwrite_replaces(target: Target, tmp_path: Path) -> None:
    name = "backup_20241010_030000.tar.gz"
    target.storage.put(name, write(tmp_path / "a", b"first version, longer"))
    target.storage.put(name, write(tmp_path / "b", b"second"))
    assert fetch(target.storage, name) == b"second"
    assert [(o.name, o.size) for o in target.storage.list()] == [(name, 6)]


@pytest.mark.parametrize("bad", ["", "../escape.tar.gz", "a/b.tar.gz", ".hidden", "sp ace"])
def test_names_outside_our_alphabet_are_refused(target: Target, tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        target.storage.put(bad, write(tmp_path / "a", b"x"))
    with pytest.raises(UsageError):
        target.storage.get(bad, io.BytesIO())


def test_large_object_goes_up_in_parts(target: Target, tmp_path: Path) -> None:
    # 12 MiB with 5 MiB parts on the S3 backends: three parts, each hashed on the way back.
    src = tmp_path / "big"
    sha = hashlib.sha256()
    with open(src, "wb") as fh:
        for _ in range(12):
            block = os.urandom(MIB)
            sha.update(block)
            fh.write(block)
    name = "backup_20241010_030000.tar.gz.age"
    target.storage.put(name, src)
    got = hashlib.sha256()

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            got.update(b)
            return len(b)

    target.storage.get(name, Sink())  # type: ignore[arg-type]
    assert got.hexdigest() == sha.hexdigest()
    info = target.storage.stat(name)
    assert info is not None and info.size == 12 * MIB
    if target.server is not None:
        assert target.etag(name).endswith("-3")  # a multipart upload's ETag counts its parts


def test_location_never_holds_credentials(target: Target) -> None:
    loc = target.storage.location
    assert "aica-test-secret" not in loc and "aica-test-access" not in loc


# -- backend-specific behaviour --------------------------------------------------------


def test_open_storage_parses_locations(tmp_path: Path) -> None:
    assert isinstance(open_storage("/mnt/nas/x"), LocalStorage)
    local = open_storage("file:///mnt/nas/with%20space")
    assert isinstance(local, LocalStorage) and local.folder == Path("/mnt/nas/with space")
    rel = open_storage("offsite-copies", base=tmp_path)
    assert isinstance(rel, LocalStorage) and rel.folder == tmp_path / "offsite-copies"
    s3 = open_storage("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.location) == (
        "bucket",
        "some/prefix",
        "s3://bucket/some/prefix",
    )
    rc = open_storage("rclone:gdrive:backups/aica")
    assert isinstance(rc, RcloneStorage) and rc.remote == "gdrive:backups/aica"
    for bad in ("ftp://host/x", "s3://", "rclone:nocolon", "file://host/x", ""):
        with pytest.raises(UsageError):
            open_storage(bad)


def test_local_target_is_private_and_ignores_temp_files(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "nas"))
    storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", b"x"))
    assert (tmp_path / "nas").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "nas" / "backup_20241010_030000.tar.gz").stat().st_mode & 0o777 == 0o600
    (tmp_path / "nas" / ".tmp-backup_20241011_030000.tar.gz.123").write_bytes(b"half")
    (tmp_path / "nas" / "subfolder").mkdir()
    assert [o.name for o in storage.list()] == ["backup_20241010_030000.tar.gz"]


def test_local_target_refuses_to_create_an_unmounted_share(tmp_path: Path) -> None:
    # /mnt/nas not mounted: its folder must not silently appear on the local disk.
    storage = open_storage(str(tmp_path / "mnt-nas" / "aica-backups"))
    with pytest.raises(StorageError, match="parent folder does not exist"):
        storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", b"x"))
    assert not (tmp_path / "mnt-nas").exists()


@pytest.mark.integration
def test_s3_wrong_credentials_fail_without_retrying(
    s3_location: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aica_backup.storage import AccessError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    storage = open_storage(s3_location)
    with pytest.raises(AccessError) as info:
        storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", b"x"))
    assert "wrong-secret" not in str(info.value)


@pytest.mark.integration
def test_s3_missing_bucket_is_an_access_error(s3_env: SeaweedServer, tmp_path: Path) -> None:
    from aica_backup.storage import AccessError

    storage = open_storage("s3://no-such-bucket-aica/x")
    with pytest.raises(AccessError, match="NoSuchBucket"):
        storage.list()


@pytest.mark.integration
def test_rclone_unknown_remote_is_an_access_error(rclone_env: Path) -> None:
    from aica_backup.storage import AccessError

    with pytest.raises(AccessError, match="nosuchremote"):
        open_storage("rclone:nosuchremote:path").list()


# -- the retry wrapper ----------------------------------------------------------------------


class Flaky(LocalStorage):
    """A real folder storage whose next ``failures`` operations fail like a dropped link
    (a get fails after writing part of the object, the hard case for retries)."""

    def __init__(self, folder: Path, failures: int) -> None:
        super().__init__(folder)
        self.failures = failures
        self.calls = 0

    def _maybe_fail(self, dest: Any = None) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            if dest is not None:
                dest.write(b"partial garbage")
            raise StorageError("connection reset by peer")

    def put(self, name: str, src: Path) -> None:
        self._maybe_fail()
        super().put(name, src)

    def get(self, name: str, dest: Any) -> None:
        self._maybe_fail(dest)
        super().get(name, dest)

    def list(self) -> list[Any]:
        self._maybe_fail()
        return super().list()


def test_retry_recovers_from_transient_failures(tmp_path: Path) -> None:
    flaky = Flaky(tmp_path / "t", failures=2)
    pauses: list[float] = []
    retries: list[int] = []
    storage = RetryingStorage(
        flaky, 3, delay=1.0, sleep=pauses.append, on_retry=lambda _l, n, _e, _p: retries.append(n)
    )
    storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", b"payload"))
    assert flaky.calls == 3 and retries == [1, 2]
    assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0  # exponential, with jitter
    flaky.failures = 2
    buf = io.BytesIO()
    storage.get("backup_20241010_030000.tar.gz", buf)
    assert buf.getvalue() == b"payload"  # partial bytes of failed attempts were rewound


def test_retry_gives_up_and_says_so(tmp_path: Path) -> None:
    flaky = Flaky(tmp_path / "t", failures=10)
    storage = RetryingStorage(flaky, 2, sleep=lambda _s: None)
    with pytest.raises(StorageError, match=r"connection reset.*gave up after 3 attempts"):
        storage.list()
    assert flaky.calls == 3


def test_retry_never_retries_missing_objects(tmp_path: Path) -> None:
    flaky = Flaky(tmp_path / "t", failures=0)
    slept: list[float] = []
    storage = RetryingStorage(flaky, 5, sleep=slept.append)
    with pytest.raises(NotFoundError):
        storage.get("backup_20241010_030000.tar.gz", io.BytesIO())
    assert slept == []


@pytest.mark.integration
def test_rclone_local_remote_writes_private_files(rclone_env: Path, tmp_path: Path) -> None:
    # Archives hold the app's secrets: a folder reached through rclone is as private as a
    # folder target (0600 files, 0700 folder), whatever the umask of the calling shell.
    old = os.umask(0o022)
    try:
        storage = open_storage(f"rclone:local:{tmp_path / 'remote' / 'aica'}")
        storage.put("backup_20241010_030000.tar.gz", write(tmp_path / "a", b"x" * 1000))
    finally:
        os.umask(old)
    folder = tmp_path / "remote" / "aica"
    assert (folder / "backup_20241010_030000.tar.gz").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
