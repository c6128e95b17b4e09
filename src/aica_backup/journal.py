"""The restore journal: swapping live data for staged data as one recoverable transaction.

Every live path that a restore replaces is an *item* with three places on the same file
system: ``live`` (where the app reads it), ``new`` (the staged replacement, or None when the
restored state has no such file) and ``old`` (where the current version is parked). The
journal is written (atomically, durably) before the first rename, and each item moves with at
most two renames: ``live → old``, then ``new → live``.

Both directions are idempotent and decided from the file system alone, so a ``kill -9`` at any
instant is recoverable: before the journal says ``committed`` the next run rolls back (every
``old`` goes home), after it the next run only cleans up. Never a mix of old and new.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import atomic_file, discard_tree, fsync_dir

JOURNAL_NAME = "journal.json"
# Fault injection for the crash tests: the process SIGKILLs itself at the named point.
CRASH_ENV = "AICA_BACKUP_TEST_CRASH_AT"


def crashpoint(name: str) -> None:
    """Die here, as ``kill -9`` would, if the crash tests asked for it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Item:
    live: str
    old: str
    new: str | None
    component: str


@dataclass
class Journal:
    path: Path  # the journal file itself
    archive: str
    items: list[Item]
    cleanup: list[str]  # work folders removed once the transaction is over
    state: str = "prepared"  # prepared → swapping → committed | rolled-back
    safety_backup: str | None = None
    start_command: str = ""  # to bring the app back if it was stopped for the restore
    app_stopped: bool = False
    notes: list[str] = field(default_factory=list)

    # -- persistence -----------------------------------------------------------------------
    def save(self) -> None:
        doc = {k: v for k, v in asdict(self).items() if k != "path"}
        with atomic_file(self.path) as fh:
            fh.write(json.dumps(doc, indent=1).encode())
            crashpoint(f"journal-{self.state}-writing")

    @classmethod
    def load(cls, path: Path) -> Journal:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        doc["items"] = [Item(**i) for i in doc["items"]]
        return cls(path=path, **doc)

    def set_state(self, state: str) -> None:
        self.state = state
        self.save()

    # -- the two directions ----------------------------------------------------------------
    def swap(self) -> None:
        """Move every item: live → old, then new → live. Call after ``save()``."""
        self.set_state("swapping")
        for i, item in enumerate(self.items):
            live, old = Path(item.live), Path(item.old)
            if os.path.lexists(live):
                old.parent.mkdir(parents=True, exist_ok=True)
                os.rename(live, old)
            crashpoint(f"swap-{i}-parked")
            if item.new is not None:
                live.parent.mkdir(parents=True, exist_ok=True)
                os.rename(item.new, live)
            crashpoint(f"swap-{i}-placed")
        self._fsync_folders()

    def rollback(self) -> list[str]:
        """Put every old item back (newest move undone first); return notes on oddities.

        Marks the journal ``rolled-back`` when done: cleanup may then delete staging, after
        which the "new is gone, so live must be new" rule would no longer hold.
        """
        notes: list[str] = []
        for item in reversed(self.items):
            live, old = Path(item.live), Path(item.old)
            new = Path(item.new) if item.new is not None else None
            if new is not None and not os.path.lexists(new) and os.path.lexists(live):
                os.rename(live, new)  # the restored version goes back to staging
            if os.path.lexists(old):
                if os.path.lexists(live):
                    # Something appeared at the live path meanwhile: keep it, never overwrite.
                    displaced = old.with_name(old.name + ".displaced")
                    os.rename(live, displaced)
                    notes.append(f"{live} appeared during the restore; kept as {displaced}")
                os.rename(old, live)
        self._fsync_folders()
        self.notes += notes
        self.set_state("rolled-back")
        return notes

    def _fsync_folders(self) -> None:
        folders = {Path(p).parent for i in self.items for p in (i.live, i.old, i.new) if p}
        for folder in folders:
            if folder.is_dir():
                fsync_dir(folder)

    def finish(self) -> None:
        """Remove the parked old versions, staging and the journal (after commit or rollback)."""
        for folder in self.cleanup:
            discard_tree(Path(folder))
            if os.path.lexists(folder):  # say so rather than leave hundreds of MB unseen
                self.notes.append(f"{folder} could not be removed; nothing uses it: delete it")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fsync_dir(self.path.parent)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only if empty


def find_journal(restore_dir: Path) -> Path | None:
    path = restore_dir / JOURNAL_NAME
    return path if path.exists() else None


def recover(restore_dir: Path) -> tuple[str, Journal] | None:
    """Finish an interrupted restore: roll back unless it had committed. Call under the lock.

    Returns ("rolled back" | "completed", journal), or None when nothing was interrupted.
    """
    path = find_journal(restore_dir)
    if path is None:
        return None
    journal = Journal.load(path)
    if journal.state == "committed":
        outcome = "completed"
    elif journal.state == "rolled-back":
        outcome = "rolled back"
    else:
        journal.rollback()
        outcome = "rolled back"
    journal.finish()
    return outcome, journal
