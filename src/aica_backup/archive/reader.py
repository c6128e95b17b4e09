"""Read an archive as hostile input: one streaming pass, allow-list of member types, caps.

Only regular files and folders with safe relative names are accepted; links, devices, FIFOs,
sparse files, absolute paths and ``..`` are refused outright. Header blocks (pax, GNU long
names) are capped before ``tarfile`` reads them into memory, and the member count and the
bytes written are capped against decompression bombs. The stream is read to its very end so
that the compressor's own checksum is verified too.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from isal import isal_zlib

from ..errors import AicaBackupError, ArchiveError
from ..manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    member_path_problem,
    parse_manifest,
    safe_member_path,
)

BUFFER = 1 << 20
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header larger than this is an attack
MAX_PADDING = 1 << 20  # zeros after the end marker (tar -b 2048 pads to 1 MiB records)
MAX_HEADER_CHAIN = 16  # header blocks before one member (pax + GNU long name/link: at most 3)
_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
# A header block that is neither a valid header nor all zeros (not in tarfile's public API).
_InvalidHeaderError: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]


class _SafeTarInfo(tarfile.TarInfo):
    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Any:
        try:
            return super().frombuf(buf, encoding, errors)
        except _InvalidHeaderError as exc:
            # tarfile takes a damaged header block after the first member for the end of the
            # archive, silently: garbage where the end marker belongs passed unnoticed.
            raise ArchiveError(f"damaged tar header block: {exc}") from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type == tarfile.GNUTYPE_SPARSE:  # its map blocks would be read without bound
            raise ArchiveError(f"refusing sparse file {self.name!r}")
        if self.size < 0:
            raise ArchiveError(f"negative size in tar header of {self.name!r}")
        # tarfile reads a header member's whole payload into memory: refuse huge ones first.
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise ArchiveError(f"oversized tar header block ({self.size} bytes)")
        if self.type == tarfile.XGLTYPE:
            # tarfile applies every global pax key to every later member: a few MB of them
            # cost minutes a member and GBs of memory. aica-backup never writes one.
            raise ArchiveError("refusing global pax header (not written by aica-backup)")
        # tarfile also recurses once per header block in a row (a few thousand of them raised
        # RecursionError): cap the chain. Each block is dropped once its member is read, so
        # with global headers refused nothing piles up across the archive.
        state = tarfile_.__dict__
        if self.type in _HEADER_TYPES:
            state["_aica_chain"] = state.get("_aica_chain", 0) + 1
            if state["_aica_chain"] > MAX_HEADER_CHAIN:
                raise ArchiveError("too many tar header blocks in a row")
        else:
            state["_aica_chain"] = 0
        return super()._proc_member(tarfile_)  # type: ignore[misc]


@dataclass(frozen=True)
class Limits:
    """Caps against hostile archives. ``max_bytes`` is the total of all member sizes."""

    max_members: int = 2_000_000
    max_bytes: int = 1 << 42


@dataclass(frozen=True)
class Entry:
    path: str
    type: str  # "file" or "dir"
    size: int
    mode: int
    mtime: float


@dataclass
class ScanResult:
    manifest: Manifest
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, size)
    dirs: set[str] = field(default_factory=set)
    total_bytes: int = 0


# Called for each file: return a writable sink for its bytes, or None to only hash it.
OpenSink = Callable[[Entry], IO[bytes] | None]
OnEntry = Callable[[Entry], None]
OnFileDone = Callable[[Entry, str], None]  # the entry and its SHA-256
# python-isal raises its own IsalError (not a zlib.error) for a corrupt deflate stream, and
# zstandard its ZstdError: without them a flipped bit escaped as an "internal error" (exit 2)
# instead of a damaged-archive error naming the archive (exit 6).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    ValueError,
    cast(type[Exception], isal_zlib.error),  # the stubs declare it an instance
)
with contextlib.suppress(ImportError):  # the optional zstd extra
    import zstandard

    _DECODE_ERRORS += (zstandard.ZstdError,)


def _entry(info: tarfile.TarInfo) -> Entry:
    path = safe_member_path(info.name)
    if path is None:
        raise ArchiveError(f"unsafe member name {info.name!r}", member=info.name)
    problem = member_path_problem(path)
    if problem is not None:
        raise ArchiveError(f"member {path!r} cannot be restored: {problem}", member=path)
    if info.size < 0:  # a pax "size" record is applied after the header checks
        raise ArchiveError(f"negative size for member {path!r}", member=path)
    if info.sparse is not None or info.type not in (
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.DIRTYPE,
    ):
        kind = {
            tarfile.SYMTYPE: "symbolic link",
            tarfile.LNKTYPE: "hard link",
            tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "FIFO",
        }.get(info.type, "unsupported member type")
        if info.sparse is not None:
            kind = "sparse file"
        raise ArchiveError(f"refusing {kind} {info.name!r}", member=path)
    kind = "dir" if info.isdir() else "file"
    return Entry(
        path, kind, info.size if kind == "file" else 0, info.mode & 0o7777, float(info.mtime)
    )


def scan_archive(
    stream: IO[bytes],
    *,
    limits: Limits = Limits(),
    open_sink: OpenSink | None = None,
    on_dir: OnEntry | None = None,
    on_file_done: OnFileDone | None = None,
    before_close: Callable[[Entry, IO[bytes]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Read a decompressed tar stream to its end; hash every file; return what it held.

    Raises ArchiveError (naming the member where possible) for anything unsafe or damaged.
    Errors raised by the callbacks (e.g. a full disk while writing a sink) pass through.
    """
    on_bytes = progress or (lambda _n: None)
    files: dict[str, tuple[str, int]] = {}
    dirs: set[str] = set()
    parents: set[str] = set()  # every folder some member lies in
    manifest_bytes: bytes | None = None
    total = 0
    count = 0
    try:
        feed = _Feed(stream)
        # Mode "r" over a forward-only stream: tarfile parses the headers (pax, GNU long
        # names) from the feed, and the member data is read here straight from its buffer.
        tar = tarfile.TarFile(fileobj=feed, mode="r", tarinfo=_SafeTarInfo)  # type: ignore[arg-type]
        while (info := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # it keeps every TarInfo
            count += 1
            if count > limits.max_members:
                raise ArchiveError(f"more than {limits.max_members} members: refusing")
            if manifest_bytes is not None:
                raise ArchiveError(f"member {info.name!r} follows the manifest", member=info.name)
            if info.isdir() and info.name.strip("/") in ("", "."):
                continue  # "./" as plain tar writes it: the archive's own root
            entry = _entry(info)
            if entry.path in files or entry.path in dirs:
                raise ArchiveError(f"member {entry.path!r} appears twice", member=entry.path)
            _no_file_above(entry, files, parents)
            if entry.type == "dir":
                dirs.add(entry.path)
                if on_dir is not None:
                    on_dir(entry)
                continue
            total += entry.size
            if total > limits.max_bytes:
                raise ArchiveError(
                    f"archive expands beyond {limits.max_bytes} bytes (at {entry.path!r}): "
                    "refusing as a possible decompression bomb",
                    member=entry.path,
                )
            if entry.path == MANIFEST_NAME:
                if entry.size > MAX_MANIFEST_BYTES:
                    raise ArchiveError("manifest.json is implausibly large", member=MANIFEST_NAME)
                manifest_bytes = feed.read(entry.size)
                if len(manifest_bytes) != entry.size:
                    raise ArchiveError("archive is truncated")
                continue
            sink = open_sink(entry) if open_sink is not None else None
            try:
                sha256 = feed.copy(entry.size, sink, on_bytes)
                if sink is not None and before_close is not None:
                    before_close(entry, sink)
            finally:
                if sink is not None:
                    sink.close()
            files[entry.path] = (sha256, entry.size)
            if on_file_done is not None:
                on_file_done(entry, sha256)
        # tarfile ends quietly at a short or missing header: only a real end marker will do.
        if feed.last != _ZERO_BLOCK:
            raise ArchiveError("archive is truncated (no end-of-archive marker)")
        _drain(feed)
    except AicaBackupError:
        raise
    except _DECODE_ERRORS as exc:
        raise ArchiveError(f"archive is damaged or truncated: {exc}") from None
    except OSError as exc:
        if exc.filename is None and exc.errno is None:  # BadGzipFile and friends
            raise ArchiveError(f"archive is damaged: {exc}") from None
        raise
    if manifest_bytes is None:
        raise ArchiveError("archive has no manifest.json (not made by aica-backup, or truncated)")
    return ScanResult(parse_manifest(manifest_bytes), files, dirs, total)


def _no_file_above(entry: Entry, files: dict[str, Any], parents: set[str]) -> None:
    """Refuse a member under a file (``a`` then ``a/b``), or a file where members were under
    it (``a/b`` then ``a``): no restore can create both, and ``tar -x`` keeps only one."""
    if entry.type == "file" and entry.path in parents:
        raise ArchiveError(f"file {entry.path!r} has members under it", member=entry.path)
    parent = entry.path.rpartition("/")[0]
    while parent and parent not in parents:
        if parent in files:
            raise ArchiveError(
                f"member {entry.path!r} lies under the file {parent!r}", member=entry.path
            )
        parents.add(parent)
        parent = parent.rpartition("/")[0]


class _Feed:
    """The decompressed tar stream, read forward only, one buffer for headers and data.

    tarfile reads headers through :meth:`read` and skips padding through :meth:`seek`;
    member data goes through :meth:`copy`, hashed and written from the buffer itself, with no
    copies beyond the one out of the decompressor. :attr:`last` is the last block tarfile
    read, so the end marker can be checked.
    """

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.buf = b""
        self.off = 0  # read position in buf
        self.pos = 0  # position in the stream
        self.last = b""

    def _refill(self) -> bool:
        self.buf = self.inner.read(BUFFER)
        self.off = 0
        return bool(self.buf)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ArchiveError("unbounded read of the tar stream")
        if self.off + size <= len(self.buf):  # the common case: it is in the buffer
            data = self.buf[self.off : self.off + size]
            self.off += size
        else:
            parts = [self.buf[self.off :]]
            need = size - len(parts[0])
            while need and self._refill():
                parts.append(self.buf[:need])
                self.off = len(parts[-1])
                need -= self.off
            data = b"".join(parts)
        self.pos += len(data)
        self.last = data
        return data

    def copy(self, size: int, sink: IO[bytes] | None, on_bytes: Callable[[int], None]) -> str:
        """Pass ``size`` bytes to ``sink`` (if any); return their SHA-256."""
        sha = hashlib.sha256()
        left = size
        while left > 0:
            if self.off >= len(self.buf) and not self._refill():
                raise ArchiveError("archive is truncated")
            view = memoryview(self.buf)[self.off : self.off + left]
            n = len(view)
            sha.update(view)
            while sink is not None and view:
                view = view[sink.write(view) or 0 :]
            self.off += n
            self.pos += n
            left -= n
            on_bytes(n)
        return sha.hexdigest()

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise ArchiveError("tar stream asks to go backwards: refusing")
        while self.pos < pos:
            if not self.read(min(BUFFER, pos - self.pos)):
                break  # end of data: the next header read reports it
        return self.pos


def _drain(feed: _Feed) -> None:
    """Read past the tar end marker to EOF: only zero padding may follow, and the
    decompressor checks its CRC/length trailer as it reaches the end. Padding to a tar record
    is at most a few KiB (tar's blocking factor): more than :data:`MAX_PADDING` is refused,
    not read on (20 GiB of zeros took 15 s)."""
    rest = feed.buf[feed.off :]
    seen = 0
    while rest:
        if rest.count(0) != len(rest):
            raise ArchiveError("unexpected data after the end of the tar archive")
        seen += len(rest)
        if seen > MAX_PADDING:
            raise ArchiveError(
                f"more than {MAX_PADDING >> 20} MiB of padding after the end of the tar archive"
            )
        rest = feed.inner.read(BUFFER)


def compare_with_manifest(result: ScanResult) -> list[tuple[str, str]]:
    """Every (member, problem) where the archive's content and its manifest disagree."""
    problems: list[tuple[str, str]] = []
    named: set[str] = set()
    for m in result.manifest.members:
        named.add(m.path)
        if m.type == "dir":
            if m.path not in result.dirs:
                problems.append((m.path, "folder listed in the manifest is missing"))
            continue
        got = result.files.get(m.path)
        if got is None:
            problems.append((m.path, "file listed in the manifest is missing from the archive"))
        elif got[1] != m.size:
            problems.append((m.path, f"size {got[1]} differs from the manifest's {m.size}"))
        elif got[0] != m.sha256:
            problems.append((m.path, "SHA-256 mismatch: content differs from the manifest"))
    for path in sorted((set(result.files) | result.dirs) - named):
        problems.append((path, "member is not listed in the manifest"))
    return problems


def check_against_manifest(result: ScanResult) -> None:
    """Raise ArchiveError naming the first member that disagrees with the manifest."""
    problems = compare_with_manifest(result)
    if problems:
        member, why = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ArchiveError(f"{member}: {why}{more}", member=member)
