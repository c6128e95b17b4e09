"""``aica-backup recover``: finish a restore that was interrupted (power loss, kill -9).

Every command runs this first, so an interrupted restore is never left half done: before the
journal committed, the previous state is put back; after, the leftovers are cleaned up.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import AicaBackupError
from ..journal import find_journal, recover
from ..layout import RESTORE_DIRNAME
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


def finish_interrupted_restore(ctx: typer.Context) -> None:
    """Called before every command: recover first if a restore journal is lying around,
    then remove what killed restores left (staging, temp files, an empty -wal/-shm)."""
    restore_dir = globals_of(ctx).root / RESTORE_DIRNAME
    if not restore_dir.exists():  # the one cost for every command while nothing was left
        return
    if find_journal(restore_dir) is not None:
        report = _recover(ctx)
        if report is not None:
            warn(
                f"an interrupted restore of {report['archive']} was found and {report['outcome']}"
            )
    _clean_leftovers(ctx)


def _clean_leftovers(ctx: typer.Context) -> None:
    from ..leftovers import clean  # here: every command passes through this module

    try:
        cleaned = clean(settings(ctx).layout())
    except AicaBackupError:
        return  # a bad configuration: the command itself says so
    if cleaned.removed:
        names = ", ".join(Path(p).name for p in cleaned.removed)
        warn(f"removed what an interrupted restore left: {names}")


def command(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Finish or roll back an interrupted restore (every command also does this first)."""
    report = _recover(ctx)
    _clean_leftovers(ctx)
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
