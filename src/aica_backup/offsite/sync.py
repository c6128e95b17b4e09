"""Copies for several targets at once: encryption for the trip, retention, the sync run.

Each archive is encrypted once (when recipients are given) into a ``.tmp-`` file of the work
folder and pushed to every target lacking it concurrently; a failing target never stops the
others. Retention then runs on each target that is up to date.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from .. import interrupt
from ..codec import ENCRYPTED_SUFFIX, HashingWriter
from ..errors import AicaBackupError, ArchiveError, StorageError
from ..fsutil import TMP_PREFIX, storage_error
from ..retention import Candidate, Policy, apply_policy
from ..storage import Storage
from .copies import (
    BLOCK,
    LocalArchive,
    RemoteCopy,
    archive_kind,
    list_copies,
    marker_name,
    missing,
    name_sort_key,
    push,
    remote_name,
)

Log = Callable[[str], None]


@contextlib.contextmanager
def encrypted(
    archive: LocalArchive, recipients: Sequence[Any], work_dir: Path
) -> Iterator[LocalArchive]:
    """Yield ``archive`` encrypted to ``recipients`` as a temp file in ``work_dir``.

    The plaintext is hashed on the way through and checked against the archive's recorded
    SHA-256, so an archive damaged on the local disk is reported, not shipped.
    """
    from ..crypto import encrypting_writer

    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f"{TMP_PREFIX}{archive.name}.", suffix=ENCRYPTED_SUFFIX, dir=work_dir
        )
    except OSError as exc:
        raise storage_error(f"cannot create a temp file in {work_dir}", exc) from exc
    path = Path(tmp)
    try:
        plain = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb", buffering=BLOCK) as raw:
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
        yield LocalArchive(
            remote_name(archive.name, True), path, hasher.sha.hexdigest(), hasher.size
        )
    finally:
        path.unlink(missing_ok=True)


# -- retention ----------------------------------------------------------------------------------


def prune_copies(
    storage: Storage,
    copies: Sequence[RemoteCopy],
    policy: Policy,
    now: datetime,
    *,
    pinned: frozenset[str] = frozenset(),
    dry_run: bool = False,
) -> list[str]:
    """Apply ``policy`` to the complete backup copies on ``storage``; return what was removed.

    Also removes incomplete uploads older than the oldest copy kept (they can never become
    useful). ``pinned`` holds local archive names; a pinned archive's copy is kept. Each
    marker is deleted before its object, so a crash leaves an incomplete copy, never a
    marker vouching for nothing. The newest complete copy is never removed.
    """
    backups = [c for c in copies if archive_kind(c.name) == "backup"]
    complete = [c for c in backups if c.complete]
    if not complete:
        return []
    newest = max(complete, key=lambda c: name_sort_key(c.name)).name
    candidates = [
        Candidate(
            c.name,
            c.local_time,
            pinned=c.name in pinned or c.name.removesuffix(ENCRYPTED_SUFFIX) in pinned,
        )
        for c in complete
    ]
    decision = apply_policy(candidates, policy, now)
    doomed = [c.name for c in decision.remove if c.name != newest]
    oldest_kept = min((c.time for c in decision.keep), default=None)
    if oldest_kept is not None:
        doomed += [c.name for c in backups if not c.complete and c.local_time < oldest_kept]
    if not dry_run:
        for name in doomed:
            storage.delete(marker_name(name))
            storage.delete(name)
    return doomed


# -- several targets at once ---------------------------------------------------------------------


@dataclass
class Target:
    """A configured target: its label (the location as configured) and its storage."""

    label: str
    storage: Storage


@dataclass
class TargetReport:
    label: str
    ok: bool = True
    errors: list[AicaBackupError] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reachable: bool = True  # False after a storage failure: later archives are skipped

    def fail(self, exc: AicaBackupError) -> None:
        self.ok = False
        self.errors.append(exc)
        if isinstance(exc, StorageError):
            self.reachable = False

    @property
    def error(self) -> str | None:
        return "; ".join(e.message for e in self.errors) or None


def _guarded(report: TargetReport, op: Callable[[], Any]) -> Any:
    """Run one operation for a target: time it, and turn a failure into the report's error."""
    started = time.monotonic()
    try:
        interrupt.check()  # nothing new starts once the command is stopping
        return op()
    except AicaBackupError as exc:
        report.fail(exc)
    except Exception as exc:  # a failing target must not take the others down
        report.fail(StorageError(f"{report.label}: unexpected {type(exc).__name__}: {exc}"))
    finally:
        report.seconds += time.monotonic() - started
    return None


def sync(
    targets: Sequence[Target],
    archives: Sequence[LocalArchive],
    *,
    work_dir: Path,
    recipients: Sequence[Any] = (),
    parallel: int = 2,
    policy: Policy | None = None,
    pinned: frozenset[str] = frozenset(),
    now: datetime | None = None,
    log: Log | None = None,
) -> list[TargetReport]:
    """Give every target a verified copy of every archive it lacks, then apply ``policy``.

    ``archives`` newest first. Each archive is encrypted once (if ``recipients``) and pushed to
    the targets lacking it concurrently. A failing target never stops the others; its error
    is in its report. Returns one report per target, in order.
    """
    say = log or (lambda _msg: None)
    reports = [TargetReport(t.label) for t in targets]
    encrypt = bool(recipients)
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, parallel), thread_name_prefix="offsite"
    ) as pool:
        listings = list(
            pool.map(
                lambda i: _guarded(reports[i], lambda: list_copies(targets[i].storage)),
                range(len(targets)),
            )
        )
        needs: list[set[str]] = [
            {a.name for a in missing(copies, archives, encrypt=encrypt)}
            if copies is not None
            else set()
            for copies in listings
        ]
        for archive in archives:
            wanting = [i for i, r in enumerate(reports) if r.reachable and archive.name in needs[i]]
            if not wanting:
                continue
            try:
                with contextlib.ExitStack() as stack:
                    upload = archive
                    if encrypt and not archive.name.endswith(ENCRYPTED_SUFFIX):
                        say(f"encrypting {archive.name}")
                        upload = stack.enter_context(encrypted(archive, recipients, work_dir))

                    def one(i: int, upload: LocalArchive = upload) -> None:
                        started = time.monotonic()
                        copy = _guarded(
                            reports[i],
                            lambda: push(targets[i].storage, upload, work_dir=work_dir),
                        )
                        if copy is not None:
                            reports[i].pushed.append(upload.name)
                            say(
                                f"{targets[i].label}: {upload.name} copied and verified "
                                f"({time.monotonic() - started:.1f} s)"
                            )

                    list(pool.map(one, wanting))
            except AicaBackupError as exc:  # the archive could not be prepared
                for i in wanting:
                    reports[i].fail(exc)
        if policy is not None:
            when = now or datetime.now(UTC)

            def prune_one(i: int) -> None:
                if not reports[i].ok:
                    return  # keep everything on a target we could not bring up to date
                storage = targets[i].storage
                removed = _guarded(
                    reports[i],
                    lambda: prune_copies(
                        storage, list_copies(storage), policy, when, pinned=pinned
                    ),
                )
                reports[i].pruned = removed or []
                for name in reports[i].pruned:
                    say(f"{targets[i].label}: removed by retention: {name}")

            list(pool.map(prune_one, range(len(targets))))
    return reports
