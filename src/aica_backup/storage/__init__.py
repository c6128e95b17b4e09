"""Offsite storage targets behind one small interface, each parsing its own location.

==========================  ===============================================================
location                    backend
==========================  ===============================================================
``/mnt/nas/aica-backups``   :class:`~.local.LocalStorage` (also ``file:///…``; relative
                            paths are taken from ``base``)
``s3://bucket/prefix``      :class:`~.s3.S3Storage` (boto3; endpoint and keys from AWS_*)
``rclone:REMOTE:path``      :class:`~.rclone.RcloneStorage` (the rclone binary)
==========================  ===============================================================

Backends import their client libraries lazily, so the core works without the extras.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .base import AccessError, NotFoundError, ObjectInfo, Storage, check_name, is_valid_name
from .retry import RetryingStorage

__all__ = [
    "AccessError",
    "NotFoundError",
    "ObjectInfo",
    "RetryingStorage",
    "Storage",
    "check_name",
    "is_valid_name",
    "open_storage",
]

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def open_storage(location: str, *, base: Path | None = None, **opts: Any) -> Storage:
    """The storage a location string names. ``opts`` go to the backend (e.g. ``chunk_size``
    for S3); ``base`` resolves relative folder paths."""
    location = location.strip()
    if not location:
        raise UsageError("empty storage location")
    if location.startswith("s3://"):
        from .s3 import S3Storage

        return S3Storage.from_location(location, **opts)
    if location.startswith("rclone:"):
        from .rclone import RcloneStorage

        return RcloneStorage.from_location(location, **opts)
    if location.startswith("file://") or not _SCHEME.match(location):
        from .local import LocalStorage

        return LocalStorage.from_location(location, base=base)
    raise UsageError(
        f"unknown storage location {location!r}",
        hint="use a folder path, file:///path, s3://bucket/prefix or rclone:REMOTE:path",
    )
