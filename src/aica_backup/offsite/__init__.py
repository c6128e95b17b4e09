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

Which form of an archive goes to a target is decided in one place, :mod:`.form`: whenever
recipients are given, a plaintext archive is encrypted for the trip (``X.tar.gz`` →
``X.tar.gz.age``) into a ``.tmp-`` file in the work folder, streamed through age, so memory
stays flat — whatever the local archives' mode and whenever they were made. ``X.tar.gz`` and
``X.tar.gz.age`` on a target are one backup in two forms. :mod:`.replace` swaps plaintext
copies left from before encryption for encrypted ones.
"""

from .copies import (
    MARKER_SUFFIX,
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
    verify_copy,
)
from .form import (
    LocalArchive,
    backup_of,
    encrypted,
    is_encrypted,
    plaintext,
    target_name,
    upload_form,
)
from .replace import replace_plaintext
from .sync import Target, TargetReport, located, prune_copies, sync

__all__ = [
    "MARKER_SUFFIX",
    "LocalArchive",
    "RemoteCopy",
    "Target",
    "TargetReport",
    "backup_of",
    "encrypted",
    "fetch",
    "find_copy",
    "format_marker",
    "is_encrypted",
    "list_copies",
    "located",
    "marker_name",
    "missing",
    "parse_marker",
    "plaintext",
    "prune_copies",
    "push",
    "read_marker",
    "replace_plaintext",
    "sync",
    "target_name",
    "upload_form",
    "verify_copy",
]
