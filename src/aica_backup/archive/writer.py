"""Stream the app's files into a pax tar, hashing every member in the same read pass.

The tar stream is assembled in one reusable buffer: file data is read straight into it
(``readinto``), hashed there, and handed to the compressor a full buffer at a time, so each
byte is copied once on its way from the page cache to the compressor and memory stays bounded
by the buffer whatever the data size or member count. Headers are what :mod:`tarfile`'s
``TarInfo.tobuf`` writes, so the output is the standard pax format plain ``tar`` reads: plain
members' headers are built here (``ustar_header``, checked byte for byte against tarfile by the
tests), and anything that needs a pax record comes from tarfile itself. Header
mtimes are whole seconds (a fractional one costs an extra pax record per member); the exact
mtimes are in the manifest, and restore applies those.

A file that shrinks while it is read is padded to its announced size (the tar header is
already written) and recorded as a warning with its member; a file that grows is archived at
the size it had when opened.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import stat
import tarfile
from collections.abc import Callable
from functools import cache
from stat import S_ISREG
from typing import IO
from zlib import adler32

from ..layout import Component
from ..manifest import Member, member_path_problem

BUFFER = 1 << 20  # the compressor's block size: full blocks pass through its buffer untouched
Progress = Callable[[int], None]
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(_BLOCK)
_MAX7, _MAX11 = 8**7, 8**11  # the largest numbers 8- and 12-byte octal fields hold
# O_NONBLOCK: opening a FIFO found among the uploads blocked the whole backup (and its lock)
# until some process wrote to it; for regular files it changes nothing.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@cache
def _names(uid: int, gid: int) -> tuple[str, str]:
    """The user and group names of a uid and gid ("" where there is none)."""
    try:
        uname = pwd.getpwuid(uid).pw_name
    except KeyError:
        uname = ""
    try:
        gname = grp.getgrgid(gid).gr_name
    except KeyError:
        gname = ""
    return uname, gname


_Fixed = tuple[bytes, bytes, int]


@cache
def _fixed(kind: bytes, mode: int, uid: int, gid: int, uname: str, gname: str) -> _Fixed | None:
    """The header fields that members share: bytes 100-124 (mode, uid, gid), bytes 156-512
    (type, empty link name, magic, owner names, zeros), and the sum of both with the
    checksum field counted as eight spaces. None when any of them needs a pax record."""
    if not (uname.isascii() and gname.isascii()) or len(uname) > 32 or len(gname) > 32:
        return None
    if not (0 <= uid < _MAX7 and 0 <= gid < _MAX7):
        return None
    owner = b"%07o\0%07o\0%07o\0" % (mode & 0o7777, uid, gid)
    tail = b"".join(
        (
            kind,
            bytes(100),  # link name
            tarfile.POSIX_MAGIC,
            uname.encode("ascii").ljust(32, b"\0"),
            gname.encode("ascii").ljust(32, b"\0"),
            bytes(_BLOCK - 329),  # device numbers, prefix, padding
        )
    )
    return owner, tail, sum(owner) + sum(tail) + 8 * ord(" ")


def ustar_header(
    name: str,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    uname: str,
    gname: str,
) -> bytes | None:
    """The header ``TarInfo.tobuf(PAX_FORMAT)`` writes for a plain member, built ~10× faster.

    Only for what needs no pax record: ASCII names that fit the 100-byte field, numbers that
    fit their octal fields, a file or a folder. Anything else returns None (use tarfile).
    The tests check it byte for byte against tarfile.
    """
    fixed = _fixed(kind, mode, uid, gid, uname, gname)
    return None if fixed is None else _ustar(fixed, name, kind, size, mtime)


def _ustar(fixed: _Fixed, name: str, kind: bytes, size: int, mtime: int) -> bytes | None:
    """``ustar_header`` given the shared fields: only the name, size and mtime are formatted
    and summed per member."""
    if not (0 <= size < _MAX11 and 0 <= mtime < _MAX11):
        return None
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if len(name) > 100 or not name.isascii():
        return None
    owner, tail, fixed_sum = fixed
    raw = name.encode("ascii")
    times = b"%011o\0%011o\0" % (size, mtime)
    # The byte sum of name and numbers: Adler-32's low half is 1 + that sum modulo 65521, and
    # 100 ASCII bytes and 24 digits sum to at most 14,020, so it never wraps (4× sum()).
    checksum = b"%06o\0 " % ((adler32(times, adler32(raw)) & 0xFFFF) - 1 + fixed_sum)
    return b"".join((raw, bytes(100 - len(raw)), owner, times, checksum, tail))


def _fill(fd: int, chunk: memoryview, got: int = 0) -> bool:
    """Read into ``chunk`` (its first ``got`` bytes already read) until it is full; True if the
    file ended first (it shrank since its size was taken: the rest is zeros)."""
    want = len(chunk)
    while got < want:
        r = os.readv(fd, [chunk[got:]])
        if r == 0:
            chunk[got:] = bytes(want - got)
            return True
        got += r
    return False


class ArchiveWriter:
    """Writes members to a tar stream and remembers each one for the manifest."""

    def __init__(self, stream: IO[bytes], progress: Progress | None = None) -> None:
        self._out = stream
        self._buf = bytearray(BUFFER)
        self._view = memoryview(self._buf)
        self._pos = 0  # bytes of the buffer in use
        self._flushed = 0  # bytes of tar stream handed to the compressor
        self._closed = False
        self._progress = progress
        self.members: list[Member] = []
        self.warnings: list[str] = []
        # O_NOATIME (Linux; only for files this user owns, or as root): reading a file whose
        # access time is a day old updates it even under relatime, so a daily backup of
        # 100,000 uploads left 25-31 MB of inode tables to write back (0.1 MB without).
        self._noatime = getattr(os, "O_NOATIME", 0)
        self._owner: tuple[bytes, int, int, int] | None = None  # the last header's shared fields
        self._fixed: _Fixed | None = None

    # -- the tar stream --------------------------------------------------------------------

    def _flush(self) -> None:
        if self._pos:
            self._out.write(self._view[: self._pos] if self._pos < BUFFER else self._buf)
            self._flushed += self._pos
            if self._progress is not None:
                self._progress(self._pos)
            self._pos = 0

    def _put(self, data: bytes) -> None:
        """Append small data (headers, padding) to the stream."""
        n = len(data)
        if n < BUFFER - self._pos:  # the common case: it fits
            self._buf[self._pos : self._pos + n] = data
            self._pos += n
            return
        view = memoryview(data)
        while view:
            n = min(len(view), BUFFER - self._pos)
            self._view[self._pos : self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]
            if self._pos == BUFFER:
                self._flush()

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self._put(_ZEROS[: _BLOCK - size % _BLOCK])

    def _header(
        self, name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int
    ) -> bytes:
        owner = (kind, mode, uid, gid)
        if owner != self._owner:  # members mostly share all four: skip two cache lookups
            self._owner, self._fixed = owner, _fixed(kind, mode, uid, gid, *_names(uid, gid))
        if self._fixed is not None:
            fast = _ustar(self._fixed, name, kind, size, mtime)
            if fast is not None:
                return fast
        uname, gname = _names(uid, gid)
        # non-ASCII or long names, huge numbers: tarfile adds pax records
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
        info.size, info.mtime, info.uname, info.gname = size, mtime, uname, gname
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")

    def _small(self, header: bytes, fd: int, size: int) -> tuple[str, bool] | None:
        """Header, data and padding of a member that fits in the buffer, in one go (most
        uploads): a single read straight into place. None if it does not fit."""
        pos = self._pos
        start = pos + len(header)
        end = start + size
        padded = end + (-size % _BLOCK)
        if padded > BUFFER:
            return None
        buf = self._buf
        buf[pos:start] = header
        chunk = self._view[start:end]
        got = os.readv(fd, [chunk]) if size else 0
        shrank = got < size and _fill(fd, chunk, got)  # a short read: rare, but allowed
        buf[end:padded] = _ZEROS[: padded - end]
        self._pos = padded
        if padded == BUFFER:
            self._flush()
        return hashlib.sha256(chunk).hexdigest(), shrank

    def _data(self, fd: int, size: int) -> tuple[str, bool]:
        """Copy ``size`` bytes of ``fd`` into the stream; return (SHA-256, whether it shrank)."""
        sha = hashlib.sha256()
        shrank = False
        left = size
        while left:
            n = min(left, BUFFER - self._pos)
            chunk = self._view[self._pos : self._pos + n]
            shrank = _fill(fd, chunk) or shrank
            sha.update(chunk)
            self._pos += n
            left -= n
            if self._pos == BUFFER:
                self._flush()
        self._pad(size)
        return sha.hexdigest(), shrank

    # -- members ---------------------------------------------------------------------------

    def _unrestorable(self, arcname: str) -> bool:
        """True (with a warning) for a path no restore could create: never archived."""
        problem = member_path_problem(arcname)
        if problem is not None:
            self.warnings.append(f"{arcname}: {problem}, not archived")
        return problem is not None

    def add_dir(self, arcname: str, st: os.stat_result, component: Component) -> None:
        if self._unrestorable(arcname):
            return
        mode = stat.S_IMODE(st.st_mode)
        self._put(
            self._header(arcname, tarfile.DIRTYPE, mode, st.st_uid, st.st_gid, 0, int(st.st_mtime))
        )
        self.members.append(Member(arcname, "dir", 0, mode, st.st_mtime, "", component))

    def add_file(
        self,
        arcname: str,
        path: os.PathLike[str] | str,
        component: Component,
        mode: int | None = None,
    ) -> bool:
        """Archive one regular file; False (with a warning) if it vanished or is not regular.

        ``mode`` overrides the file's own permission bits (the snapshot takes the live file's).
        """
        if self._unrestorable(arcname):
            return False
        try:
            fd = self._open(path)
        except FileNotFoundError:
            self.warnings.append(f"{arcname}: vanished during backup, not archived")
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.warnings.append(f"{arcname}: symbolic link, not archived")
                return False
            if exc.errno == errno.ENXIO:  # a UNIX socket: skipped, not a failed backup
                self.warnings.append(f"{arcname}: not a regular file, not archived")
                return False
            raise
        try:
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode):
                self.warnings.append(f"{arcname}: not a regular file, not archived")
                return False
            size = st.st_size
            if size > BUFFER:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if mode is None:
                mode = st.st_mode & 0o7777
            header = self._header(
                arcname, tarfile.REGTYPE, mode, st.st_uid, st.st_gid, size, int(st.st_mtime)
            )
            done = self._small(header, fd, size)
            if done is None:
                self._put(header)
                done = self._data(fd, size)
            sha256, shrank = done
        finally:
            os.close(fd)
        if shrank:
            self.warnings.append(f"{arcname}: shrank while being read; archived padded with zeros")
        self.members.append(Member(arcname, "file", size, mode, st.st_mtime, sha256, component))
        return True

    def _open(self, path: os.PathLike[str] | str) -> int:
        if self._noatime:
            try:
                return os.open(path, _OPEN_FLAGS | self._noatime)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:  # EACCES: unreadable whatever the flags
                    raise
                self._noatime = 0  # files of another user: read them as before from now on
        return os.open(path, _OPEN_FLAGS)

    def add_bytes(self, arcname: str, data: bytes | list[bytes], mode: int, mtime: float) -> None:
        """Add an in-memory member (the manifest), given whole or in pieces; not in ``members``."""
        chunks = [data] if isinstance(data, bytes) else data
        size = sum(len(c) for c in chunks)
        uid, gid = os.getuid(), os.getgid()
        self._put(self._header(arcname, tarfile.REGTYPE, mode, uid, gid, size, int(mtime)))
        for chunk in chunks:
            self._put(chunk)
        self._pad(size)

    def close(self) -> None:
        """End the archive as tar does: two zero blocks, then zeros to a whole record."""
        if self._closed:
            return
        self._put(bytes(2 * _BLOCK))
        offset = self._flushed + self._pos
        if offset % _RECORD:
            self._put(bytes(_RECORD - offset % _RECORD))
        self._flush()
        self._closed = True

    def abort(self) -> None:
        """Give up after a failure: write nothing more (the caller deletes the output)."""
        self._closed = True

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()
