"""``aica-backup backup`` end to end: the archive, its manifest, and every way a backup can fail.

Failures must end the same way: a one-line error, a non-zero exit, no partial archive under a
final name, older archives untouched, and the secret from ``.env.production`` nowhere in the
output or the log.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aica_backup import __version__
from aica_backup.backup import create_archive
from aica_backup.errors import ExitCode
from aica_backup.layout import Layout
from aica_backup.manifest import FORMAT_VERSION
from tests.support.app import SECRET, App, make_app
from tests.support.fs import permissions_enforced, remount_readonly, tmpfs

NAME_RE = re.compile(r"^backup_(\d{8}_\d{6})(?:_(\d+))?\.tar\.gz$")
CLI = [sys.executable, "-m", "aica_backup"]


def read_manifest(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        data: dict[str, Any] = json.load(member)
        return data


def digests(app: App) -> dict[str, str]:
    """Every archive in the backups folder and the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in app.archives("backup_*")}


def leftovers(app: App) -> list[str]:
    """Temp files of a run: in the backups folder and in the bookkeeping folder."""
    folders = [app.backups, app.backups / ".aica-backup", app.backups / ".aica-backup" / "catalog"]
    return sorted(
        p.name for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(".tmp-")
    )


def log_text(backups: Path) -> str:
    log = backups / ".aica-backup" / "aica-backup.log"
    return log.read_text(encoding="utf-8") if log.exists() else ""


def assert_clean_failure(
    app: App,
    proc: subprocess.CompletedProcess[str],
    code: ExitCode,
    before: dict[str, str],
    *,
    backups: Path | None = None,
    says: str = "",
) -> str:
    """The common contract of a failed backup; returns the error line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aica-backup: error: ")
    assert says in lines[0]
    assert proc.stdout == ""
    folder = backups or app.backups
    if folder.is_dir():
        now = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("backup_*")}
        assert now == before  # no new archive, and the old ones are byte for byte intact
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    for text in (proc.stdout, proc.stderr, log_text(folder)):
        assert SECRET not in text
    return lines[0]


def fill_uploads(app: App, megabytes: int, files: int = 8) -> None:
    """Incompressible uploads, so the archive is as big as the data."""
    each = (megabytes << 20) // files
    big = app.uploads / "big"
    big.mkdir(exist_ok=True)
    for i in range(files):
        (big / f"video-{i}.bin").write_bytes(os.urandom(each))


def write_config(app: App, text: str) -> None:
    (app.root / "aica-backup.toml").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# A good backup.


def test_backup_creates_a_private_archive_named_by_local_time(app: App) -> None:
    before = datetime.now().replace(microsecond=0)  # noqa: DTZ005 - the name uses local time
    proc = app.run("backup")
    after = datetime.now()  # noqa: DTZ005
    [archive] = app.archives()
    m = NAME_RE.match(archive.name)
    assert m is not None, archive.name
    stamp = datetime.strptime(m[1], "%Y%m%d_%H%M%S")  # noqa: DTZ007 - local by design
    assert before <= stamp <= after
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(app.backups.stat().st_mode) == 0o700
    assert proc.stdout.startswith(f"Backup created: {archive}")
    assert len(proc.stdout.strip().splitlines()) == 1  # one summary line off a terminal
    assert "database quick_check ok" in proc.stdout and "4 uploads" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr + log_text(app.backups)
    assert leftovers(app) == []


def test_manifest_records_what_design_lists(app: App) -> None:
    conn = sqlite3.connect(app.db)
    conn.execute("PRAGMA user_version = 42")
    conn.commit()
    live = {k: conn.execute(f"PRAGMA {k}").fetchone()[0] for k in ("page_size", "page_count")}
    conn.close()
    app.db.chmod(0o640)

    app.run("backup")
    [archive] = app.archives()
    m = read_manifest(archive)

    assert m["format"] == "aica-backup" and m["format_version"] == FORMAT_VERSION
    assert m["tool_version"] == __version__
    created = datetime.fromisoformat(m["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert m["host"] == socket.gethostname()
    assert m["app_root"] == str(app.root.resolve())
    assert m["app_name"] == "aica-sys" and m["compression"] == "gzip"

    db = m["components"]["database"]
    assert db["path"] == "backend/aica_sys.db" and db["present"] is True
    assert db["sqlite_version"] == sqlite3.sqlite_version
    assert db["page_size"] == live["page_size"] and db["page_count"] == live["page_count"]
    assert db["user_version"] == 42
    assert db["journal_mode"] == "wal"
    assert db["integrity"] == "ok" and db["check"] == "quick_check"
    tree = app.uploads_tree()
    up = m["components"]["uploads"]
    assert up["present"] is True
    assert up["file_count"] == len(tree) and up["total_bytes"] == sum(map(len, tree.values()))
    assert m["components"]["config"] == {"path": ".env.production", "present": True}

    members = {x["path"]: x for x in m["members"]}
    assert m["members"][0]["path"] == "backend/aica_sys.db"  # first, so restore checks it early
    assert members["backend/aica_sys.db"]["mode"] == 0o640
    for rel, data in tree.items():
        entry = members[f"public/uploads/{rel}"]
        source = app.uploads / rel
        assert entry["type"] == "file" and entry["component"] == "uploads"
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["mode"] == stat.S_IMODE(source.stat().st_mode)
        assert entry["mtime"] == pytest.approx(source.stat().st_mtime)
    assert members["public/uploads/empty-folder"]["type"] == "dir"
    env = members[".env.production"]
    assert (
        env["mode"] == 0o600 and env["sha256"] == hashlib.sha256(app.env.read_bytes()).hexdigest()
    )
    assert SECRET not in json.dumps(m)


def test_backup_json(app: App) -> None:
    proc = app.run("backup", "--json")
    report = json.loads(proc.stdout)
    [archive] = app.archives()
    assert report["ok"] is True and report["archive"] == archive.name
    assert report["size"] == archive.stat().st_size
    assert report["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert report["database"]["integrity"] == "ok"
    assert report["uploads"]["file_count"] == 4
    assert report["pruned"] == []


def test_uploads_are_listed_after_the_database_snapshot(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload saved, and its row committed, while the snapshot is taken is in the archive:
    a restored row never names a file the archive lacks."""
    import aica_backup.backup as backup_module

    real = backup_module.take_snapshot

    def snapshot_then_upload(source: Path, dest: Path) -> str:
        mode = real(source, dest)
        (app.uploads / "saved-during-snapshot.png").write_bytes(b"new upload")
        return mode

    monkeypatch.setattr(backup_module, "take_snapshot", snapshot_then_upload)
    result = create_archive(Layout(root=app.root))
    paths = {m.path for m in result.manifest.members}
    assert "public/uploads/saved-during-snapshot.png" in paths


def test_missing_uploads_folder_is_recorded_absent(app: App) -> None:
    for p in sorted(app.uploads.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    app.uploads.rmdir()
    proc = app.run("backup")
    assert "no uploads" in proc.stdout
    m = read_manifest(app.archives()[0])
    assert m["components"]["uploads"]["present"] is False
    assert not [x for x in m["members"] if x["component"] == "uploads"]


def test_missing_config_is_recorded_absent(app: App) -> None:
    app.env.unlink()
    app.run("backup")
    m = read_manifest(app.archives()[0])
    assert m["components"]["config"]["present"] is False


def test_missing_database_is_an_error_unless_optional(app: App) -> None:
    app.run("backup")
    before = digests(app)
    app.db.unlink()
    proc = app.run("backup", check=False)
    line = assert_clean_failure(app, proc, ExitCode.DATABASE, before, says="database not found")
    assert "database_optional" in line  # the hint says how to allow it

    env = {**os.environ, "AICA_BACKUP_BACKUP_DATABASE_OPTIONAL": "true"}
    proc = app.run("backup", env=env, check=False)
    newest = app.archives()[-1]
    assert read_manifest(newest)["components"]["database"]["present"] is False
    # the previous backup had one: a warning, not silence (issue 14, item 6)
    assert proc.returncode == ExitCode.WARNING
    assert "database (backend/aica_sys.db) is missing" in proc.stderr


def test_backup_through_a_symlinked_upload_is_skipped_with_a_warning(
    app: App, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere.txt").write_text("not part of the app")
    (app.uploads / "link.txt").symlink_to(tmp_path / "elsewhere.txt")
    proc = app.run("backup")
    assert "link.txt: symbolic link, not archived" in proc.stderr
    m = read_manifest(app.archives()[0])
    assert "public/uploads/link.txt" not in {x["path"] for x in m["members"]}
    assert m["warnings"] == ["public/uploads/link.txt: symbolic link, not archived"]


def test_special_files_among_uploads_are_skipped_not_waited_on(app: App) -> None:
    """A FIFO used to block the backup (and its lock) forever; a socket failed it."""
    os.mkfifo(app.uploads / "pipe")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(app.uploads / "sock"))
        proc = subprocess.run(
            [*CLI, "--root", str(app.root), "backup"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(app.archives()[0])
    assert sorted(m["warnings"]) == [
        "public/uploads/pipe: not a regular file, not archived",
        "public/uploads/sock: not a regular file, not archived",
    ]
    assert m["components"]["uploads"]["file_count"] == 4


def test_unreadable_upload_is_skipped_and_recorded(app: App) -> None:
    """Issue 14, item 7: one unreadable upload cost the whole backup (database included,
    exit 7). Everything readable is archived, the manifest names what was skipped and why,
    the run exits 1 with the count, and ``list``/``verify`` call the archive incomplete."""
    preexec = permissions_enforced()
    (app.uploads / "avatars" / "alice.png").chmod(0)
    proc = app.run("backup", check=False, preexec_fn=preexec)
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    assert "1 upload(s) could not be read" in proc.stderr and "alice.png" in proc.stderr
    [archive] = app.archives()
    m = read_manifest(archive)
    skipped = {"path": "public/uploads/avatars/alice.png", "error": "Permission denied"}
    assert m["skipped"] == [skipped]
    paths = {x["path"] for x in m["members"]}
    assert "public/uploads/docs/nested/deep/data.json" in paths
    assert "public/uploads/avatars/alice.png" not in paths
    assert m["components"]["database"]["present"] is True
    log = json.loads(log_text(app.backups).splitlines()[-1])
    assert log["outcome"] == "warning" and log["skipped"] == 1
    listed = app.run("list")
    assert "INCOMPLETE: 1 skipped" in listed.stdout
    verified = app.run("verify", archive.name, check=False)
    assert verified.returncode == ExitCode.WARNING, verified.stdout + verified.stderr
    assert "incomplete: 1 file(s) skipped" in verified.stdout + verified.stderr


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle CPU class")
@pytest.mark.parametrize("with_database", [True, False], ids=["database", "no database"])
def test_archiving_runs_in_the_idle_cpu_class(app: App, with_database: bool) -> None:
    """After the snapshot (or at once, with no database to snapshot) the backup and the
    threads it starts take only CPU time the app leaves idle. In a child process: the class
    sticks to the thread that takes it."""
    if not with_database:
        for suffix in ("", "-wal", "-shm"):
            app.db.with_name(app.db.name + suffix).unlink(missing_ok=True)
    code = (
        "import os, sys, threading\n"
        "from pathlib import Path\n"
        "from aica_backup.backup import BackupOptions, create_archive\n"
        "from aica_backup.layout import Layout\n"
        "import aica_backup.archive.writer as writer\n"
        "seen = set()\n"
        "real = writer.ArchiveWriter.add_file\n"
        "def add_file(self, *args, **kwargs):\n"
        "    seen.add(os.sched_getscheduler(0))\n"
        "    return real(self, *args, **kwargs)\n"
        "writer.ArchiveWriter.add_file = add_file\n"
        "layout = Layout(root=Path(sys.argv[1]), database_optional=True)\n"
        "create_archive(layout, BackupOptions(check='none', idle_priority=True))\n"
        "print(sorted(seen))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(app.root)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"[{os.SCHED_IDLE}]"  # every member, the database's included


def test_unreadable_uploads_folder_is_skipped_and_recorded(app: App) -> None:
    """The uploads are listed in a thread while the database streams: a folder it may not
    read is skipped and named the same way, and the rest is archived."""
    preexec = permissions_enforced()
    (app.uploads / "avatars").chmod(0)
    proc = app.run("backup", check=False, preexec_fn=preexec)
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    m = read_manifest(app.archives()[0])
    assert m["skipped"] == [{"path": "public/uploads/avatars", "error": "Permission denied"}]
    assert "public/uploads/docs/報告書 2024.txt" in {x["path"] for x in m["members"]}
    assert leftovers(app) == []


def test_a_deep_uploads_tree_is_walked_without_recursion() -> None:
    """Issue 14, item 9: the folder depth is the users' to choose; the listing keeps no
    stack frame per level (a recursion limit far below the depth proves it). The tree lives
    outside pytest's temp folders: their clean-up (shutil.rmtree) recurses, and would fail
    on it in any session that ran meanwhile."""
    base = Path(tempfile.mkdtemp(prefix="aica-deep-"))
    app = make_app(base / "app")
    chain = [app.uploads]
    try:
        for _ in range(1200):  # Path.mkdir(parents=True) itself recurses
            chain.append(chain[-1] / "d")
            chain[-1].mkdir()
        (chain[-1] / "leaf.txt").write_bytes(b"leaf")
        _walk_deep_tree(app)
    finally:  # bottom-up, then the rest
        (chain[-1] / "leaf.txt").unlink(missing_ok=True)
        for folder in reversed(chain[1:]):
            folder.rmdir()
        shutil.rmtree(base)


def _walk_deep_tree(app: App) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aica_backup.backup import _walk_uploads\n"
        "from aica_backup.layout import Layout\n"
        "sys.setrecursionlimit(200)\n"
        "found, skipped = _walk_uploads(Layout(root=Path(sys.argv[1])), True)\n"
        "print(len(found), len(skipped), max(s.arcname.count('/') for s in found))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(app.root)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    count, skipped, depth = map(int, proc.stdout.split())
    assert count > 1200 and skipped == 0 and depth == 1 + 1200 + 1  # public/uploads/d…/leaf


def test_progress_total_is_known_before_the_first_byte(app: App) -> None:
    """A progress bar gets one total from its first call on (the uploads listed first), and
    ends there."""
    calls: list[tuple[int, int]] = []
    result = create_archive(
        Layout(root=app.root), progress=lambda done, total, _what: calls.append((done, total))
    )
    totals = {total for _done, total in calls}
    files = sum(m.size for m in result.manifest.members if m.type == "file")
    assert totals == {files}
    assert calls[-1][0] == files
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# --------------------------------------------------------------------------------------------
# The database cannot be backed up.


def _not_sqlite(app: App) -> None:
    app.db.write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        app.db.with_name(app.db.name + suffix).unlink(missing_ok=True)


def _malformed(app: App) -> None:
    """Smash the header of the index's root page: the database opens but is damaged."""
    conn = sqlite3.connect(app.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'notes_body'").fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(app.db, "r+b") as fh:
        fh.seek((root[0] - 1) * page_size)
        fh.write(b"\xff" * 16)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_not_sqlite, "not a database"),
        (_malformed, "database failed quick_check"),
    ],
    ids=["not SQLite", "malformed"],
)
def test_database_not_sqlite_or_damaged(app: App, damage: Callable[[App], None], says: str) -> None:
    app.add_rows(500)
    app.run("backup")
    before = digests(app)
    damage(app)
    proc = app.run("backup", check=False)
    assert_clean_failure(app, proc, ExitCode.DATABASE, before, says=says)
    assert json.loads(log_text(app.backups).splitlines()[-1])["outcome"] == "failed"


def test_database_unreadable(app: App) -> None:
    preexec = permissions_enforced()
    app.run("backup")
    before = digests(app)
    app.db.chmod(0)
    proc = app.run("backup", check=False, preexec_fn=preexec)
    assert_clean_failure(app, proc, ExitCode.DATABASE, before, says="cannot")


# --------------------------------------------------------------------------------------------
# The backups folder cannot take the archive.


def test_backups_folder_read_only(app: App, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "8m") as mnt:
        write_config(app, f'[paths]\nbackups = "{mnt}"\n')
        app.run("backup")
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mnt.glob("backup_*")}
        remount_readonly(mnt)
        proc = app.run("backup", check=False)
        line = assert_clean_failure(app, proc, ExitCode.STORAGE, before, backups=mnt)
        assert "Read-only file system" in line and "read-only" in line  # reason and hint


def test_disk_full_on_a_tiny_file_system(app: App, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "tiny", "2m") as mnt:
        write_config(app, f'[paths]\nbackups = "{mnt}"\n')
        app.run("backup")
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mnt.glob("backup_*")}
        fill_uploads(app, 3, files=3)
        proc = app.run("backup", check=False)
        line = assert_clean_failure(app, proc, ExitCode.STORAGE, before, backups=mnt)
        assert "No space left on device" in line and "the disk is full" in line
        # and the run after space was freed works again, leaving nothing behind
        (app.uploads / "big").rename(tmp_path / "moved-away")
        app.run("backup")
        assert len(list(mnt.glob("backup_*"))) == 2


def test_disk_full_while_snapshotting_the_database(app: App, tmp_path: Path) -> None:
    """The snapshot is the first thing written: a full disk there is a storage error (7), not
    a damaged database (5)."""
    app.add_rows(30_000, "x" * 80)
    with tmpfs(tmp_path / "tiny", "1m") as mnt:
        write_config(app, f'[paths]\nbackups = "{mnt}"\n')
        proc = app.run("backup", check=False)
        line = assert_clean_failure(app, proc, ExitCode.STORAGE, {}, backups=mnt)
        assert "snapshot" in line and "the disk is full" in line
        assert not list((mnt / ".aica-backup").glob(".tmp-*"))


def _file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # pragma: no cover - runs in the child
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_write_error_from_a_real_process_file_size_limit(app: App) -> None:
    """RLIMIT_FSIZE makes the kernel fail the archive's writes (EFBIG) in a real process.

    Before the fix this hung some runs forever (an exception cycle from python-isal's threads).
    """
    app.run("backup")
    before = digests(app)
    fill_uploads(app, 2, files=2)
    for _ in range(3):  # the failure surfaces in different threads from run to run
        proc = subprocess.run(
            [*CLI, "--root", str(app.root), "backup"],
            capture_output=True,
            text=True,
            preexec_fn=_file_size_limit(256 * 1024),
            timeout=60,
            check=False,
        )
        line = assert_clean_failure(app, proc, ExitCode.STORAGE, before)
        assert "File too large" in line and "ulimit" in line


class _FullDisk(io.RawIOBase):
    """The archive's temp file, on a disk that fills up after ``room`` bytes."""

    def __init__(self, fd: int, room: int) -> None:
        super().__init__()
        self.raw = io.FileIO(fd, "wb")
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.raw.write(data) or 0

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


def test_enospc_injected_at_the_write_layer(
    app: App, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the archive's file fails with ENOSPC after 100 KB, as a full disk does."""
    monkeypatch.setattr(os, "nice", lambda _n: 0)  # do not renice the test runner
    code, _, err = cli(app, "backup")
    assert code == 0, err
    before = digests(app)
    fill_uploads(app, 1, files=1)
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kw: Any) -> Any:
        if ".tmp-backup_" in os.readlink(f"/proc/self/fd/{fd}"):
            return io.BufferedWriter(_FullDisk(fd, 100_000), 1 << 16)
        return real_fdopen(fd, *args, **kw)

    monkeypatch.setattr(os, "fdopen", fdopen)
    code, out, err = cli(app, "backup")
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    proc = subprocess.CompletedProcess(["backup"], code, out, err)
    line = assert_clean_failure(app, proc, ExitCode.STORAGE, before)
    assert "No space left on device" in line and "the disk is full" in line


# --------------------------------------------------------------------------------------------
# Killed while writing, and running twice at once.


@contextmanager
def backup_process(app: App, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, "--root", str(app.root), "backup", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def stop_while_writing(app: App, proc: subprocess.Popen[str]) -> Path:
    """Wait until the archive's temp file exists and grows, then SIGSTOP the process."""
    deadline = time.monotonic() + 30
    seen = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the backup finished before it could be caught writing"
        for tmp in app.backups.glob(".tmp-backup_*"):
            try:
                size = tmp.stat().st_size
            except FileNotFoundError:
                continue
            if seen and size > seen:
                proc.send_signal(signal.SIGSTOP)
                assert tmp.exists(), "renamed before it could be stopped"
                return tmp
            seen = max(seen, size)
        time.sleep(0.002)
    raise AssertionError("the backup never started writing")


def test_sigkill_while_writing_leaves_no_partial_archive(app: App) -> None:
    app.run("backup")
    before = digests(app)
    fill_uploads(app, 64)
    with backup_process(app) as proc:
        tmp = stop_while_writing(app, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_pid = proc.pid
    assert proc.returncode == -signal.SIGKILL
    assert digests(app) == before  # nothing under a final name, the old archive intact
    assert tmp.exists() and leftovers(app)  # the crash left its temp files behind

    (app.uploads / "big").rename(app.root / "big-moved")  # keep the next run quick
    proc2 = app.run("backup", "--json")
    assert leftovers(app) == []
    assert len(digests(app)) == 2
    notes = json.loads(proc2.stdout)["notes"]
    assert any(f"dead pid {killed_pid}" in n for n in notes), notes


@pytest.mark.parametrize("next_command", ["list", "verify", "doctor"])
def test_any_next_command_removes_what_a_killed_backup_left(app: App, next_command: str) -> None:
    """kill -9 of a backup while it writes leaves its temp archive (full size) and its
    database snapshot; the next command, whatever it is, removes them (not only the next
    backup), while the dead run's lock record is left for the next backup to report."""
    app.run("backup")
    before = digests(app)
    fill_uploads(app, 64)
    with backup_process(app) as proc:
        stop_while_writing(app, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert leftovers(app)  # the temp archive and the snapshot
    proc2 = app.run(next_command, check=False)
    assert "Traceback" not in proc2.stderr
    assert leftovers(app) == [], proc2.stderr
    assert digests(app) == before  # the good archive untouched
    assert "removed what an interrupted" in proc2.stderr
    notes = json.loads(app.run("backup", "--json").stdout)["notes"]
    assert any("dead pid" in n for n in notes), notes


def test_a_running_backup_keeps_its_temp_files_while_other_commands_start(app: App) -> None:
    """The start-up cleanup never touches the temp files of a backup that is running (it
    holds the lock): a `list` while a backup is frozen mid-write leaves them, and the
    backup then completes."""
    fill_uploads(app, 64)
    with backup_process(app) as proc:
        stop_while_writing(app, proc)
        held = leftovers(app)
        app.run("list")
        assert leftovers(app) == held
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert leftovers(app) == [] and len(digests(app)) == 1


def test_two_backups_at_once(app: App) -> None:
    """One runs; a second fails at once naming it; with --wait a third waits and succeeds."""
    fill_uploads(app, 64)
    with backup_process(app) as first:
        stop_while_writing(app, first)  # holds the lock, frozen mid-write
        started = time.monotonic()
        second = app.run("backup", check=False)
        assert time.monotonic() - started < 10
        assert second.returncode == ExitCode.LOCKED
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "locked" in lines[0] and f"pid {first.pid}" in lines[0]
        assert "--wait" in lines[0]

        with backup_process(app, "--wait", "60") as third:
            time.sleep(1.0)
            assert third.poll() is None  # waiting
            first.send_signal(signal.SIGCONT)
            assert first.wait(60) == 0
            out, err = third.communicate(timeout=60)
            assert third.returncode == 0, err
            assert out.startswith("Backup created:")
    assert len(digests(app)) == 2
    assert leftovers(app) == []


# --------------------------------------------------------------------------------------------
# Retention after a backup, pins, prune and list.


def test_ten_backups_leave_seven_and_a_pinned_one_survives(app: App) -> None:
    app.run("backup")
    [first] = app.archives()
    proc = app.run("pin", first.name)
    assert f"Pinned: {first.name}" in proc.stdout
    made = [first.name]
    for _ in range(9):
        report = json.loads(app.run("backup", "--json").stdout)
        made.append(report["archive"])
    assert len(set(made)) == 10  # several in one second, no name collision
    names = [p.name for p in app.archives()]
    assert len(names) == 8  # the newest 7, plus the pinned first one
    assert first.name in names
    assert set(made[-7:]) <= set(names)
    stamps = [NAME_RE.match(n) for n in made]
    assert all(stamps)

    app.run("unpin", first.name)
    app.run("backup")
    assert first.name not in [p.name for p in app.archives()]
    assert len(app.archives()) == 7


def test_pin_unknown_archive(app: App) -> None:
    proc = app.run("pin", "backup_20000101_000000.tar.gz", check=False)
    assert proc.returncode == ExitCode.USAGE
    assert "no archive named" in proc.stderr


def _make_archives(app: App, n: int) -> list[str]:
    """``n`` real archives, made in process (quick), oldest first."""
    return [create_archive(Layout(root=app.root)).name for _ in range(n)]


def test_prune_dry_run_shows_and_deletes_nothing(app: App) -> None:
    names = _make_archives(app, 9)
    proc = app.run("prune", "--dry-run")
    before = digests(app)
    assert len(before) == 9
    for name in names[:2]:
        assert re.search(
            rf"^would remove {re.escape(name)}  \(outside the policy\)$", proc.stdout, re.M
        )
    for name in names[2:]:
        assert re.search(rf"^keep +{re.escape(name)}  \(last 7", proc.stdout, re.M)

    report = json.loads(app.run("prune", "--dry-run", "--json").stdout)
    assert report["dry_run"] is True and report["remove"] == names[1::-1]
    assert digests(app) == before

    flags = app.run("prune", "--dry-run", "--keep-last", "3").stdout
    assert flags.count("would remove") == 6
    assert digests(app) == before

    app.run("prune")
    assert sorted(digests(app)) == sorted(names[2:])


def test_list_newest_first_with_contents(app: App) -> None:
    names = _make_archives(app, 3)
    (app.uploads / "new.txt").write_text("one more")
    names.append(_make_archives(app, 1)[0])
    app.run("pin", names[0])

    text = app.run("list").stdout
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].split()[:3] == ["#", "name", "local"]
    rows = lines[1:]
    assert [r.split()[1] for r in rows] == names[::-1]  # newest first, names never truncated
    assert "[pinned]" in rows[-1]
    assert "5 files" in rows[0] and "4 files" in rows[1]
    assert all("never" in r for r in rows)  # not verified yet

    entries = json.loads(app.run("list", "--json").stdout)
    assert [e["name"] for e in entries] == names[::-1]
    newest = entries[0]
    archive = app.backups / newest["name"]
    assert newest["size"] == archive.stat().st_size
    assert newest["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert 0 <= newest["age_seconds"] < 600
    assert datetime.fromisoformat(newest["time"]).tzinfo is not None
    assert newest["summary"]["uploads"]["file_count"] == 5
    assert newest["summary"]["database"]["integrity"] == "ok"
    assert entries[-1]["pinned"] is True


def test_list_with_no_backups(app: App) -> None:
    proc = app.run("list")
    assert proc.stdout.startswith("No backups in")
    assert json.loads(app.run("list", "--json").stdout) == []
