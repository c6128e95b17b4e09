"""The archive format: a pax tar, gzip- (or zstd-) compressed, optionally age-encrypted.

Writers live in :mod:`.writer`, the hostile-input reader in :mod:`.reader`; this module opens
an archive file through its decryption and decompression layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..codec import decompressing_reader, format_of
from ..crypto import decrypting_reader
from .reader import Limits, ScanResult, check_against_manifest, compare_with_manifest, scan_archive
from .writer import ArchiveWriter

__all__ = [
    "ArchiveWriter",
    "Limits",
    "ScanResult",
    "check_against_manifest",
    "compare_with_manifest",
    "open_tar_stream",
    "scan_file",
]


@contextlib.contextmanager
def open_tar_stream(path: Path, identities: Sequence[Any] | None = None) -> Iterator[IO[bytes]]:
    """Yield the decompressed (and, for ``.age``, decrypted) tar stream of an archive file."""
    compression, encrypted = format_of(path.name)
    with open(path, "rb") as raw:
        if encrypted:
            from ..crypto import load_identities

            keys = identities if identities is not None else load_identities(None)
            with (
                decrypting_reader(raw, keys) as plain,
                decompressing_reader(plain, compression) as stream,
            ):
                yield stream
        else:
            with decompressing_reader(raw, compression) as stream:
                yield stream


def scan_file(
    path: Path,
    identities: Sequence[Any] | None = None,
    limits: Limits = Limits(),  # noqa: B008
) -> ScanResult:
    """Read a whole archive file, hashing every member, without writing anything."""
    with open_tar_stream(path, identities) as stream:
        return scan_archive(stream, limits=limits)
