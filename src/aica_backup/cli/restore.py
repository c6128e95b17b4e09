"""``aica-backup restore [ARCHIVE]``: choose, confirm, then the transactional restore."""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..appctl import refuse_if_held
from ..backup import BackupOptions
from ..catalog import ArchiveEntry, Catalog, parse_name
from ..config import Settings
from ..errors import AbortedError, AicaBackupError, UsageError
from ..journal import recover
from ..layout import COMPONENT_ORDER, Component, Layout
from ..leftovers import release_empty_wal, remove_dead, restoring_into
from ..lock import exclusive_lock
from ..restore import LARGEST, Change, RestoreOptions, RestoreResult, restore
from . import reporting
from .archives import identities_for, identity_option, resolve_archive
from .backup import backup_options
from .common import (
    JSON_OPTION,
    emit_json,
    err,
    human_age,
    human_size,
    is_terminal,
    out,
    progress_bar,
    settings,
    warn,
)
from .listing import contents


def choose(entries: list[ArchiveEntry], interactive: bool) -> ArchiveEntry:
    """Steps 1–2 of the guide: show the backups and let the operator pick (Enter = newest)."""
    if not interactive:
        return entries[0]
    table = Table(title="Available backups", box=None, pad_edge=False)
    for col in ("#", "name", "age", "size", "database", "uploads"):
        table.add_column(col)
    for i, e in enumerate(entries, 1):
        db, up = contents(e)
        table.add_row(str(i), e.name, human_age(e.local_time), human_size(e.size), db, up)
    err.print(table)
    answer = typer.prompt(
        "Restore which backup? (number, Enter = 1, the newest)",
        default="1",
        show_default=False,
        err=True,
    )
    try:
        return entries[int(answer) - 1]
    except (ValueError, IndexError):
        raise AbortedError(f"no backup number {answer!r}; nothing was changed") from None


def _what(change: Change) -> str:
    d = change.details
    if not d:
        return change.action
    parts = [f"{d['added']:,} added", f"{d['changed']:,} replaced", f"{d['removed']:,} deleted"]
    if d.get("kept"):  # not in the archive: the backup could not read them
        parts.append(f"{d['kept']:,} skipped at backup, kept")
    return f"{change.action}: " + ", ".join(parts) + f", {d['unchanged']:,} unchanged"


def confirm(layout: Layout, archive: Path, changes: list[Change], yes: bool) -> None:
    """Step 5, once the archive is staged and verified: what will change, then yes/no.

    Names the live files that will be replaced or deleted (the largest, and the total), so
    the operator knows what the safety backup is about to be the only copy of.
    """
    table = Table(title=f"Restore {archive.name} into {layout.root}", box=None, pad_edge=False)
    for col in ("component", "path", "now", "from the backup", "what happens"):
        table.add_column(col)
    shown = [c for c in changes if c.archive != "not selected"]
    for c in shown:
        table.add_row(str(c.component), layout.relpath(c.component), c.current, c.archive, _what(c))
    err.print(table)
    touched = [f for c in shown for f in c.largest]
    count = sum(
        c.details["changed"] + c.details["removed"] if c.details else len(c.largest) for c in shown
    )
    total = sum(c.details.get("bytes_replaced", 0) or sum(f[1] for f in c.largest) for c in shown)
    if count:
        err.print(
            f"{count:,} live files ({human_size(total)}) will be replaced or deleted; the largest:",
            markup=False,
        )
        for path, size, action in sorted(touched, key=lambda f: -f[1])[:LARGEST]:
            err.print(f"  {action:<8} {human_size(size):>9}  {path}", markup=False)
    if yes:
        return
    try:
        answer = typer.prompt(
            "The current data will be replaced (a safety backup is made first). Continue? [yes/no]",
            default="",
            show_default=False,
            err=True,
        )
    except (EOFError, typer.Abort):
        raise AbortedError("no answer; nothing was changed") from None
    if answer.strip().lower() not in ("y", "yes"):
        raise AbortedError("restore cancelled; nothing was changed")


def undo_command(
    s: Settings, layout: Layout, result: RestoreResult, identity: Path | None = None
) -> str | None:
    if result.safety_backup is None:
        return None
    path = layout.backups_dir / result.safety_backup
    key = identity_option(s, result.safety_backup, identity)  # an encrypted safety backup
    return (
        f"aica-backup --root {shlex.quote(str(layout.root))} restore {shlex.quote(str(path))} "
        f"--yes{key}"
    )


def print_result(layout: Layout, result: RestoreResult, undo: str | None) -> None:
    for c in result.changes:
        extra = f" ({_what(c).partition(': ')[2]})" if c.details else ""
        out.print(f"{c.component:<9} {c.action:<8} {c.current} -> {c.archive}{extra}", markup=False)
    if result.dry_run:
        out.print("Dry run: the archive was unpacked and verified; nothing was changed.")
        return
    if result.database_check in ("", "none"):
        checked = "database not checked" if result.database_check else "no database in the archive"
    else:
        checked = f"database check ok ({result.database_check})"
    out.print(f"Restored {result.archive} into {result.root}; {checked}.", markup=False)
    if result.safety_backup:
        out.print(f"Safety backup of the previous state: {result.safety_backup}", markup=False)
        out.print(f"To undo this restore: {undo}", markup=False)
    for n in result.notes:
        out.print(f"note: {n}", markup=False)


def command(
    ctx: typer.Context,
    archive: Annotated[
        str | None,
        typer.Argument(help="Archive to restore (path or name; default: the newest backup)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    only: Annotated[
        list[Component] | None,
        typer.Option("--only", help="Restore only this component (repeatable)."),
    ] = None,
    target: Annotated[
        Path | None,
        typer.Option(
            "--target",
            help="Restore into this folder instead of the app (test restore).",
            file_okay=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Unpack and verify, show what would change.")
    ] = False,
    from_target: Annotated[
        str | None,
        typer.Option("--from", help="Fetch the archive from this offsite target first."),
    ] = None,
    identity: Annotated[
        Path | None, typer.Option(help="age identity file for encrypted archives.", dir_okay=False)
    ] = None,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for a running backup.")] = 0,
    full_check: Annotated[
        bool,
        typer.Option(
            "--full-check",
            help="Run integrity_check even if verify already passed this very database.",
        ),
    ] = False,
    json_out: bool = JSON_OPTION,
) -> None:
    """Restore the newest (or the given) backup: verified first, swapped in atomically.

    A safety backup of the current state is made first and the command to undo is printed.
    """
    s = settings(ctx)
    layout = s.layout()
    use_app_hooks = target is None
    if target is not None:
        layout = layout.with_root(target.absolute())
    selected = frozenset(only) if only else frozenset(COMPONENT_ORDER)
    if not dry_run and not (use_app_hooks and s.restore.stop_command):
        # Restore would refuse later for the same reason: say it before any question.
        refuse_if_held(layout.database_path)
    catalog = Catalog(s.layout().backups_dir)
    interactive = is_terminal() and not yes and not json_out

    entry: ArchiveEntry | None = None
    if from_target is not None:
        from .offsite import fetch_for_restore

        path = fetch_for_restore(s, from_target, archive, identity=identity, need_key=True)
    elif archive is not None:
        path = resolve_archive(catalog, archive)
    else:
        entries = catalog.entries(("backup",))
        if not entries:
            raise UsageError(
                f"no backups in {catalog.backups_dir}", hint="make one with: ./scripts/backup.sh"
            )
        entry = choose(entries, interactive)
        path = entry.path
    if entry is None and path.parent == catalog.backups_dir and parse_name(path.name):
        entry = catalog.entry(path.name, read_missing=False)
    if not dry_run and not yes and not is_terminal():
        raise AbortedError("refusing to restore without a terminal to confirm; pass --yes")

    options = RestoreOptions(
        only=selected,
        dry_run=dry_run,
        check=s.restore.check,
        identities=identities_for(s, path, identity),
        stop_command=s.restore.stop_command if use_app_hooks else "",
        start_command=s.restore.start_command if use_app_hooks else "",
        health_url=s.restore.health_url if use_app_hooks else "",
        health_timeout=s.restore.health_timeout,
        safety_keep=s.retention.pre_restore_keep,
        safety_options=_safety_options(s),
        checked_sha256="" if full_check else _checked_sha256(entry),
    )
    # The lock belongs to the backups folder, whatever the target.
    facts: dict[str, Any] = {"archive": path.name, "root": str(layout.root)}
    facts["only"] = sorted(selected) if only else "all"
    try:
        with (
            exclusive_lock(s.layout().meta_dir, "restore", wait),
            contextlib.ExitStack() as held,
            contextlib.ExitStack() as bar,
        ):
            if target is not None:  # a killed restore there is finished first, and one
                finish_interrupted(layout)  # killed now is found by the app's next command
                held.enter_context(restoring_into(s.layout().meta_dir, layout.root))
            update = bar.enter_context(progress_bar("restore", not json_out))
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                done += n
                update(done, 0, "unpacking and verifying")

            def ask(changes: list[Change]) -> None:
                bar.close()  # the bar leaves the screen before the question
                confirm(layout, path, changes, yes)

            result = restore(
                layout,
                path,
                options,
                progress=advance if update else None,
                confirm=None if dry_run else ask,
            )
    except AicaBackupError as exc:  # the run log holds every restore (issue 14, item 15)
        if not dry_run:
            failed = {**facts, "error": str(exc)}
            reporting.finished(s, "restore", ok=False, facts=failed, notify=False)
        raise
    if not dry_run:
        facts["safety_backup"] = result.safety_backup
        for w in reporting.finished(s, "restore", ok=True, facts=facts, notify=False):
            warn(w)
    undo = undo_command(s, layout, result, identity)
    if json_out:
        emit_json({**result.to_dict(), "undo_command": undo})
        return
    print_result(layout, result, undo)
    if not dry_run and use_app_hooks and not s.restore.start_command:
        out.print(
            "Next: restart the backend (cd backend && python3 -m uvicorn main:app) and "
            "check it (curl http://localhost:8000/health)."
        )


def finish_interrupted(layout: Layout) -> None:
    """Roll back or complete a restore into ``layout`` that was killed, remove what it left."""
    done = recover(layout.restore_dir)
    if done is not None:
        warn(f"an interrupted restore of {done[1].archive} was found and {done[0]}")
    names = [item.path.name for item in remove_dead(layout.restore_dir)[0]]
    if release_empty_wal(layout.database_path):
        names.append(f"{layout.database_path.name}-wal")
    if names:
        warn(f"removed what an interrupted restore left: {', '.join(names)}")


def _checked_sha256(entry: ArchiveEntry | None) -> str:
    """The database SHA-256 that the archive's last verify checked in full, if it passed."""
    record = entry.verification if entry is not None else None
    if not record or record.get("ok") is not True:
        return ""
    sha = record.get("database_sha256")
    return sha if isinstance(sha, str) else ""


def _safety_options(s: Settings) -> BackupOptions:
    # The current state is saved as it is, even damaged: that is when it matters most.
    return replace(backup_options(s), check="none", idle_priority=False)  # the app is stopped


def register(app: typer.Typer) -> None:
    app.command("restore")(command)
