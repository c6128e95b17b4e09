"""Finding an archive and its keys, for the commands that read archives (restore, verify)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..catalog import Catalog, parse_name
from ..codec import format_of
from ..config import Settings
from ..errors import UsageError


def identities_for(s: Settings, archive: Path, identity: Path | None) -> list[Any] | None:
    """Private keys for an encrypted archive (flag, then config / AICA_BACKUP_IDENTITY)."""
    if not format_of(archive.name)[1]:
        return None
    from ..crypto import load_identities

    return load_identities(identity or s.identity_path)


def identity_option(s: Settings, archive_name: str, identity: Path | None) -> str:
    """`` --identity FILE`` for a printed command that reads ``archive_name`` when it is
    encrypted (the file given, else the configured one, else a placeholder); else ``""``."""
    if not format_of(archive_name)[1]:
        return ""
    path = identity or s.identity_path
    if path is None:
        return " --identity IDENTITY_FILE"
    return f" --identity {shlex.quote(str(path.expanduser().absolute()))}"


def resolve_archive(catalog: Catalog, given: str) -> Path:
    """An archive given as a path (as in the guide: backups/backup_….tar.gz) or a bare name."""
    path = Path(given).expanduser()
    if path.is_file():
        return path.absolute()
    candidate = catalog.backups_dir / path.name
    if parse_name(path.name) and candidate.is_file():
        return candidate
    raise UsageError(f"archive not found: {given}", hint="list them with: aica-backup list --all")
