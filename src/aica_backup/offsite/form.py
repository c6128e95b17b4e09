"""Which form of an archive goes to a target — the one place that decides it.

The rule, for every path that uploads (``backup``, ``offsite push``, replacing old copies):
whenever recipients are given, no byte of an archive reaches a target unencrypted, whatever
``encryption.encrypt`` says and whenever the archive was made. An archive already encrypted
(``.age``) travels as it is; a plaintext one is encrypted for the trip into a temp file.

On a target, ``NAME`` and ``NAME.age`` are two forms of *one* backup (:func:`backup_of`):
retention counts them once, and a target holding only the plaintext form still lacks the
encrypted one when recipients are given.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ..codec import ENCRYPTED_SUFFIX, HashingWriter
from ..errors import ArchiveError, CryptoError
from ..fsutil import owned_temp_file, storage_error

if TYPE_CHECKING:
    from .copies import RemoteCopy

BLOCK = 1 << 20


@dataclass(frozen=True)
class LocalArchive:
    """An archive to copy: its name, file, SHA-256 of the file's bytes and size."""

    name: str
    path: Path
    sha256: str
    size: int


def is_encrypted(name: str) -> bool:
    return name.endswith(ENCRYPTED_SUFFIX)


def backup_of(name: str) -> str:
    """The backup an object is a form of: its name without ``.age``."""
    return name.removesuffix(ENCRYPTED_SUFFIX)


def target_name(local_name: str, *, sealed: bool) -> str:
    """The object name a local archive gets on a target (``sealed``: recipients are given)."""
    if sealed and not is_encrypted(local_name):
        return local_name + ENCRYPTED_SUFFIX
    return local_name


def satisfies(copy_name: str, local_name: str, *, sealed: bool) -> bool:
    """True if a complete copy named ``copy_name`` stands for the local archive: any form of
    the same backup, but only an encrypted one when recipients are given."""
    if backup_of(copy_name) != backup_of(local_name):
        return False
    return is_encrypted(copy_name) or not sealed


def plaintext(copies: Sequence[RemoteCopy]) -> list[RemoteCopy]:
    """The copies on a target that are not encrypted (complete or not)."""
    return [c for c in copies if not is_encrypted(c.name)]


def check_uploadable(archive: LocalArchive, *, sealed: bool) -> None:
    """The last guard before bytes leave: CryptoError for a plaintext upload when sealed."""
    if sealed and not is_encrypted(archive.name):
        raise CryptoError(
            f"refusing to upload {archive.name} unencrypted: encryption recipients are set"
        )


@contextlib.contextmanager
def upload_form(
    archive: LocalArchive, recipients: Sequence[Any], work_dir: Path
) -> Iterator[LocalArchive]:
    """Yield the form of ``archive`` that may go to a target under ``recipients``.

    Without recipients, or for an archive already encrypted, that is the archive itself;
    otherwise an age-encrypted temp copy in ``work_dir`` (removed afterwards).
    """
    if not recipients or is_encrypted(archive.name):
        yield archive
        return
    with encrypted(archive, recipients, work_dir) as sealed:
        yield sealed


@contextlib.contextmanager
def encrypted(
    archive: LocalArchive, recipients: Sequence[Any], work_dir: Path
) -> Iterator[LocalArchive]:
    """Yield ``archive`` encrypted to ``recipients`` as a temp file in ``work_dir``.

    The plaintext is hashed on the way through and checked against the archive's recorded
    SHA-256, so an archive damaged on the local disk is reported, not shipped. The temp file
    carries this process's id, so the start-up cleanup of a later command removes it if this
    process dies (:func:`aica_backup.fsutil.remove_dead_temp_files`).
    """
    from ..crypto import encrypting_writer

    if not recipients:
        raise CryptoError("no recipients to encrypt to")
    name = target_name(archive.name, sealed=True)
    with owned_temp_file(work_dir, name) as path:
        plain = hashlib.sha256()
        try:
            with open(path, "wb", buffering=BLOCK) as raw:
                hasher = HashingWriter(raw)
                with (
                    open(archive.path, "rb") as src,
                    encrypting_writer(cast(IO[bytes], hasher), recipients) as sink,
                ):
                    while chunk := src.read(BLOCK):
                        plain.update(chunk)
                        sink.write(chunk)
        except OSError as exc:
            raise storage_error(f"cannot encrypt {archive.name} into {work_dir}", exc) from exc
        if archive.sha256 and plain.hexdigest() != archive.sha256:
            raise ArchiveError(
                f"local archive {archive.name} no longer matches its recorded SHA-256",
                hint="it was damaged on disk: run verify, and back up again",
            )
        yield LocalArchive(name, path, hasher.sha.hexdigest(), hasher.size)
