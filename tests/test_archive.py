"""The archive format: writer → reader round trips, plain ``tar -xzf``, and hostile archives.

Every hostile archive is generated here, as code, with Python's tarfile and gzip: the test shows
what the fixture is, and nothing binary is checked in. Each one is read by the scanner and
unpacked by ``staging.stage``, which must never write outside its destination folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aica_backup import staging
from aica_backup.archive import Limits, ScanResult, check_against_manifest, scan_file
from aica_backup.archive.reader import MAX_HEADER_BYTES, scan_archive
from aica_backup.archive.writer import ArchiveWriter, ustar_header
from aica_backup.backup import BackupOptions, create_archive
from aica_backup.codec import decompressing_reader
from aica_backup.errors import ArchiveError, ExitCode, StorageError
from aica_backup.layout import Component, Layout
from aica_backup.manifest import ComponentInfo, Manifest, Member
from aica_backup.staging import stage
from tests.support.app import SECRET, App, make_app
from tests.support.fs import listing, tmpfs
from tests.support.strategies import upload_name

UPLOADS = "public/uploads"
ARCHIVE_NAME = "backup_20240101_030000.tar.gz"
FAST = BackupOptions(check="none", threads=1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_bytes(data: bytes, limits: Limits = Limits()) -> ScanResult:  # noqa: B008
    """What ``scan_file`` does, on an archive held in memory."""
    with decompressing_reader(io.BytesIO(data), "gzip") as stream:
        return scan_archive(stream, limits=limits)


# --------------------------------------------------------------------------------------------
# Round trips of real files.

name_st = upload_name(16).filter(lambda s: len(s.encode()) < 200)
Tree = dict[str, Any]  # name -> bytes (a file) or Tree (a folder)
tree_st: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(name_st, st.binary(max_size=3000), max_size=4),
    lambda children: st.dictionaries(
        name_st, st.one_of(st.binary(max_size=3000), children), max_size=4
    ),
    max_leaves=12,
)


def write_tree(folder: Path, tree: Tree, modes: Iterable[int]) -> dict[str, bytes]:
    """Create ``tree`` under ``folder``; return every file's path relative to it and bytes."""
    mode_iter = iter(modes)
    files: dict[str, bytes] = {}

    def go(here: Path, node: Tree, rel: str) -> None:
        here.mkdir(parents=True, exist_ok=True)
        for name, value in node.items():
            child_rel = f"{rel}/{name}" if rel else name
            if isinstance(value, bytes):
                (here / name).write_bytes(value)
                (here / name).chmod(next(mode_iter, 0o644))
                files[child_rel] = value
            else:
                go(here / name, value, child_rel)

    go(folder, tree, "")
    return files


@settings(max_examples=25, deadline=None)
@given(tree_st, st.lists(st.sampled_from([0o600, 0o644, 0o640, 0o755, 0o400]), max_size=12))
def test_round_trip_of_random_trees(tree: Tree, modes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        files = write_tree(root / UPLOADS, tree, modes)
        layout = Layout(root=root, database_optional=True)
        result = create_archive(layout, FAST)

        scan = scan_file(result.path)
        assert check_against_manifest(scan) is None
        assert scan.files == {
            f"{UPLOADS}/{rel}": (sha(data), len(data)) for rel, data in files.items()
        }
        on_disk_dirs = {UPLOADS} | {
            f"{UPLOADS}/{p.relative_to(root / UPLOADS)}"
            for p in (root / UPLOADS).rglob("*")
            if p.is_dir()
        }
        assert scan.dirs == on_disk_dirs
        for member in scan.manifest.files():
            disk = root / member.path
            assert member.mode == disk.stat().st_mode & 0o7777
            assert member.size == disk.stat().st_size
        uploads = scan.manifest.components[Component.UPLOADS]
        assert uploads.details == {
            "file_count": len(files),
            "total_bytes": sum(map(len, files.values())),
        }
        assert scan.manifest.components[Component.DATABASE].present is False


def test_round_trip_through_staging(app: App, tmp_path: Path) -> None:
    result = create_archive(Layout(root=app.root))
    staged = stage(result.path, tmp_path / "staged")
    assert staged.ok and staged.problems == [] and staged.db_integrity == "ok"
    assert (tmp_path / "staged" / ".env.production").read_bytes() == app.env.read_bytes()
    for rel, data in app.uploads_tree().items():
        assert (tmp_path / "staged" / UPLOADS / rel).read_bytes() == data
    conn = sqlite3.connect(
        f"file:{tmp_path / 'staged' / 'backend' / 'aica_sys.db'}?mode=ro", uri=True
    )
    try:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (50,)
    finally:
        conn.close()


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread only on Linux")
def test_stream_steps_back_behind_the_database_check(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database check is the long pole of a verify or a restore: the archive is read in a
    thread at a lower CPU priority, the check runs at the caller's, and the caller's own
    thread is left as it was."""
    result = create_archive(Layout(root=app.root))
    seen: dict[str, int] = {}
    real = staging.integrity_of

    def integrity_of(path: Path, mode: Any = "integrity") -> str:
        seen["check"] = os.getpriority(os.PRIO_PROCESS, 0)  # per thread on Linux
        return real(path, mode)

    monkeypatch.setattr(staging, "integrity_of", integrity_of)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    staged = stage(
        result.path,
        tmp_path / "staged",
        progress=lambda _n: seen.setdefault("stream", os.getpriority(os.PRIO_PROCESS, 0)),
    )
    assert staged.ok
    assert seen == {"check": before, "stream": min(19, before + staging.STEP_BACK)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_dropped_database_is_checked_then_removed(app: App, tmp_path: Path) -> None:
    """verify's way: only the database is written, checked, and removed while the rest of the
    archive streams on; the check's result stands."""
    result = create_archive(Layout(root=app.root))
    staged = stage(
        result.path, tmp_path / "staged", write=lambda _e, first: first, drop_database=True
    )
    assert staged.ok and staged.db_integrity == "ok"
    assert [p for p in (tmp_path / "staged").rglob("*") if not p.is_dir()] == []


def test_ctrl_c_stops_the_stream_at_its_next_block(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C reaches the caller while the archive streams in a thread of its own: the
    stream stops at its next block instead of reading the archive to its end."""
    result = create_archive(Layout(root=app.root))
    events: list[threading.Event] = []

    class Threading:  # staging's view of the threading module, keeping the events it makes
        def __getattr__(self, name: str) -> Any:
            return getattr(threading, name)

        def Event(self) -> threading.Event:
            events.append(threading.Event())
            return events[-1]

    monkeypatch.setattr(staging, "threading", Threading())
    calls: list[int] = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            assert events[0].wait(10)  # the caller has passed it on

    # Python's own handler, whatever the suite inherited (a shell's background job ignores
    # SIGINT, and Python then leaves it ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            stage(result.path, tmp_path / "staged", progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1
    assert [t.name for t in threading.enumerate() if t.name.startswith("stage-")] == []


def test_names_that_are_not_utf8_and_backslashes_survive(app: App, tmp_path: Path) -> None:
    """Uploads from old clients can carry Shift_JIS names; Linux allows '\\' in a name."""
    sjis = os.fsencode(app.uploads) + b"/" + "報告書.txt".encode("shift_jis")
    with open(sjis, "wb") as fh:
        fh.write(b"legacy client")
    (app.uploads / "a\\b.txt").write_bytes(b"backslash")
    result = create_archive(Layout(root=app.root), FAST)
    staged = stage(result.path, tmp_path / "staged")
    assert staged.ok, staged.problems
    staged_sjis = (
        os.fsencode(tmp_path / "staged" / UPLOADS) + b"/" + "報告書.txt".encode("shift_jis")
    )
    with open(staged_sjis, "rb") as fh:
        assert fh.read() == b"legacy client"
    assert (tmp_path / "staged" / UPLOADS / "a\\b.txt").read_bytes() == b"backslash"


def test_system_tar_extracts_the_guides_layout(app: App, tmp_path: Path) -> None:
    """The disaster-recovery path of last resort: no aica-backup, only tar."""
    app.add_rows(100, "before-backup")
    app.run("backup")
    [archive] = app.archives()
    out = tmp_path / "extracted"
    out.mkdir()
    proc = subprocess.run(
        ["tar", "-xzf", str(archive), "-C", str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stderr == ""

    assert (out / "backend" / "aica_sys.db").is_file()
    assert (out / UPLOADS / "docs" / "報告書 2024.txt").read_text() == "日本語のファイル\n"
    assert (out / UPLOADS / "empty-folder").is_dir()
    assert (out / ".env.production").read_bytes() == app.env.read_bytes()
    assert (out / ".env.production").stat().st_mode & 0o777 == 0o600
    assert not list(out.rglob("*-wal")) and not list(out.rglob("*-shm"))

    manifest = json.loads((out / "manifest.json").read_bytes())
    extracted = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    listed = {m["path"] for m in manifest["members"] if m["type"] == "file"}
    assert extracted == listed
    for m in manifest["members"]:
        if m["type"] == "file":
            assert sha((out / m["path"]).read_bytes()) == m["sha256"], m["path"]
            assert (out / m["path"]).stat().st_size == m["size"]
    conn = sqlite3.connect(out / "backend" / "aica_sys.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (150,)
    finally:
        conn.close()

    listed_by_tar = subprocess.run(
        ["tar", "-tzvf", str(archive)], capture_output=True, text=True, check=True
    )
    assert SECRET not in listed_by_tar.stdout


# --------------------------------------------------------------------------------------------
# Hostile archives, generated as code.


def member(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, **attrs: Any
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data if info.size else None


def manifest_bytes(files: dict[str, bytes], dirs: Iterable[str] = (UPLOADS,)) -> bytes:
    members = [Member(d, "dir", 0, 0o755, 1_700_000_000, "", Component.UPLOADS) for d in dirs]
    members += [
        Member(path, "file", len(data), 0o644, 1_700_000_000, sha(data), Component.UPLOADS)
        for path, data in files.items()
    ]
    return Manifest(
        tool_version="test",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        host="test",
        app_root="/srv/app",
        app_name="aica-sys",
        compression="gzip",
        components={
            Component.DATABASE: ComponentInfo("backend/aica_sys.db", False),
            Component.UPLOADS: ComponentInfo(UPLOADS, True, {"file_count": len(files)}),
            Component.CONFIG: ComponentInfo(".env.production", False),
        },
        members=members,
    ).to_json()


GOOD_FILES = {f"{UPLOADS}/a.txt": b"hello", f"{UPLOADS}/b.bin": bytes(range(256)) * 3}


def honest(files: dict[str, bytes] = GOOD_FILES) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        member(UPLOADS, kind=tarfile.DIRTYPE),
        *(member(path, data) for path, data in files.items()),
    ]


def with_manifest(
    entries: list[tuple[tarfile.TarInfo, bytes | None]], files: dict[str, bytes] = GOOD_FILES
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [*entries, member("manifest.json", manifest_bytes(files))]


def tar_of(entries: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def raw_header(name: str, kind: bytes, size: int) -> bytes:
    """One header block announcing ``size`` bytes, built without tarfile's checks."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def tar_end_offset(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> int:
    """Offset of the end-of-archive marker in ``tar_of(entries)``."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    for info, data in entries:
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    offset = tar.offset
    tar.close()
    return offset


@dataclass(frozen=True)
class Hostile:
    make: Callable[[Path], bytes]  # given a folder outside staging, return the archive file bytes
    error: str  # what the ArchiveError must say


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _symlink_out(outside: Path) -> bytes:
    link = f"{UPLOADS}/evil"
    return gz(
        tar_of(
            with_manifest(
                [
                    *honest(),
                    member(link, kind=tarfile.SYMTYPE, linkname=str(outside)),
                    member(f"{link}/pwned.txt", b"pwned"),
                ]
            )
        )
    )


def _old_gnu_sparse(_outside: Path) -> bytes:
    info, _ = member(f"{UPLOADS}/sparse.bin", kind=tarfile.GNUTYPE_SPARSE)
    return gz(tar_of(with_manifest([*honest(), (info, None)])))


def _pax_sparse(_outside: Path) -> bytes:
    info, data = member(f"{UPLOADS}/sparse.bin", b"12345")
    info.pax_headers = {
        "GNU.sparse.map": "0,5",
        "GNU.sparse.size": "5",
        "GNU.sparse.numblocks": "1",
    }
    return gz(tar_of(with_manifest([*honest(), (info, data)])))


def _global_pax_header(_outside: Path) -> bytes:
    glob = tarfile.TarInfo("pax_global_header")
    glob.type = tarfile.XGLTYPE
    glob.pax_headers = {f"k{i}": "v" for i in range(1000)}
    return gz(tar_of(with_manifest([(glob, None), *honest()])))


def _negative_size(_outside: Path) -> bytes:
    info, _ = member(f"{UPLOADS}/evil")
    info.pax_headers = {"size": "-1"}
    return gz(tar_of(with_manifest([*honest(), (info, None)])))


def _oversized_header(kind: bytes) -> Callable[[Path], bytes]:
    def make(_outside: Path) -> bytes:
        # Announces 1 GiB of header data, then the stream simply goes on: a reader that took
        # the header into memory first would allocate 1 GiB and fail only later.
        return gz(raw_header("././@PaxHeader", kind, 1 << 30) + bytes(64 * 1024))

    return make


def _header_chain(_outside: Path) -> bytes:
    record = b"20 comment=abcdefgh\n"
    chain = b"".join(
        raw_header("././@PaxHeader", tarfile.XHDTYPE, len(record))
        + record
        + bytes(512 - len(record))
        for _ in range(5000)
    )
    return gz(chain + tar_of(with_manifest(honest())))


def _after_manifest(_outside: Path) -> bytes:
    return gz(tar_of([*with_manifest(honest()), member(f"{UPLOADS}/late.txt", b"late")]))


def _duplicate(_outside: Path) -> bytes:
    return gz(tar_of(with_manifest([*honest(), member(f"{UPLOADS}/a.txt", b"HELLO")])))


def _dir_then_file(_outside: Path) -> bytes:
    return gz(
        tar_of(
            with_manifest(
                [
                    *honest(),
                    member(f"{UPLOADS}/x", kind=tarfile.DIRTYPE),
                    member(f"{UPLOADS}/x", b"x"),
                ]
            )
        )
    )


def _no_manifest(_outside: Path) -> bytes:
    return gz(tar_of(honest()))


def _end_marker_replaced(_outside: Path) -> bytes:
    entries = with_manifest(honest())
    data = bytearray(tar_of(entries))
    end = tar_end_offset(entries)
    data[end : end + 512] = b"\x7f" * 512
    return gz(bytes(data))


def _gzip_garbage_appended(_outside: Path) -> bytes:
    return gz(tar_of(with_manifest(honest()))) + b"this is not gzip"


def _plain_tar(_outside: Path) -> bytes:
    return tar_of(with_manifest(honest()))


def _truncated(cut: Callable[[int], int]) -> Callable[[Path], bytes]:
    def make(_outside: Path) -> bytes:
        data = gz(tar_of(with_manifest(honest())))
        return data[: cut(len(data))]

    return make


HOSTILE: dict[str, Hostile] = {
    "dot-dot member": Hostile(
        lambda o: gz(
            tar_of(with_manifest([*honest(), member(f"{UPLOADS}/../../{o.name}/escape.txt", b"x")]))
        ),
        "unsafe member name",
    ),
    "leading dot-dot": Hostile(
        lambda o: gz(tar_of(with_manifest([member("../escape.txt", b"x")]))), "unsafe member name"
    ),
    "absolute path": Hostile(
        lambda o: gz(tar_of(with_manifest([*honest(), member(str(o / "escape.txt"), b"x")]))),
        "unsafe member name",
    ),
    "symlink out of the tree": Hostile(_symlink_out, "refusing symbolic link"),
    "hard link": Hostile(
        lambda o: gz(
            tar_of(
                with_manifest(
                    [
                        *honest(),
                        member(f"{UPLOADS}/hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd"),
                    ]
                )
            )
        ),
        "refusing hard link",
    ),
    "character device": Hostile(
        lambda o: gz(
            tar_of(
                with_manifest(
                    [
                        *honest(),
                        member(f"{UPLOADS}/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3),
                    ]
                )
            )
        ),
        "refusing character device",
    ),
    "block device": Hostile(
        lambda o: gz(
            tar_of(
                with_manifest(
                    [
                        *honest(),
                        member(f"{UPLOADS}/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0),
                    ]
                )
            )
        ),
        "refusing block device",
    ),
    "FIFO": Hostile(
        lambda o: gz(
            tar_of(with_manifest([*honest(), member(f"{UPLOADS}/pipe", kind=tarfile.FIFOTYPE)]))
        ),
        "refusing FIFO",
    ),
    "contiguous file type": Hostile(
        lambda o: gz(
            tar_of(with_manifest([*honest(), member(f"{UPLOADS}/c", kind=tarfile.CONTTYPE)]))
        ),
        "unsupported member type",
    ),
    "old GNU sparse member": Hostile(_old_gnu_sparse, "refusing sparse file"),
    "pax sparse member": Hostile(_pax_sparse, "refusing sparse file"),
    "oversized pax header": Hostile(_oversized_header(tarfile.XHDTYPE), "oversized tar header"),
    "oversized global pax header": Hostile(
        _oversized_header(tarfile.XGLTYPE), "oversized tar header"
    ),
    "oversized GNU long name": Hostile(
        _oversized_header(tarfile.GNUTYPE_LONGNAME), "oversized tar header"
    ),
    "thousands of pax headers in a row": Hostile(_header_chain, "too many tar header blocks"),
    "global pax header (every key applied to every member)": Hostile(
        _global_pax_header, "refusing global pax header"
    ),
    "negative member size (a reader looping forever)": Hostile(_negative_size, "negative size"),
    "member after manifest.json": Hostile(_after_manifest, "follows the manifest"),
    "duplicate member": Hostile(_duplicate, "appears twice"),
    "folder and file of one name": Hostile(_dir_then_file, "appears twice"),
    "no manifest": Hostile(_no_manifest, "no manifest.json"),
    "garbage in place of the end marker": Hostile(_end_marker_replaced, "damaged tar header"),
    "garbage after the tar end": Hostile(
        lambda o: gz(tar_of(with_manifest(honest())) + b"trailing garbage"),
        "unexpected data after the end",
    ),
    "garbage after the gzip stream": Hostile(_gzip_garbage_appended, "damaged"),
    "not gzip at all": Hostile(_plain_tar, "damaged"),
    "empty file": Hostile(lambda o: b"", "archive"),
    "truncated to 10 bytes": Hostile(_truncated(lambda n: 10), "damaged or truncated"),
    "truncated in half": Hostile(_truncated(lambda n: n // 2), "truncated"),
    "gzip trailer cut": Hostile(_truncated(lambda n: n - 4), "truncated"),
    "last byte cut": Hostile(_truncated(lambda n: n - 1), "truncated"),
    "unsafe path inside the manifest": Hostile(
        lambda o: gz(tar_of([*honest(), member("manifest.json", manifest_bytes({"../x": b""}))])),
        "unsafe member path",
    ),
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the staging area that hostile archives aim at."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("must survive")
    return folder


def _write(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir(exist_ok=True)
    path = folder / ARCHIVE_NAME
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_archive_refused_by_scan(case: str, tmp_path: Path, outside: Path) -> None:
    path = _write(tmp_path, HOSTILE[case].make(outside))
    with pytest.raises(ArchiveError) as info:
        scan_file(path)
    assert HOSTILE[case].error in str(info.value)
    assert info.value.exit_code == ExitCode.ARCHIVE
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_staging_a_hostile_archive_writes_nothing_outside(
    case: str, tmp_path: Path, outside: Path
) -> None:
    path = _write(tmp_path, HOSTILE[case].make(outside))
    (tmp_path / "work").mkdir()
    dest = tmp_path / "work" / "dest"
    before = listing(tmp_path, skip=dest)
    with pytest.raises(ArchiveError) as info:
        stage(path, dest, check="none")
    assert HOSTILE[case].error in str(info.value)
    assert listing(tmp_path, skip=dest) == before
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_oversized_pax_header_is_refused_before_it_is_read() -> None:
    """The header claims 1 GiB; the stream is endless zeros. Refused after reading ~nothing."""

    class EndlessZeros(io.RawIOBase):
        def __init__(self, head: bytes) -> None:
            self.head = head
            self.served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = len(buffer)
            chunk = self.head[self.served : self.served + n]
            chunk += bytes(n - len(chunk))
            buffer[:n] = chunk
            self.served += n
            if self.served > 64 << 20:
                raise AssertionError("the reader is swallowing the oversized header")
            return n

    stream = EndlessZeros(raw_header("././@PaxHeader", tarfile.XHDTYPE, 1 << 30))
    with pytest.raises(ArchiveError, match="oversized tar header"):
        scan_archive(io.BufferedReader(stream))
    assert stream.served < 4 * max(MAX_HEADER_BYTES, 1 << 20)


def test_member_count_cap(tmp_path: Path) -> None:
    many = {f"{UPLOADS}/{i}.txt": b"x" for i in range(20)}
    path = _write(tmp_path, gz(tar_of(with_manifest(honest(many), many))))
    assert len(scan_file(path).files) == 20
    with pytest.raises(ArchiveError, match="more than 10 members"):
        scan_file(path, limits=Limits(max_members=10))


# Archives that read cleanly but disagree with their manifest: reported, never accepted.
MISMATCHED: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "member not in the manifest": (
        [
            *honest(),
            member(f"{UPLOADS}/smuggled.txt", b"x"),
            member("manifest.json", manifest_bytes(GOOD_FILES)),
        ],
        "not listed in the manifest",
    ),
    "SHA-256 mismatch": (
        with_manifest(
            honest(
                {f"{UPLOADS}/a.txt": b"HELLO", f"{UPLOADS}/b.bin": GOOD_FILES[f"{UPLOADS}/b.bin"]}
            )
        ),
        "SHA-256 mismatch",
    ),
    "size mismatch": (
        with_manifest(
            honest(
                {f"{UPLOADS}/a.txt": b"hello!", f"{UPLOADS}/b.bin": GOOD_FILES[f"{UPLOADS}/b.bin"]}
            )
        ),
        "differs from the manifest",
    ),
    "file missing": (
        with_manifest(honest({f"{UPLOADS}/a.txt": b"hello"})),
        "missing from the archive",
    ),
    "folder missing": (with_manifest(honest()[1:]), "folder listed in the manifest is missing"),
}


@pytest.mark.parametrize("case", list(MISMATCHED), ids=list(MISMATCHED))
def test_mismatch_reported_by_scan_and_stage(case: str, tmp_path: Path) -> None:
    entries, why = MISMATCHED[case]
    path = _write(tmp_path, gz(tar_of(entries)))
    with pytest.raises(ArchiveError, match=why.replace("-", r"\-")):
        check_against_manifest(scan_file(path))
    (tmp_path / "work").mkdir()
    dest = tmp_path / "work" / "dest"
    before = listing(tmp_path, skip=dest)
    staged = stage(path, dest, check="none")
    assert not staged.ok
    assert any(why in problem for _, problem in staged.problems)
    with pytest.raises(ArchiveError):
        staged.raise_if_bad()
    assert listing(tmp_path, skip=dest) == before


def test_trailing_zeros_after_gzip_are_harmless(tmp_path: Path) -> None:
    """Tape-style zero padding after the gzip stream changes no content: accepted."""
    path = _write(tmp_path, gz(tar_of(with_manifest(honest()))) + bytes(4096))
    scan = scan_file(path)
    check_against_manifest(scan)
    assert scan.files == {p: (sha(d), len(d)) for p, d in GOOD_FILES.items()}


# --------------------------------------------------------------------------------------------
# Gzip bombs: 2 GiB of zeros in a ~2 MB file. Built from independent gzip members (a valid
# multi-member gzip stream), so making it costs one 64 MiB compression, not 2 GiB.

BOMB_SIZE = 2 << 30


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chunk = 64 << 20
    zeros_member = gzip.compress(bytes(chunk), compresslevel=9, mtime=0)
    head = tar_of([member(UPLOADS, kind=tarfile.DIRTYPE)])
    head = head[: tar_end_offset([member(UPLOADS, kind=tarfile.DIRTYPE)])]
    header = raw_header(f"{UPLOADS}/zeros.bin", tarfile.REGTYPE, BOMB_SIZE)
    manifest = manifest_bytes({f"{UPLOADS}/zeros.bin": b""})
    tail = tar_of([member("manifest.json", manifest)])
    path = tmp_path_factory.mktemp("bomb") / ARCHIVE_NAME
    with open(path, "wb") as fh:
        fh.write(gzip.compress(head + header, mtime=0))
        for _ in range(BOMB_SIZE // chunk):
            fh.write(zeros_member)
        fh.write(gzip.compress(tail, mtime=0))
    assert path.stat().st_size < 8 << 20
    return path


def test_gzip_bomb_refused_by_the_byte_cap(bomb: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="decompression bomb") as info:
        scan_file(bomb, limits=Limits(max_bytes=100 << 20))
    assert info.value.member == f"{UPLOADS}/zeros.bin"
    assert time.monotonic() - started < 2


def test_gzip_bomb_refused_by_staging_on_a_small_file_system(bomb: Path, tmp_path: Path) -> None:
    """stage() caps the bytes it writes by the free space of its file system, before it
    opens the file: a machine without room for it, not a fault of the archive (issue 14.1)."""
    with tmpfs(tmp_path / "small", "96m") as small:
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"not enough free space to restore .*: .* needed"):
            stage(bomb, small / "dest", check="none")
        assert time.monotonic() - started < 2
        assert sum(p.stat().st_size for p in (small / "dest").rglob("*") if p.is_file()) == 0


# --------------------------------------------------------------------------------------------
# Flipped bits: a damaged archive is never silently accepted.


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, ScanResult]:
    app = make_app(tmp_path_factory.mktemp("flip") / "app", rows=5)
    result = create_archive(Layout(root=app.root), FAST)
    data = result.path.read_bytes()
    return data, scan_bytes(data)


def _accepts(data: bytes) -> ScanResult | None:
    """The scan result if the archive reads cleanly and agrees with its manifest, else None."""
    try:
        scan = scan_bytes(data)
    except ArchiveError:
        return None
    try:
        check_against_manifest(scan)
    except ArchiveError:
        return None
    return scan


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
@example(position=4, bit=0)  # gzip header MTIME: not content, may be accepted
@example(position=9, bit=0)  # gzip header OS byte
@example(position=-1, bit=7)  # gzip trailer ISIZE
@example(position=-8, bit=0)  # gzip trailer CRC32
def test_flipped_bit_in_the_file(
    small_archive: tuple[bytes, ScanResult], position: int, bit: int
) -> None:
    """Anything but ArchiveError is a bug; acceptance is only allowed when every file and
    folder read back is exactly the original (a flip in the gzip header's MTIME, OS or an
    unused flush padding bit changes no content, and the CRC32 guards everything else)."""
    original, truth = small_archive
    data = bytearray(original)
    data[position % len(data)] ^= 1 << bit
    accepted = _accepts(bytes(data))
    if accepted is not None:
        assert accepted.files == truth.files
        assert accepted.dirs == truth.dirs


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_flipped_bit_in_the_tar_stream(
    small_archive: tuple[bytes, ScanResult], position: int, bit: int
) -> None:
    """A flip before compression (bad RAM, a buggy copy tool) passes the gzip CRC. Tar header
    padding, uid/gid/mtime fields and manifest metadata are unprotected by design, so a flip
    there may be accepted; what must hold: every file accepted matches its manifest entry and
    the original bytes, and nothing that was in the archive silently disappears."""
    original, truth = small_archive
    tar = bytearray(gzip.decompress(original))
    tar[position % len(tar)] ^= 1 << bit
    accepted = _accepts(gz(bytes(tar)))
    if accepted is not None:
        assert accepted.files == truth.files
        assert accepted.dirs == truth.dirs
        for m in accepted.manifest.files():
            assert accepted.files[m.path] == (m.sha256, m.size)


def test_every_bit_flip_of_a_tiny_archive_leaves_staging_contained(
    tmp_path: Path, outside: Path
) -> None:
    """Exhaustive over byte positions (one bit each) of a tiny archive, through stage()."""
    original = gz(
        tar_of(
            with_manifest(honest({f"{UPLOADS}/a.txt": b"hello"}), {f"{UPLOADS}/a.txt": b"hello"})
        )
    )
    (tmp_path / "work").mkdir()
    path = tmp_path / "archives" / ARCHIVE_NAME
    path.parent.mkdir()
    before = listing(tmp_path, skip=tmp_path / "work")
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(data))
        dest = tmp_path / "work" / f"d{position}"
        try:
            staged = stage(path, dest, check="none")
        except ArchiveError:
            continue
        if staged.ok:
            assert (dest / UPLOADS / "a.txt").read_bytes() == b"hello"
    path.unlink()
    assert listing(tmp_path, skip=tmp_path / "work") == {k: v for k, v in before.items()}
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


# -- the writer's fast tar headers ---------------------------------------------------------

_NAMES = st.one_of(
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), max_size=110),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=110),
).filter(bool)
_OWNER = st.one_of(st.text(alphabet="abcdefgh_-0123456789", max_size=40), st.text(max_size=5))


@given(
    name=_NAMES,
    is_dir=st.booleans(),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 8**8),
    gid=st.integers(0, 8**8),
    size=st.integers(0, 8**12),
    mtime=st.integers(0, 8**12),
    uname=_OWNER,
    gname=_OWNER,
)
@example(  # the largest byte sum of name and numbers the checksum's Adler-32 shortcut sees
    name="\x7f" * 100,
    is_dir=False,
    mode=0o7777,
    uid=8**7 - 1,
    gid=8**7 - 1,
    size=8**11 - 1,
    mtime=8**11 - 1,
    uname="h" * 32,
    gname="h" * 32,
)
@settings(max_examples=400)
def test_fast_ustar_header_is_what_tarfile_writes(
    name: str,
    is_dir: bool,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    uname: str,
    gname: str,
) -> None:
    kind = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    fast = ustar_header(name, kind, mode, uid, gid, size, mtime, uname, gname)
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
    info.size, info.mtime, info.uname, info.gname = size, mtime, uname, gname
    try:
        expected = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    except (ValueError, UnicodeEncodeError):
        assert fast is None or len(fast) == 512
        return
    if len(expected) == 512:  # no pax record needed: byte for byte tarfile's header
        assert fast == expected
    else:  # it declines exactly what tarfile writes with a pax record
        assert fast is None


def _tar_members(stream: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_writer_headers_follow_each_members_mode_and_owner(tmp_path: Path) -> None:
    """The writer reuses the last member's shared header fields while kind, mode and owner stay
    the same: members that alternate must each get their own."""
    owners = [(os.getuid(), os.getgid())]
    if os.geteuid() == 0:
        owners.append((1, 1))  # daemon on Debian; any id works, named or not
    out = io.BytesIO()
    writer = ArchiveWriter(out)
    expected: dict[str, tuple[int, int, int]] = {}
    for i in range(8):
        mode = (0o600, 0o644, 0o640)[i % 3]
        uid, gid = owners[i % len(owners)]
        folder = tmp_path / f"d{i}"
        folder.mkdir(mode=0o700 if i % 2 else 0o755)
        folder.chmod(0o700 if i % 2 else 0o755)
        path = folder / "f.txt"
        path.write_bytes(b"x" * i)
        path.chmod(mode)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        st = os.stat(folder)
        writer.add_dir(f"d{i}", st, Component.UPLOADS)
        expected[f"d{i}"] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        assert writer.add_file(f"d{i}/f.txt", path, Component.UPLOADS)
        st = os.stat(path)
        expected[f"d{i}/f.txt"] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    writer.close()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        seen = {m.name: (m.mode, m.uid, m.gid) for m in tar}
    assert seen == expected
    assert len({v for v in expected.values()}) >= 4  # the members really alternate


@pytest.mark.parametrize("size", [0, 1, 511, 512, 70_000, 3 << 20])
def test_writer_survives_short_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """read() may return less than asked: the member is still whole and correctly hashed."""
    import aica_backup.archive.writer as writer_module

    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    real_readv = os.readv

    def stingy_readv(fd: int, buffers: list[memoryview]) -> int:
        return real_readv(fd, [buffers[0][:1000]])

    monkeypatch.setattr(writer_module.os, "readv", stingy_readv)
    out = io.BytesIO()
    writer = writer_module.ArchiveWriter(out)
    writer.add_bytes("first.txt", b"x" * 700, 0o600, 0)  # the file starts mid-buffer
    assert writer.add_file("f.bin", tmp_path / "f.bin", Component.UPLOADS)
    writer.close()
    assert _tar_members(out.getvalue())["f.bin"] == data
    assert writer.members[0].sha256 == hashlib.sha256(data).hexdigest()
    assert writer.warnings == []


def test_writer_pads_a_file_that_shrank_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aica_backup.archive.writer as writer_module

    (tmp_path / "f.bin").write_bytes(b"abc")
    real_fstat = os.fstat

    def fstat_before_truncation(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        fields = list(st[:10])
        fields[6] = 5000  # st_size when it was taken; the file has 3 bytes when read
        return os.stat_result(fields)

    monkeypatch.setattr(writer_module.os, "fstat", fstat_before_truncation)
    out = io.BytesIO()
    writer = writer_module.ArchiveWriter(out)
    assert writer.add_file("f.bin", tmp_path / "f.bin", Component.UPLOADS)
    writer.close()
    padded = b"abc" + bytes(4997)
    assert _tar_members(out.getvalue())["f.bin"] == padded
    assert writer.members[0].sha256 == hashlib.sha256(padded).hexdigest()
    assert writer.warnings == ["f.bin: shrank while being read; archived padded with zeros"]


def _age_access_time(path: Path) -> int:
    """Set ``path``'s access time two days back (relatime then updates it on a read)."""
    st = path.stat()
    old = st.st_atime_ns - 2 * 86400 * 10**9
    os.utime(path, ns=(old, st.st_mtime_ns))
    return old


def test_backup_leaves_access_times_alone(tmp_path: Path) -> None:
    import aica_backup.archive.writer as writer_module

    (tmp_path / "f.bin").write_bytes(b"photo" * 1000)
    old = _age_access_time(tmp_path / "f.bin")
    writer = writer_module.ArchiveWriter(io.BytesIO())
    assert writer.add_file("f.bin", tmp_path / "f.bin", Component.UPLOADS)
    writer.close()
    if not writer._noatime:
        pytest.skip("O_NOATIME refused here (files of another user, or not Linux)")
    assert (tmp_path / "f.bin").stat().st_atime_ns == old


def test_files_of_another_user_are_read_without_o_noatime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux refuses O_NOATIME (EPERM) on a file owned by someone else: read it as before."""
    import errno

    import aica_backup.archive.writer as writer_module

    real_open = os.open
    tried = []

    def not_the_owner(path: Any, flags: int, *args: Any) -> int:
        tried.append(flags)
        if flags & getattr(os, "O_NOATIME", 0):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(writer_module.os, "open", not_the_owner)
    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    out = io.BytesIO()
    writer = writer_module.ArchiveWriter(out)
    assert writer.add_file("a.bin", tmp_path / "a.bin", Component.UPLOADS)
    assert writer.add_file("b.bin", tmp_path / "b.bin", Component.UPLOADS)
    writer.close()
    assert _tar_members(out.getvalue()) == {"a.bin": b"a.bin" * 100, "b.bin": b"b.bin" * 100}
    assert len(tried) == (3 if getattr(os, "O_NOATIME", 0) else 2)  # tried once, not per file
