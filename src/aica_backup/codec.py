"""Compression formats of the archive stream, and the archive file-name suffixes.

``gzip`` (the guide's ``.tar.gz``, default) is written by python-isal's threaded compressor:
standard gzip that plain ``tar -xzf`` reads, several times faster than zlib. ``zstd``
(``.tar.zst``) is optional, for operators who do not need gzip. Encryption (``.age``) wraps
either; see :mod:`aica_backup.crypto`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import IO, Any, Literal, cast

from isal import igzip_threaded

from .errors import UsageError

Compression = Literal["gzip", "zstd"]
SUFFIXES: dict[str, str] = {"gzip": ".tar.gz", "zstd": ".tar.zst"}
ENCRYPTED_SUFFIX = ".age"
BLOCK = 1 << 20


def archive_suffix(compression: str, encrypted: bool) -> str:
    return SUFFIXES[compression] + (ENCRYPTED_SUFFIX if encrypted else "")


def format_of(name: str) -> tuple[Compression, bool]:
    """(compression, encrypted) from an archive file name."""
    encrypted = name.endswith(ENCRYPTED_SUFFIX)
    base = name[: -len(ENCRYPTED_SUFFIX)] if encrypted else name
    for compression, suffix in SUFFIXES.items():
        if base.endswith(suffix):
            return cast(Compression, compression), encrypted
    raise UsageError(f"not an archive name (expected .tar.gz or .tar.zst): {name}")


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise UsageError(
            "zstd archives need the optional extra: pip install 'aica-backup[zstd]'"
        ) from None
    return zstandard


@contextlib.contextmanager
def compressing_writer(
    raw: IO[bytes], compression: str, level: int, threads: int = 0
) -> Iterator[IO[bytes]]:
    """Yield a writable stream that compresses into ``raw`` (left open). 0 threads = all cores."""
    n = threads or cpu_threads()
    stream: IO[bytes]
    if compression == "gzip":
        threaded = igzip_threaded.open(  # type: ignore[no-untyped-call]
            raw, "wb", compresslevel=level, threads=n, block_size=BLOCK
        )
        stream = cast(IO[bytes], _FreshErrors(threaded))
    else:
        cctx = _zstd().ZstdCompressor(level=level, threads=n)
        stream = cctx.stream_writer(raw, closefd=False)
    try:
        yield stream
        stream.close()
    except BaseException:
        # The output is thrown away: never flush it. Stop the compressor's threads instead,
        # however the failure (Ctrl-C above all) left them.
        if isinstance(stream, _FreshErrors):
            stream.abandon()
        else:
            with contextlib.suppress(Exception):
                stream.close()
        raise


@contextlib.contextmanager
def decompressing_reader(raw: IO[bytes], compression: str) -> Iterator[IO[bytes]]:
    """Yield a readable stream of the decompressed tar bytes of ``raw`` (left open)."""
    stream: IO[bytes]
    if compression == "gzip":
        # Inflated in a thread of its own (the GIL is released), a block ahead of the reader
        # who hashes and writes: on two cores that takes inflating off the critical path.
        threaded = igzip_threaded.open(  # type: ignore[no-untyped-call]
            raw, "rb", threads=1, block_size=BLOCK
        )
        stream = cast(IO[bytes], _FreshErrors(threaded))
    else:
        dctx = _zstd().ZstdDecompressor()
        stream = io.BufferedReader(
            dctx.stream_reader(raw, read_across_frames=True, closefd=False), BLOCK
        )
    try:
        yield stream
    finally:
        stream.close()


class _FreshErrors:
    """Raise a new copy of every error python-isal's threaded writer (or reader) raises.

    That writer keeps the first error of its worker threads and raises the *same object* again
    from every later write, flush and close. Raised from several places, the object's
    ``__context__`` links into a cycle, and ``contextlib.ExitStack`` then loops forever walking
    it: a backup that hit a full disk hung at 100 % CPU instead of failing. A copy raised
    outside the ``except`` block carries none of that history.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.inner, method)(*args)
        except Exception as exc:
            fresh = copy.copy(exc)  # same type, args and errno; no traceback or context
        raise fresh

    def write(self, data: bytes) -> int:
        return int(self._call("write", data))

    def read(self, size: int = -1) -> bytes:
        return bytes(self._call("read", size))

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return int(self._call("readinto", buffer))

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return bool(self.inner.closed)

    def abandon(self, timeout: float = 1.0) -> None:
        """Stop python-isal's threaded writer without writing anything it still holds.

        Its ``close()`` first flushes: it waits until every block handed to it is compressed
        and written, in order. A Ctrl-C breaks that order: ``write()`` numbers a block, then
        waits to put it on a full queue, and Ctrl-C lands there more often than not; that block
        never reaches the queue, the thread that writes blocks out waits for it for ever, and
        the flush waits for that thread (the backup hung with its lock held and a 390 MB temp
        file). After a failure nothing it holds is wanted: its threads are told to stop, and
        its queues emptied until they have (so none waits on a full one), for at most
        ``timeout`` seconds; anything later is written nowhere (the caller deletes the file).
        """
        writer = getattr(self.inner, "raw", None)  # the BufferedWriter's _ThreadedGzipWriter
        if writer is None or not hasattr(writer, "running"):  # a reader, or isal changed
            with contextlib.suppress(Exception):
                self.inner.close()
            return
        writer.running = False
        writer._closed = True  # its BufferedWriter (closed now, too) never flushes into it
        queues = [*getattr(writer, "input_queues", ()), *getattr(writer, "output_queues", ())]
        threads = [
            getattr(writer, "output_worker", None),
            *getattr(writer, "compression_workers", ()),
        ]
        alive = [t for t in threads if isinstance(t, threading.Thread) and t.is_alive()]
        deadline = time.monotonic() + timeout
        while alive and time.monotonic() < deadline:
            for q in queues:
                with contextlib.suppress(queue.Empty):
                    while True:
                        q.get_nowait()
            for t in alive:
                t.join(0.005)
            alive = [t for t in alive if t.is_alive()]


class HashingWriter(io.RawIOBase):
    """A write-through wrapper that counts and SHA-256-hashes every byte written to ``inner``."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.inner.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.inner.flush()
