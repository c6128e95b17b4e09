"""Offsite copies of archives: pushed, verified, listed, pruned and fetched back safely.

:mod:`.copies` handles one copy on one target; :mod:`.sync` several archives and targets.

One copy is made in this order, so that no crash or dead server can leave a copy that *looks*
complete but is not:

1. the copy's marker ``NAME.sha256`` is deleted if present (it must never vouch for new bytes);
2. the archive is uploaded as ``NAME``;
3. it is read back through the same storage and its SHA-256 compared with the archive's;
4. only then is the marker written, in ``sha256sum`` format (``sha256sum -c`` checks a copy on
   a mounted folder by hand) plus a ``# size:`` comment line.

A copy is *complete* when its marker exists and names the object's size; anything else is
*incomplete* (an interrupted upload), never counted as a backup, and uploaded again next time.
``fetch`` checks the SHA-256 against the marker before the file appears under its name.

With recipients, archives are encrypted for the trip (``X.tar.gz`` → ``X.tar.gz.age``) into a
``.tmp-`` file in the work folder, streamed through age, so memory stays flat.
"""

from .copies import (
    MARKER_SUFFIX,
    LocalArchive,
    RemoteCopy,
    fetch,
    find_copy,
    format_marker,
    list_copies,
    marker_name,
    missing,
    parse_marker,
    push,
    read_marker,
    remote_name,
    verify_copy,
)
from .sync import Target, TargetReport, encrypted, prune_copies, sync

__all__ = [
    "MARKER_SUFFIX",
    "LocalArchive",
    "RemoteCopy",
    "Target",
    "TargetReport",
    "encrypted",
    "fetch",
    "find_copy",
    "format_marker",
    "list_copies",
    "marker_name",
    "missing",
    "parse_marker",
    "prune_copies",
    "push",
    "read_marker",
    "remote_name",
    "sync",
    "verify_copy",
]
