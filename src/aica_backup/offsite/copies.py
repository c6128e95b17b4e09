"""One archive copy on one target: markers, listing, verified push and verified fetch.

See :mod:`aica_backup.offsite` for the protocol that makes a copy *complete*.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from .. import interrupt
from ..catalog import ArchiveName, parse_name, sha256_file
from ..codec import ENCRYPTED_SUFFIX
from ..errors import ArchiveError, StorageError, UsageError
from ..fsutil import atomic_file, free_bytes, owned_temp_file, storage_error
from ..storage import NotFoundError, Storage, check_name
from .form import (
    LocalArchive,
    backup_of,
    check_uploadable,
    is_encrypted,
    satisfies,
    upload_form,
)

MARKER_SUFFIX = ".sha256"
MAX_MARKER_BYTES = 4096
_MARKER_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_SIZE_LINE = re.compile(r"^# size: (\d+)$")


@dataclass(frozen=True)
class RemoteCopy:
    """An archive object on a target and whether it is a complete, verified copy."""

    name: str
    size: int
    mtime: datetime
    complete: bool
    sha256: str = ""
    problem: str | None = None

    @property
    def local_time(self) -> datetime:
        return _parsed(self.name).local_time

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "time": self.local_time.isoformat(),
            "uploaded": self.mtime.isoformat(),
            "complete": self.complete,
            "sha256": self.sha256,
            "problem": self.problem,
        }


# -- names and markers -------------------------------------------------------------------------


def marker_name(name: str) -> str:
    return name + MARKER_SUFFIX


def format_marker(name: str, sha256: str, size: int) -> bytes:
    return f"{sha256}  {name}\n# size: {size}\n".encode()


def parse_marker(data: bytes, name: str) -> tuple[str, int | None]:
    """(sha256, size or None) from a marker; ValueError if it is not a marker for ``name``."""
    sha: str | None = None
    size: int | None = None
    for line in data.decode("utf-8").splitlines():
        if m := _SIZE_LINE.match(line):
            size = int(m[1])
        elif m := _MARKER_LINE.match(line):
            if m[2] != name:
                raise ValueError(f"marker names {m[2]!r}")
            sha = m[1]
    if sha is None:
        raise ValueError("no checksum line")
    return sha, size


def read_marker(storage: Storage, name: str) -> tuple[str, int | None] | None:
    """(sha256, size) from the marker of ``name``; None if it has none."""
    buf = io.BytesIO()
    try:
        storage.get(marker_name(name), buf)
    except NotFoundError:
        return None
    data = buf.getvalue()
    if len(data) > MAX_MARKER_BYTES:
        raise StorageError(f"{storage.location}/{marker_name(name)} is not a checksum marker")
    try:
        return parse_marker(data, name)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError(
            f"{storage.location}/{marker_name(name)}: unreadable checksum marker ({exc})"
        ) from None


# -- listing ------------------------------------------------------------------------------------


def list_copies(storage: Storage) -> list[RemoteCopy]:
    """Every archive object on ``storage``, complete or not, newest first."""
    objects = {o.name: o for o in storage.list()}
    copies: list[RemoteCopy] = []
    for name, obj in objects.items():
        if name.endswith(MARKER_SUFFIX) or parse_name(name) is None:
            continue
        if marker_name(name) not in objects:
            copies.append(
                RemoteCopy(
                    name,
                    obj.size,
                    obj.mtime,
                    False,
                    problem="no checksum marker: the upload did not finish or was never verified",
                )
            )
            continue
        try:
            marker = read_marker(storage, name)
        except StorageError as exc:
            copies.append(RemoteCopy(name, obj.size, obj.mtime, False, problem=exc.message))
            continue
        if marker is None:  # deleted between list and read
            copies.append(RemoteCopy(name, obj.size, obj.mtime, False, problem="marker vanished"))
            continue
        sha, size = marker
        if size is not None and size != obj.size:
            problem = f"{obj.size} bytes, but {size} were verified at upload"
            copies.append(RemoteCopy(name, obj.size, obj.mtime, False, sha, problem))
        else:
            copies.append(RemoteCopy(name, obj.size, obj.mtime, True, sha))
    copies.sort(key=lambda c: name_sort_key(c.name), reverse=True)
    return copies


def archive_kind(name: str) -> str | None:
    parsed = parse_name(name)
    return parsed.kind if parsed else None


def _parsed(name: str) -> ArchiveName:
    parsed = parse_name(name)
    if parsed is None:  # only archive names become copies
        raise UsageError(f"not an archive name: {name}")
    return parsed


def name_sort_key(name: str) -> tuple[datetime, int]:
    return _parsed(name).sort_key


def missing(
    copies: Sequence[RemoteCopy], archives: Sequence[LocalArchive], *, sealed: bool
) -> list[LocalArchive]:
    """The local archives a target has no complete copy of (incomplete ones count as missing).

    Any form of a backup counts (``NAME`` or ``NAME.age``), but when recipients are given
    (``sealed``) only an encrypted one does.
    """
    complete = [c.name for c in copies if c.complete]
    return [a for a in archives if not any(satisfies(n, a.name, sealed=sealed) for n in complete)]


# -- pushing ------------------------------------------------------------------------------------


class _Digest(io.RawIOBase):
    """A sink that hashes what passes through (and writes it on to ``inner`` if given).

    Seeking back to 0 starts over, so a download retried by
    :class:`~aica_backup.storage.RetryingStorage` hashes only the final attempt.
    """

    def __init__(self, inner: IO[bytes] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise io.UnsupportedOperation("can only rewind to the start")
        self.sha = hashlib.sha256()
        self.size = 0
        if self.inner is not None:
            self.inner.seek(0)
            self.inner.truncate()
        return 0

    def truncate(self, size: int | None = None) -> int:
        return self.size

    def write(self, data: Any) -> int:
        if self.inner is not None:
            self.inner.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def verify_copy(storage: Storage, name: str, sha256: str, size: int) -> None:
    """Read the object back and compare its SHA-256 and size; StorageError if they differ."""
    digest = _Digest()
    storage.get(name, cast(IO[bytes], digest))
    if digest.size != size or digest.sha.hexdigest() != sha256:
        raise StorageError(
            f"{storage.location}/{name}: the copy read back differs from the archive "
            f"({digest.size} bytes, SHA-256 {digest.sha.hexdigest()[:12]}…; expected {size} "
            f"bytes, {sha256[:12]}…)",
            hint="the next run uploads it again",
        )


def push(
    storage: Storage, archive: LocalArchive, *, work_dir: Path, recipients: Sequence[Any] = ()
) -> RemoteCopy:
    """Upload ``archive`` in the form :func:`~.form.upload_form` gives it (encrypted whenever
    ``recipients`` are given), verify it by reading it back, then write its marker."""
    with upload_form(archive, recipients, work_dir) as upload:
        check_uploadable(upload, sealed=bool(recipients))
        return _push_as_is(storage, upload, work_dir)


def _push_as_is(storage: Storage, upload: LocalArchive, work_dir: Path) -> RemoteCopy:
    name = check_name(upload.name)
    storage.delete(marker_name(name))
    storage.put(name, upload.path)
    verify_copy(storage, name, upload.sha256, upload.size)
    try:
        with owned_temp_file(work_dir, marker_name(name)) as tmp:
            tmp.write_bytes(format_marker(name, upload.sha256, upload.size))
            storage.put(marker_name(name), tmp)
    except OSError as exc:
        raise storage_error(f"cannot write a checksum marker in {work_dir}", exc) from exc
    return RemoteCopy(name, upload.size, datetime.now(UTC), True, upload.sha256)


# -- fetching -----------------------------------------------------------------------------------


def find_copy(
    copies: Sequence[RemoteCopy], name: str | None, where: str = "the target"
) -> RemoteCopy:
    """The complete copy named ``name`` (with or without ``.age``), or the newest backup."""
    complete = [c for c in copies if c.complete]
    if name is None:
        backups = [c for c in complete if archive_kind(c.name) == "backup"]
        if not backups:
            raise UsageError(f"{where} holds no complete backup")
        return backups[0]
    by_name = {c.name: c for c in copies}
    for wanted in (name, name + ENCRYPTED_SUFFIX):  # the exact name first
        c = by_name.get(wanted)
        if c is not None:
            if not c.complete:
                raise ArchiveError(
                    f"the copy of {c.name} is incomplete ({c.problem})",
                    hint="push it again, or choose another archive",
                )
            return c
    raise UsageError(f"no archive named {name!r} on {where}")


def fetch(
    storage: Storage, name: str, dest_dir: Path, identities: Sequence[Any] | None = None
) -> Path:
    """Download the complete copy ``name`` into ``dest_dir`` and return its path.

    The bytes go to a temp file; their SHA-256 is compared with the copy's marker before the
    file is renamed into place, so a corrupt or truncated copy raises ArchiveError and leaves
    nothing behind. An identical file already in ``dest_dir`` is returned as it is.

    With ``identities``, an encrypted copy is decrypted on arrival: the verified download stays
    a temp file and only the plaintext archive (``NAME`` without ``.age``) appears.
    """
    check_name(name)
    marker = read_marker(storage, name)
    info = storage.stat(name)
    if info is None:
        raise UsageError(f"no archive named {name!r} on {storage.location}")
    if marker is None:
        raise ArchiveError(
            f"the copy of {name} on {storage.location} is incomplete (no checksum marker)",
            hint="its upload never finished: push it again, or choose another archive",
        )
    sha256, size = marker
    if size is not None and size != info.size:
        raise ArchiveError(
            f"the copy of {name} on {storage.location} is incomplete "
            f"({info.size} bytes, {size} were verified at upload)"
        )
    decrypt = bool(identities) and is_encrypted(name)
    dest = dest_dir / (backup_of(name) if decrypt else name)
    if dest.exists():
        if not decrypt and sha256_file(dest) == sha256:
            return dest
        raise UsageError(
            f"{dest} already exists and differs from the copy on {storage.location}"
            if not decrypt
            else f"{dest} already exists",
            hint="move the local file away first",
        )
    try:
        needed = info.size * (2 if decrypt else 1)
        if free_bytes(dest_dir) < needed:
            raise StorageError(f"not enough free space in {dest_dir} for {name} ({needed} bytes)")
        # Once in place, a stopped command says it was downloaded ("nothing changed" was untrue).
        if not decrypt:
            with atomic_file(dest) as fh:
                _download(storage, name, sha256, size, fh)
            interrupt.keep(f"{dest.name} was downloaded into {dest_dir}")
            return dest
        from ..crypto import decrypt_file

        with owned_temp_file(dest_dir, name) as tmp:
            with open(tmp, "wb") as fh:
                _download(storage, name, sha256, size, fh)
            decrypt_file(tmp, dest, identities or [])
            interrupt.keep(f"{dest.name} was downloaded into {dest_dir}")
    except OSError as exc:
        raise storage_error(f"cannot write {dest}", exc) from exc
    return dest


def _download(storage: Storage, name: str, sha256: str, size: int | None, fh: IO[bytes]) -> None:
    digest = _Digest(fh)
    storage.get(name, cast(IO[bytes], digest))
    if digest.sha.hexdigest() != sha256 or (size is not None and digest.size != size):
        raise ArchiveError(
            f"the copy of {name} on {storage.location} is corrupt: its SHA-256 "
            "differs from the one verified at upload",
            hint="nothing was written; fetch it from another target",
        )
