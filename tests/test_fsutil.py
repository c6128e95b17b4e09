"""File-system helpers: writeback, direct writes and tree removal leak no descriptor, lose no
data, and follow no link; the placement hint is harmless where it is not understood."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aica_backup import fsutil
from aica_backup.fsutil import (
    BackgroundWriteback,
    DirectWriter,
    discard_tree,
    spread_subfolders,
    sync_to_disk,
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_background_writeback_keeps_data_and_closes_its_descriptors(tmp_path: Path) -> None:
    before = _open_fds()
    files = {tmp_path / f"f{i}": os.urandom(size) for i, size in enumerate([10, 2 << 20, 5 << 20])}
    with BackgroundWriteback(min_size=1 << 20, limit=1) as flusher:
        for path, data in files.items():
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                flusher.file_done(f.fileno(), len(data))
    sync_to_disk(tmp_path)
    assert _open_fds() == before
    assert all(path.read_bytes() == data for path, data in files.items())


def _write_through(writer: DirectWriter, path: Path, data: bytes, piece: int) -> bool:
    """Write ``data`` to a new file through ``writer`` in pieces; True if it went direct."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    sink = writer.sink(fd, len(data))
    if sink is None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return False
    with sink:
        for start in range(0, len(data), piece):
            sink.write(memoryview(data)[start : start + piece])
    return True


# around the 4 KiB alignment and the 1 MiB buffers, written in pieces that straddle both
_SIZES = [0, 1, 4095, 4096, 4097, 1 << 20, (1 << 20) + 1, (7 << 19) + 7]


def test_direct_writer_writes_every_byte_and_closes_its_descriptors(tmp_path: Path) -> None:
    before = _open_fds()
    files = {tmp_path / f"f{i}": os.urandom(size) for i, size in enumerate(_SIZES)}
    went_direct = []
    with DirectWriter(min_size=0, buffers=2) as writer:
        for n, (path, data) in enumerate(files.items()):
            went_direct.append(_write_through(writer, path, data, (7000, 1_300_000)[n % 2]))
    if not any(went_direct):
        pytest.skip("the file system of tmp_path does no direct I/O")
    assert all(went_direct)
    assert _open_fds() == before
    assert all(path.read_bytes() == data for path, data in files.items())


def test_direct_writer_keeps_small_files_and_refusing_file_systems_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def refuse_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    with DirectWriter(min_size=4096) as writer:
        assert not _write_through(writer, tmp_path / "small", b"x" * 100, 10)
        if _write_through(writer, tmp_path / "probe", b"p" * 8192, 8192) is False:
            pytest.skip("the file system of tmp_path does no direct I/O")
        monkeypatch.setattr(fsutil.fcntl, "fcntl", refuse_direct)
        assert not _write_through(writer, tmp_path / "refused", b"y" * 8192, 1000)
        monkeypatch.setattr(fsutil.fcntl, "fcntl", real_fcntl)
        assert not _write_through(writer, tmp_path / "after", b"z" * 8192, 1000)  # for the run
    assert (tmp_path / "small").read_bytes() == b"x" * 100
    assert (tmp_path / "refused").read_bytes() == b"y" * 8192
    assert (tmp_path / "after").read_bytes() == b"z" * 8192


Pwrite = Callable[[int, memoryview, int], int]


def _refusing_direct_after(accepted: int) -> Callable[[Pwrite], Pwrite]:
    """A device that takes ``accepted`` direct writes, then refuses them (EINVAL)."""

    def device(real_pwrite: Pwrite) -> Pwrite:
        calls: list[int] = []

        def pwrite(fd: int, data: memoryview, offset: int) -> int:
            calls.append(offset)
            if len(calls) > accepted and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwrite(fd, data, offset)

        return pwrite

    return device


def _writing_short(real_pwrite: Pwrite) -> Pwrite:
    """pwrite may write less than asked: the rest follows (buffered, once unaligned)."""
    return lambda fd, data, offset: real_pwrite(fd, data[: max(1, len(data) // 3)], offset)


@pytest.mark.parametrize(
    "device",
    [*(_refusing_direct_after(n) for n in range(3)), _writing_short],
    ids=["refused-at-once", "refused-after-one", "refused-after-two", "short-writes"],
)
def test_direct_writer_survives_a_device_that_refuses_or_writes_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: Callable[[Pwrite], Pwrite]
) -> None:
    monkeypatch.setattr(fsutil.os, "pwrite", device(os.pwrite))
    data = os.urandom((3 << 20) + 5)
    with DirectWriter(min_size=0) as writer:
        if not _write_through(writer, tmp_path / "f", data, 500_000):
            pytest.skip("the file system of tmp_path does no direct I/O")
    assert (tmp_path / "f").read_bytes() == data


def test_direct_writer_reports_an_error_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS and FUSE report some failed writes only when the file is closed."""
    real_close = os.close
    failed = []

    def close_fails(fd: int) -> None:
        real_close(fd)
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")

    before = _open_fds()
    writer = DirectWriter(min_size=0)
    if not _write_through(writer, tmp_path / "probe", b"p" * 8192, 8192):
        writer.close()
        pytest.skip("the file system of tmp_path does no direct I/O")
    writer.close()
    writer = DirectWriter(min_size=0)
    monkeypatch.setattr(fsutil.os, "close", close_fails)
    _write_through(writer, tmp_path / "f", b"x" * 10_000, 10_000)
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.errno == errno.EIO
    assert _open_fds() == before


def test_direct_writer_raises_the_first_write_error(tmp_path: Path) -> None:
    before = _open_fds()
    (tmp_path / "f").write_bytes(b"")
    writer = DirectWriter(min_size=0)
    fd = os.open(tmp_path / "f", os.O_RDONLY)  # every write fails: EBADF
    sink = writer.sink(fd, 1 << 20)
    if sink is None:
        os.close(fd)
        writer.close()
        pytest.skip("the file system of tmp_path does no direct I/O")
    with sink:
        sink.write(bytes(1 << 20))
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.errno == errno.EBADF
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    with pytest.raises(OSError):
        writer.sink(fd, 1 << 20)  # no new file once one has failed
    os.close(fd)  # a sink that raised never took the descriptor
    assert _open_fds() == before


def test_direct_writer_raises_a_fresh_copy_of_its_error_each_time(tmp_path: Path) -> None:
    """The kept error is raised from several places: never the same object twice."""
    writer = DirectWriter(min_size=0)
    writer._keep(OSError(errno.ENOSPC, "No space left on device"))
    raised = []
    for _ in range(2):
        with pytest.raises(OSError) as info:
            writer.raise_error()
        raised.append(info.value)
    assert raised[0] is not raised[1]
    assert [e.errno for e in raised] == [errno.ENOSPC, errno.ENOSPC]
    with pytest.raises(OSError):
        writer.close()


def test_discard_tree_removes_everything_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    tree = tmp_path / "old"
    for i in range(40):
        folder = tree / f"d{i % 4}" / f"e{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_bytes(os.urandom(100))
    (tree / "d0" / "to-outside").symlink_to(outside)  # a link to a folder: removed, not followed
    (tree / "d1" / "to-file").symlink_to(outside / "keep.txt")
    before = _open_fds()
    discard_tree(tree)
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "not ours"
    assert _open_fds() == before
    discard_tree(tree)  # already gone: quietly nothing
    link = tmp_path / "link"
    link.symlink_to(outside)
    discard_tree(link)  # a link given as the tree: nothing behind it is touched
    assert (outside / "keep.txt").read_text() == "not ours"


def test_deep_trees_are_walked_and_discarded_without_recursion(tmp_path: Path) -> None:
    """2,000 levels: Python 3.11's os.walk, os.fwalk and shutil.rmtree raise RecursionError
    there (issue 14.9); the tool's own walk and removal go through, and leave no descriptor."""
    tree = tmp_path / "deep"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:  # made relative to a descriptor, one level at a time: the path outgrows PATH_MAX
        for _ in range(2000):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    before = _open_fds()
    shallow = tmp_path / "shallow"
    (shallow / "a" / "b").mkdir(parents=True)
    (shallow / "a" / "b" / "f").write_bytes(b"x")
    assert sorted(rel for rel, _ in fsutil.walk_tree(shallow)) == ["a", "a/b", "a/b/f"]
    discard_tree(tree)
    assert not tree.exists()
    assert _open_fds() == before


def _flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = bytearray(4)
        fcntl.ioctl(fd, fsutil._FS_IOC_GETFLAGS, got)
    except OSError:
        return None  # this file system keeps no such flags
    finally:
        os.close(fd)
    return int.from_bytes(got, sys.byteorder)


def test_the_inode_flag_requests_are_linux_own() -> None:
    if struct.calcsize("l") == 8:  # <linux/fs.h> on x86_64 and arm64
        assert (fsutil._FS_IOC_GETFLAGS, fsutil._FS_IOC_SETFLAGS) == (0x80086601, 0x40086602)
    else:
        assert (fsutil._FS_IOC_GETFLAGS, fsutil._FS_IOC_SETFLAGS) == (0x80046601, 0x40046602)


def test_spread_subfolders_sets_the_top_folder_hint_where_there_is_one(tmp_path: Path) -> None:
    spread_subfolders(tmp_path)
    spread_subfolders(tmp_path)  # set already: nothing changes
    spread_subfolders(tmp_path / "missing")  # only a hint: never an error
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "file").write_bytes(b"x")
    assert (tmp_path / "staging" / "file").read_bytes() == b"x"
    flags = _flags(tmp_path)
    if flags is None or not flags & fsutil._FS_TOPDIR_FL:
        probe = tmp_path / "probe"
        probe.mkdir()
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
        try:  # set it by hand: a file system that refuses it (xfs, btrfs, tmpfs) skips
            top = fsutil._FS_TOPDIR_FL.to_bytes(4, sys.byteorder)
            fcntl.ioctl(fd, fsutil._FS_IOC_SETFLAGS, top)
        except OSError:
            pytest.skip("the file system of tmp_path has no 'T' attribute")
        finally:
            os.close(fd)
        pytest.fail("spread_subfolders did not set the 'T' attribute this file system has")
    assert not (_flags(tmp_path / "staging") or 0) & fsutil._FS_TOPDIR_FL  # not inherited


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_dead_temp_files_spares_live_owners(tmp_path: Path) -> None:
    import subprocess

    dead = _dead_pid()
    gone = [
        f".tmp-backup_20241010_030000.tar.gz.age.{dead}.0a1b2c3d",  # owned_temp_file
        f".tmp-backup_20241010_030000.tar.gz.{dead}",  # atomic_file
    ]
    for name in gone:
        (tmp_path / name).write_bytes(b"x" * 100)
    kept = [
        f".tmp-backup_20241010_030001.tar.gz.{os.getpid()}",  # a live owner (this process)
        ".tmp-backup_20241010_030002.tar.gz",  # no pid: only its own command may judge it
        "backup_20241010_030000.tar.gz",  # not a temp file at all
    ]
    for name in kept:
        (tmp_path / name).write_bytes(b"y")
    # A dead-looking pid, but the file is locked by a live process (another pid namespace,
    # e.g. a container sharing the folder): left alone.
    locked = tmp_path / f".tmp-backup_20241010_030003.tar.gz.age.{dead}.00000000"
    locked.write_bytes(b"z")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(locked),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        removed = fsutil.remove_dead_temp_files(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, locked.name])
    assert fsutil.remove_dead_temp_files(tmp_path / "missing") == []


def test_owned_temp_file_is_private_locked_and_removed(tmp_path: Path) -> None:
    with fsutil.owned_temp_file(tmp_path, "backup_20241010_030000.tar.gz.age") as path:
        assert path.name.startswith(f".tmp-backup_20241010_030000.tar.gz.age.{os.getpid()}.")
        assert path.stat().st_mode & 0o777 == 0o600
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # its owner holds it while in use
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert fsutil.remove_dead_temp_files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_kill_during_the_writable_check_leaves_no_probe_file(tmp_path: Path) -> None:
    """kill -9 of a restore in its first checks left ``.tmp-probe.PID`` in the app root (and
    in backend/ and public/), where no command ever removes it (issue 14.10; one of 20
    random kills of a restore here). The probe has no name to leave. The child dies by
    SIGKILL at the instant the probe is open, as if killed there."""
    folder = tmp_path / "app"
    folder.mkdir()
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from aica_backup import fsutil\n"
        "real_close = os.close\n"
        "def close(fd):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.close = close\n"
        "fsutil.check_writable_dir(Path(sys.argv[1]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert list(folder.iterdir()) == []
