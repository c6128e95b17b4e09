"""Replacing the plaintext copies on a target with encrypted ones (``offsite push
--replace-plaintext``), for copies made before encryption recipients were set.

Per copy, in this order, so that a crash or a dead server at any point leaves at least one
complete copy of the backup on the target:

1. the encrypted copy ``NAME.age`` is uploaded and verified (:func:`~.copies.push`), unless a
   complete one is already there. Its source is the local archive when it still has the same
   SHA-256, else the plaintext copy itself, downloaded into a temp file and checked against its
   marker (the archive may be long gone from the server);
2. only then the plaintext's marker, and then its object, are deleted.

An incomplete plaintext copy (no marker: an upload that never finished) is not a backup; it is
deleted once the local archive, if any, has an encrypted copy there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

from ..errors import ArchiveError, StorageError, UsageError
from ..fsutil import free_bytes, owned_temp_file, storage_error
from ..storage import Storage
from .copies import RemoteCopy, _Digest, list_copies, marker_name, push
from .form import LocalArchive, plaintext, target_name


def replace_plaintext(
    storage: Storage,
    local: Mapping[str, LocalArchive],
    recipients: Sequence[Any],
    *,
    work_dir: Path,
    log: Callable[[str], None] | None = None,
    into: list[str] | None = None,
) -> list[str]:
    """Replace every plaintext copy on ``storage``; return the names replaced (also appended
    to ``into`` as they go, so a failure part-way still reports what was done). ``local``: the
    local archives by name, preferred as the source of the encrypted copy.

    A corrupt plaintext copy is left in place and the others are still replaced; then its
    ArchiveError is raised. A storage failure stops at once.
    """
    if not recipients:
        raise UsageError(
            "no encryption recipients are set: nothing to encrypt the copies to",
            hint="set [encryption] recipients first (aica-backup keygen makes a key)",
        )
    say = log or (lambda _msg: None)
    replaced = into if into is not None else []
    copies = list_copies(storage)
    complete = {c.name for c in copies if c.complete}
    corrupt: list[ArchiveError] = []
    for copy in plaintext(copies):
        sealed_name = target_name(copy.name, sealed=True)
        if sealed_name not in complete:
            source = local.get(copy.name)
            try:
                if copy.complete and (source is None or source.sha256 != copy.sha256):
                    with _downloaded(storage, copy, work_dir) as fetched:
                        push(storage, fetched, work_dir=work_dir, recipients=recipients)
                elif source is not None:
                    push(storage, source, work_dir=work_dir, recipients=recipients)
            except ArchiveError as exc:  # this copy (or its local archive) is damaged
                corrupt.append(exc)
                continue
            if copy.complete or source is not None:
                say(f"{storage.location}: {sealed_name} copied and verified")
        storage.delete(marker_name(copy.name))
        storage.delete(copy.name)
        say(f"{storage.location}: plaintext {copy.name} deleted")
        replaced.append(copy.name)
    if corrupt:
        raise corrupt[0]
    return replaced


@contextlib.contextmanager
def _downloaded(storage: Storage, copy: RemoteCopy, work_dir: Path) -> Iterator[LocalArchive]:
    """The plaintext copy, downloaded into a temp file and checked against its marker."""
    try:
        if free_bytes(work_dir) < 2 * copy.size:  # the plaintext, then its encrypted copy
            raise StorageError(
                f"not enough free space in {work_dir} to re-encrypt {copy.name} "
                f"({2 * copy.size} bytes needed)"
            )
        with owned_temp_file(work_dir, copy.name) as path:
            with open(path, "wb") as fh:
                digest = _Digest(fh)
                storage.get(copy.name, cast(IO[bytes], digest))
            if digest.sha.hexdigest() != copy.sha256 or digest.size != copy.size:
                raise ArchiveError(
                    f"the copy of {copy.name} on {storage.location} is corrupt: its SHA-256 "
                    "differs from the one verified at upload",
                    hint="it was left in place; delete it by hand once another copy exists",
                )
            yield LocalArchive(copy.name, path, copy.sha256, copy.size)
    except OSError as exc:
        raise storage_error(f"cannot download {copy.name} into {work_dir}", exc) from exc
