"""The one small interface every offsite storage backend implements.

A storage holds flat objects named like our archives (``backup_20241010_030000.tar.gz``,
``….sha256``) in one folder, bucket prefix or rclone path. Backends differ only in transport;
everything else — retries, verification, retention — is built on top of this interface, so
every backend passes the same conformance tests (``tests/storage/test_conformance.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

from ..errors import StorageError, UsageError

# Our archive names and their markers: no folders, no hidden or temp files, no spaces.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class NotFoundError(StorageError):
    """The object does not exist. Never retried: asking again cannot make it appear."""


class AccessError(StorageError):
    """Credentials, permissions, bucket or remote configuration are wrong: never retried."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    mtime: datetime  # timezone-aware

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "mtime": self.mtime.isoformat()}


class Storage(Protocol):
    """A place that holds archive copies: a folder, an S3 prefix, an rclone path.

    ``location`` names it in messages and never contains credentials. Every method raises
    :class:`~aica_backup.errors.StorageError` (or a subclass above) on failure.
    """

    location: str

    def put(self, name: str, src: Path) -> None:
        """Store the file ``src`` as ``name``, replacing any object of that name."""

    def get(self, name: str, dest: IO[bytes]) -> None:
        """Stream the object's bytes into ``dest``; NotFoundError if there is none.

        Errors raised by ``dest`` itself (a full local disk) propagate unchanged.
        """

    def list(self) -> list[ObjectInfo]:
        """Every object with a valid name, in no particular order (empty if none)."""

    def delete(self, name: str) -> None:
        """Remove the object; an object that is already gone is not an error."""

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's size and time, or None if there is none."""


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and ".." not in name


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise UsageError."""
    if not is_valid_name(name):
        raise UsageError(f"invalid object name {name!r} (expected an archive file name)")
    return name
