"""Stream the app's files into a pax tar, hashing every member in the same read pass.

Memory is bounded by the copy buffer whatever the data size. A file that shrinks while it is
read is padded to its announced size (the tar header is already written) and recorded as a
warning with its member; a file that grows is archived at the size it had when opened.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import io
import os
import pwd
import stat
import tarfile
from collections.abc import Callable
from functools import cache
from typing import IO

from ..layout import Component
from ..manifest import Member

BUFFER = 1 << 20
Progress = Callable[[int], None]


@cache
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@cache
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


class _ExactReader:
    """Reads exactly ``size`` bytes from ``fh``, hashing them; zero-pads a file that shrank."""

    def __init__(self, fh: IO[bytes], size: int, progress: Progress | None) -> None:
        self.fh = fh
        self.left = size
        self.sha = hashlib.sha256()
        self.shrank = False
        self.progress = progress

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:
            self.shrank = True
            data += bytes(n - len(data))
        self.left -= n
        self.sha.update(data)
        if self.progress is not None:
            self.progress(n)
        return data


class ArchiveWriter:
    """Writes members to a tar stream and remembers each one for the manifest."""

    def __init__(self, stream: IO[bytes], progress: Progress | None = None) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, bufsize=BUFFER
        )
        self._tar.copybufsize = BUFFER  # type: ignore[attr-defined]  # undocumented, 16 KB default
        self._progress = progress
        self.members: list[Member] = []
        self.warnings: list[str] = []

    def _info(self, arcname: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = st.st_mtime
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
        return info

    def add_dir(self, arcname: str, st: os.stat_result, component: Component) -> None:
        self._tar.addfile(self._info(arcname, st, tarfile.DIRTYPE))
        self.members.append(
            Member(arcname, "dir", 0, stat.S_IMODE(st.st_mode), st.st_mtime, "", component)
        )

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
        try:
            # O_NONBLOCK: opening a FIFO found among the uploads blocked the whole backup (and
            # its lock) until some process wrote to it; for regular files it changes nothing.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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
        with os.fdopen(fd, "rb", buffering=0) as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.warnings.append(f"{arcname}: not a regular file, not archived")
                return False
            info = self._info(arcname, st, tarfile.REGTYPE)
            info.size = st.st_size
            if mode is not None:
                info.mode = mode
            reader = _ExactReader(fh, st.st_size, self._progress)
            self._tar.addfile(info, reader)  # type: ignore[arg-type]
        if reader.shrank:
            self.warnings.append(f"{arcname}: shrank while being read; archived padded with zeros")
        self.members.append(
            Member(
                arcname,
                "file",
                st.st_size,
                info.mode,
                st.st_mtime,
                reader.sha.hexdigest(),
                component,
            )
        )
        return True

    def add_bytes(self, arcname: str, data: bytes, mode: int, mtime: float) -> None:
        """Add an in-memory member (the manifest); it is not listed in ``members``."""
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = mode
        info.mtime = mtime
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def abort(self) -> None:
        """Give up after a failure: write nothing more (the caller deletes the output).

        Without this, tarfile's stream finaliser flushes into the already closed output at
        garbage collection and prints "Exception ignored … write to closed file" with a
        traceback on stderr, after the one-line error.
        """
        self._tar.closed = True  # type: ignore[attr-defined]  # set by TarFile, not in stubs
        # tarfile._Stream: with ``closed`` set, its __del__ and close() do nothing
        with contextlib.suppress(AttributeError):  # (read-only on other file objects)
            self._tar.fileobj.closed = True  # type: ignore[attr-defined]

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()
