"""Copies for several targets at once: encryption for the trip, retention, the sync run.

Each archive is given its upload form once (:mod:`.form`: encrypted into a ``.tmp-`` file of
the work folder whenever recipients are given) and pushed to every target lacking it
concurrently; a failing target never stops the others. Plaintext copies are replaced on request
(:mod:`.replace`), then retention runs on each target that is up to date.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import interrupt
from ..errors import AicaBackupError, StorageError
from ..retention import Candidate, Policy, apply_policy
from ..storage import Storage
from .copies import (
    RemoteCopy,
    archive_kind,
    list_copies,
    marker_name,
    missing,
    name_sort_key,
    push,
)
from .form import LocalArchive, backup_of, is_encrypted, plaintext, target_name, upload_form
from .replace import replace_plaintext

Log = Callable[[str], None]


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
    """Apply ``policy`` to the complete backups on ``storage``; return the objects removed.

    A backup is counted once whatever its forms (``NAME``, ``NAME.age``: see
    :func:`~.form.backup_of`); its forms are kept or removed together, plaintext first. Also
    removes incomplete uploads older than the oldest copy kept (they can never become useful).
    ``pinned`` holds local archive names; a pinned archive's copy is kept. Each marker is
    deleted before its object, so a crash leaves an incomplete copy, never a marker vouching
    for nothing. The newest complete copy is never removed.
    """
    backups = [c for c in copies if archive_kind(c.name) == "backup"]
    # One backup is one backup in whatever form: NAME and NAME.age compete as one candidate,
    # kept or removed together, so an encrypted copy never goes in favour of a plaintext one.
    forms: dict[str, list[RemoteCopy]] = {}
    for c in backups:
        forms.setdefault(backup_of(c.name), []).append(c)
    complete = {b: cs for b, cs in forms.items() if any(c.complete for c in cs)}
    if not complete:
        return []
    newest = max(complete, key=name_sort_key)
    candidates = [
        Candidate(b, _parsed_time(b), pinned=b in pinned or target_name(b, sealed=True) in pinned)
        for b in complete
    ]
    decision = apply_policy(candidates, policy, now)
    doomed = [c.name for d in decision.remove if d.name != newest for c in forms[d.name]]
    oldest_kept = min((c.time for c in decision.keep), default=None)
    if oldest_kept is not None:
        doomed += [
            c.name
            for b, cs in forms.items()
            if b not in complete
            for c in cs
            if c.local_time < oldest_kept
        ]
    doomed.sort(key=is_encrypted)  # plaintext forms first: a crash keeps the encrypted one
    if not dry_run:
        for name in doomed:
            storage.delete(marker_name(name))
            storage.delete(name)
    return doomed


def _parsed_time(name: str) -> datetime:
    return name_sort_key(name)[0]


# -- several targets at once ---------------------------------------------------------------------


@dataclass
class Target:
    """A configured target: its label (the location as configured) and its storage."""

    label: str
    storage: Storage


@dataclass
class TargetReport:
    label: str
    location: str = ""  # the storage's own name for itself, as its messages start
    ok: bool = True
    errors: list[AicaBackupError] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # plaintext copies replaced by .age
    plaintext: list[str] = field(default_factory=list)  # left unencrypted though sealed
    seconds: float = 0.0
    reachable: bool = True  # False after a storage failure: later archives are skipped

    def fail(self, exc: AicaBackupError) -> None:
        self.ok = False
        self.errors.append(exc)
        if isinstance(exc, StorageError):
            self.reachable = False

    @property
    def error(self) -> str | None:
        """The errors, each naming the target once (storage messages already start with it)."""
        return "; ".join(located(e.message, self.location, self.label) for e in self.errors) or None


def located(message: str, location: str, label: str) -> str:
    """``message`` naming its target once: as it is if it starts with the storage's location or
    the target's label (every storage message does), else ``label: message``."""
    if any(name and message.startswith(name) for name in (location, label)):
        return message
    return f"{label}: {message}"


def _guarded(report: TargetReport, op: Callable[[], Any]) -> Any:
    """Run one operation for a target: time it, and turn a failure into the report's error."""
    started = time.monotonic()
    try:
        interrupt.check()  # nothing new starts once the command is stopping
        return op()
    except AicaBackupError as exc:
        report.fail(exc)
    except Exception as exc:  # a failing target must not take the others down
        report.fail(StorageError(f"unexpected {type(exc).__name__}: {exc}"))
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
    replace: bool = False,
    log: Log | None = None,
) -> list[TargetReport]:
    """Give every target a verified copy of every archive it lacks, then apply ``policy``.

    ``archives`` newest first. With ``recipients``, a target lacks an archive until it holds
    an encrypted copy, and each archive is encrypted once (:func:`~.form.upload_form`) and
    pushed to the targets lacking it concurrently. With ``replace`` (and recipients), the
    plaintext copies already on a target are then replaced by verified encrypted ones
    (:func:`~.replace.replace_plaintext`). A failing target never stops the others; its error
    is in its report. Returns one report per target, in order.
    """
    say = log or (lambda _msg: None)
    reports = [TargetReport(t.label, t.storage.location) for t in targets]
    sealed = bool(recipients)
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
            {a.name for a in missing(copies, archives, sealed=sealed)}
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
                    if sealed and not is_encrypted(archive.name):
                        say(f"encrypting {archive.name}")
                    upload = stack.enter_context(upload_form(archive, recipients, work_dir))

                    def one(i: int, upload: LocalArchive = upload) -> None:
                        started = time.monotonic()
                        copy = _guarded(
                            reports[i],
                            lambda: push(
                                targets[i].storage,
                                upload,
                                work_dir=work_dir,
                                recipients=recipients,
                            ),
                        )
                        if copy is not None:
                            reports[i].pushed.append(copy.name)
                            # A stopped push says what it made ("nothing changed" was untrue).
                            interrupt.keep(f"{copy.name} was copied to {targets[i].label}")
                            say(
                                f"{targets[i].label}: {copy.name} copied and verified "
                                f"({time.monotonic() - started:.1f} s)"
                            )

                    list(pool.map(one, wanting))
            except AicaBackupError as exc:  # the archive could not be prepared
                for i in wanting:
                    reports[i].fail(exc)

        def finish(i: int) -> None:
            storage = targets[i].storage
            if replace and sealed and reports[i].ok:
                local = {a.name: a for a in archives}
                _guarded(
                    reports[i],
                    lambda: replace_plaintext(
                        storage,
                        local,
                        recipients,
                        work_dir=work_dir,
                        log=say,
                        into=reports[i].replaced,
                    ),
                )
            if policy is not None and reports[i].ok:  # else keep all: the target is behind
                removed = _guarded(
                    reports[i],
                    lambda: prune_copies(
                        storage,
                        list_copies(storage),
                        policy,
                        now or datetime.now(UTC),
                        pinned=pinned,
                    ),
                )
                reports[i].pruned = removed or []
                for name in reports[i].pruned:
                    say(f"{targets[i].label}: removed by retention: {name}")
            if sealed and listings[i] is not None:
                gone = set(reports[i].replaced) | set(reports[i].pruned)
                reports[i].plaintext = [
                    c.name for c in plaintext(listings[i]) if c.name not in gone
                ]

        list(pool.map(finish, range(len(targets))))
    return reports
