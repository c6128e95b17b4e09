"""The archives in a backups folder: names, the index beside them, pins and verification records.

Each archive ``backups/NAME`` has an index entry ``backups/.aica-backup/catalog/NAME.json`` with
its size, SHA-256, manifest summary, pin and last verification, so ``list`` never opens an
archive. The index is a cache: the archive (with its manifest) is the truth, and an archive
without an entry (copied in by hand, pulled from offsite) is indexed by reading it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .codec import format_of
from .errors import AicaBackupError, UsageError
from .fsutil import (
    TMP_PREFIX,
    atomic_write_bytes,
    ensure_private_dir,
    fsync_dir,
    storage_error,
    temp_owner_alive,
)
from .retention import Candidate, Decision, Policy, apply_policy

NAME_RE = re.compile(
    r"^(?P<kind>backup|pre-restore)_(?P<stamp>\d{8}_\d{6})(?:_(?P<seq>\d+))?"
    r"(?P<suffix>\.tar\.(?:gz|zst)(?:\.age)?)$"
)
KINDS = ("backup", "pre-restore")
STAMP_FORMAT = "%Y%m%d_%H%M%S"


@dataclass(frozen=True)
class ArchiveName:
    kind: str
    local_time: datetime  # aware, in the local zone
    seq: int
    suffix: str

    @property
    def sort_key(self) -> tuple[datetime, int]:
        return (self.local_time, self.seq)


def parse_name(name: str) -> ArchiveName | None:
    """The parts of an archive file name, or None if it is not one of ours."""
    m = NAME_RE.match(name)
    if m is None:
        return None
    try:
        naive = datetime.strptime(m["stamp"], STAMP_FORMAT)  # noqa: DTZ007 - local by design
    except ValueError:
        return None
    return ArchiveName(m["kind"], naive.astimezone(), int(m["seq"] or 0), m["suffix"])


def new_name(backups_dir: Path, kind: str, when: datetime, suffix: str) -> str:
    """A name that no archive in ``backups_dir`` has (call under the lock): the guide's
    ``backup_YYYYMMDD_HHMMSS.tar.gz``, then ``…_1``, ``…_2`` within the same second."""
    stamp = when.astimezone().strftime(STAMP_FORMAT)
    taken = {p.name for p in backups_dir.glob(f"{kind}_{stamp}*")}
    seq = 0
    while True:
        name = f"{kind}_{stamp}{f'_{seq}' if seq else ''}{suffix}"
        # Another compression/encryption suffix with the same stem also counts as taken.
        stem = name[: -len(suffix)]
        if not any(t.startswith(stem) and parse_name(t) and t[len(stem)] == "." for t in taken):
            return name
        seq += 1


@dataclass
class ArchiveEntry:
    """One archive as ``list`` shows it."""

    name: str
    path: Path
    kind: str
    local_time: datetime
    seq: int
    size: int
    compression: str
    encrypted: bool
    sha256: str = ""
    summary: dict[str, Any] | None = None
    pinned: bool = False
    verification: dict[str, Any] | None = None
    index_error: str | None = None
    unreadable: str | None = None  # a fault of this machine reading it (permissions, I/O)

    @property
    def failed(self) -> bool:
        """True when the last verification of this archive found it damaged."""
        return bool(self.verification) and not self.verification.get("ok", True)  # type: ignore[union-attr]

    @property
    def unsure(self) -> bool:
        """True when the last verification's failure may have been the machine's: records
        of releases before "finished" was written (they took a full disk for a damaged
        archive). verify records only verifications that finished, with ``finished``."""
        return self.failed and not (self.verification or {}).get("finished", False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "time": self.local_time.isoformat(),
            "size": self.size,
            "sha256": self.sha256,
            "compression": self.compression,
            "encrypted": self.encrypted,
            "pinned": self.pinned,
            "summary": self.summary,
            "verification": self.verification,
            "index_error": self.index_error,
            "unreadable": self.unreadable,
        }


@dataclass
class Catalog:
    """The archives of one backups folder and their index."""

    backups_dir: Path
    index_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.index_dir = self.backups_dir / ".aica-backup" / "catalog"

    # -- index entries ---------------------------------------------------------------------
    def _index_path(self, name: str) -> Path:
        return self.index_dir / f"{name}.json"

    def read_index(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._index_path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_index(self, name: str, data: dict[str, Any]) -> None:
        ensure_private_dir(self.index_dir)
        atomic_write_bytes(self._index_path(name), json.dumps(data, indent=1).encode())

    def update_index(self, name: str, **changes: Any) -> None:
        data = self.read_index(name)
        if data is None:
            entry = self.entry(name)  # builds the index from the archive
            data = self.read_index(name) or {"name": entry.name}
        data.update(changes)
        self.write_index(name, data)

    def record_new(
        self, name: str, size: int, sha256: str, summary: dict[str, Any], origin: str = "backup"
    ) -> None:
        """Index a freshly written archive."""
        self.write_index(
            name,
            {
                "name": name,
                "size": size,
                "sha256": sha256,
                "summary": summary,
                "origin": origin,
                "indexed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def set_pinned(self, name: str, pinned: bool) -> None:
        self.path_of(name)  # raises if there is no such archive
        self.update_index(name, pinned=pinned)

    def record_verification(self, name: str, result: dict[str, Any]) -> None:
        self.update_index(name, verification=result)

    # -- archives --------------------------------------------------------------------------
    def path_of(self, name: str) -> Path:
        path = self.backups_dir / name
        if parse_name(name) is None or not path.is_file():
            raise UsageError(f"no archive named {name!r} in {self.backups_dir}")
        return path

    def names(self, kinds: tuple[str, ...] = KINDS) -> list[str]:
        """Archive names, newest first."""
        try:
            found = [(parse_name(n), n) for n in os.listdir(self.backups_dir)]
        except FileNotFoundError:
            return []
        ours = [(p, n) for p, n in found if p is not None and p.kind in kinds]
        ours.sort(key=lambda pn: pn[0].sort_key, reverse=True)
        return [n for _, n in ours]

    def entry(self, name: str, *, read_missing: bool = True) -> ArchiveEntry:
        """The entry for ``name``; reads the archive once if its index is missing or stale."""
        path = self.backups_dir / name
        parsed = parse_name(name)
        if parsed is None:
            raise UsageError(f"not an archive name: {name}")
        size = path.stat().st_size
        compression, encrypted = format_of(name)
        entry = ArchiveEntry(
            name, path, parsed.kind, parsed.local_time, parsed.seq, size, compression, encrypted
        )
        data = self.read_index(name)
        if (data is None or data.get("size") != size) and read_missing:
            try:
                data = self._reindex(entry, data)
            except OSError as exc:  # never recorded: the archive is not at fault
                entry.unreadable = storage_error(f"cannot read {name}", exc).message
                data = None
        if data is not None:
            entry.sha256 = str(data.get("sha256", ""))
            entry.summary = data.get("summary")
            entry.pinned = bool(data.get("pinned", False))
            entry.verification = data.get("verification")
            entry.index_error = data.get("index_error")
        return entry

    def _reindex(self, entry: ArchiveEntry, old: dict[str, Any] | None) -> dict[str, Any]:
        from .archive import scan_file

        keep = {k: old[k] for k in ("pinned",) if old and k in old}
        data: dict[str, Any] = {"name": entry.name, "size": entry.size, **keep}
        if entry.encrypted:
            data["index_error"] = "encrypted: run verify with the identity to index it"
        else:
            try:
                result = scan_file(entry.path)
                data["summary"] = result.manifest.summary()
            except AicaBackupError as exc:
                data["index_error"] = str(exc)
            except OSError as exc:
                if exc.errno is not None:  # permissions, I/O: the caller's, not the archive's
                    raise
                data["index_error"] = str(exc)  # gzip's own complaints about the data
        data["sha256"] = sha256_file(entry.path)
        data["origin"] = "indexed"
        with contextlib.suppress(OSError, AicaBackupError):  # a cache: next time, then
            self.write_index(entry.name, data)
        return data

    def entries(self, kinds: tuple[str, ...] = KINDS) -> list[ArchiveEntry]:
        """Every archive, newest first."""
        out: list[ArchiveEntry] = []
        for name in self.names(kinds):
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                out.append(self.entry(name))
        return out

    def remove(self, name: str) -> None:
        """Delete an archive and its index entry (durably)."""
        self.path_of(name).unlink()
        # the archive is gone: an entry left behind is removed by clean_leftovers
        with contextlib.suppress(OSError):
            self._index_path(name).unlink(missing_ok=True)
        fsync_dir(self.backups_dir)

    def clean_leftovers(self) -> list[str]:
        """Remove temp files of crashed runs and index entries without an archive (under lock).

        A temp file named with a live pid is left alone: commands that do not take the lock
        (verify recording its result) write their index entries through such files."""
        removed: list[str] = []
        # OSError: a folder or file this user may not touch (doctor names it) must not stop
        # the backup that runs after this clean-up
        for folder in (self.backups_dir, self.backups_dir / ".aica-backup", self.index_dir):
            with contextlib.suppress(OSError):
                for p in folder.iterdir():
                    if (
                        p.name.startswith(TMP_PREFIX)
                        and p.is_file()
                        and not temp_owner_alive(p.name)
                    ):
                        p.unlink()
                        removed.append(p.name)
        with contextlib.suppress(OSError):
            for p in self.index_dir.iterdir():
                if p.suffix == ".json" and not (self.backups_dir / p.stem).exists():
                    p.unlink()
        return removed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def prune(
    catalog: Catalog,
    policy: Policy,
    now: datetime,
    *,
    kind: str = "backup",
    dry_run: bool = False,
) -> Decision:
    """Apply ``policy`` to the archives of ``kind`` and delete what it removes (unless dry run).

    Call under the lock. Only archives of one kind compete: safety backups made before a
    restore have their own policy and never push regular backups out, nor the reverse.
    """
    candidates = [
        Candidate(
            e.name, e.local_time, pinned=e.pinned, failed=e.failed and not e.unsure, unsure=e.unsure
        )
        for e in catalog.entries((kind,))
    ]
    decision = apply_policy(candidates, policy, now)
    if not dry_run:
        for c in decision.remove:
            catalog.remove(c.name)
    return decision
