"""``aica-backup recover``: finish a restore that was interrupted (power loss, kill -9).

Every command runs this first, so an interrupted restore is never left half done: before the
journal committed, the previous state is put back; after, the leftovers are cleaned up.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import AicaBackupError, LockedError
from ..journal import find_journal, recover
from ..layout import RESTORE_DIRNAME, Layout
from ..lock import exclusive_lock
from .common import JSON_OPTION, emit_json, globals_of, out, settings, warn


def _recover(ctx: typer.Context) -> dict[str, object] | None:
    s = settings(ctx)
    layout = s.layout()
    with exclusive_lock(layout.meta_dir, "recover", s.backup.lock_wait):
        done = recover(layout.restore_dir)
    if done is None:
        return None
    outcome, journal = done
    report: dict[str, object] = {
        "outcome": outcome,
        "archive": journal.archive,
        "safety_backup": journal.safety_backup,
        "notes": journal.notes,
    }
    if journal.app_stopped and journal.start_command:
        from ..appctl import run_command  # here: every command passes through this module

        try:
            run_command(journal.start_command, "start")
            report["app_started"] = True
        except AicaBackupError as exc:
            report["notes"] = [*journal.notes, f"could not start the app again: {exc}"]
    return report


def finish_interrupted_runs(ctx: typer.Context, *, recover_journal: bool = True) -> None:
    """Called before every command: recover first if a restore journal is lying around,
    then remove what killed runs left (restore staging, temp files of dead processes — an
    encrypted copy of an interrupted push among them —, an empty -wal/-shm)."""
    from ..leftovers import clean  # here: every command passes through this module

    restore_dir = globals_of(ctx).root / RESTORE_DIRNAME
    if recover_journal and restore_dir.exists() and find_journal(restore_dir) is not None:
        report = _recover(ctx)
        if report is not None:
            warn(f"an interrupted restore of {report['archive']} was found and {report['outcome']}")
    try:
        layout = settings(ctx).layout()
        cleaned = clean(layout)
    except AicaBackupError:
        return  # a bad configuration or app root: the command itself says so
    _finish_target_restores(layout.meta_dir, layout)
    if cleaned.removed:
        names = ", ".join(Path(p).name for p in cleaned.removed)
        warn(f"removed what an interrupted restore or offsite copy left: {names}")


def _finish_target_restores(meta_dir: Path, layout: Layout) -> None:
    """Finish or roll back each ``restore --target`` that was killed, and remove what it left
    in its target (staging: a copy of the app, secrets included); skipped while a restore
    runs (it holds the lock)."""
    from ..leftovers import interrupted_targets

    for record, target in interrupted_targets(meta_dir):
        # Only now: the restore command's imports (psutil reads /proc/stat, which a hardened
        # unit does not offer) are for when a target restore was interrupted.
        from .restore import finish_interrupted

        try:
            with exclusive_lock(meta_dir, "cleanup"):
                finish_interrupted(layout.with_root(target))
        except LockedError:
            return
        except (AicaBackupError, OSError) as exc:  # that folder's problem, not this command's
            warn(f"could not finish an interrupted restore into {target}: {exc}")
            continue
        if not (target / RESTORE_DIRNAME).exists():
            record.unlink(missing_ok=True)


def command(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Finish or roll back an interrupted restore (every command also does this first)."""
    report = _recover(ctx)  # the leftovers of dead runs are gone already (the start-up)
    if json_out:
        emit_json(report or {"outcome": "nothing to recover"})
        return
    if report is None:
        out.print("Nothing to recover: no interrupted restore.")
        return
    out.print(f"Interrupted restore of {report['archive']}: {report['outcome']}.", markup=False)
    for n in report["notes"]:  # type: ignore[attr-defined]
        out.print(f"note: {n}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("recover")(command)
