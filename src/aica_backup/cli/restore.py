"""``aica-backup restore [ARCHIVE]``: choose, confirm, then the transactional restore."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..backup import BackupOptions
from ..catalog import ArchiveEntry, Catalog, parse_name
from ..config import Settings
from ..errors import AbortedError, UsageError
from ..fsutil import walk_tree
from ..layout import COMPONENT_ORDER, Component, Layout
from ..lock import exclusive_lock
from ..restore import RestoreOptions, RestoreResult, restore
from .archives import identities_for, resolve_archive
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


def _current(layout: Layout, comp: Component) -> str:
    path = layout.path(comp)
    if comp is Component.UPLOADS:
        return (
            f"{sum(1 for _, e in walk_tree(path) if e.is_file(follow_symlinks=False)):,} files"
            if path.is_dir()
            else "absent"
        )
    return human_size(path.stat().st_size) if path.exists() else "absent"


def _archived(entry: ArchiveEntry | None, comp: Component) -> str:
    if entry is None or entry.summary is None:
        return "(read during restore)"
    db, up = contents(entry)
    if comp is Component.DATABASE:
        return db
    if comp is Component.UPLOADS:
        return up
    return "present" if entry.summary.get("config_present") else "absent"


def confirm(
    layout: Layout, archive: Path, entry: ArchiveEntry | None, only: frozenset[Component], yes: bool
) -> None:
    """Step 3: what will change, then yes/no. Without a terminal, only --yes goes ahead."""
    table = Table(title=f"Restore {archive.name} into {layout.root}", box=None, pad_edge=False)
    for col in ("component", "path", "now", "from the backup"):
        table.add_column(col)
    for comp in COMPONENT_ORDER:
        if comp in only:
            table.add_row(
                str(comp), layout.relpath(comp), _current(layout, comp), _archived(entry, comp)
            )
    err.print(table)
    if yes:
        return
    if not is_terminal():
        raise AbortedError("refusing to restore without a terminal to confirm; pass --yes")
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


def undo_command(layout: Layout, result: RestoreResult) -> str | None:
    if result.safety_backup is None:
        return None
    path = layout.backups_dir / result.safety_backup
    return (
        f"aica-backup --root {shlex.quote(str(layout.root))} restore {shlex.quote(str(path))} --yes"
    )


def print_result(layout: Layout, result: RestoreResult, undo: str | None) -> None:
    for c in result.changes:
        extra = ""
        if c.details:
            extra = " (" + ", ".join(f"{v} {k}" for k, v in c.details.items()) + ")"
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
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running backup.")] = 0,
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
    catalog = Catalog(s.layout().backups_dir)
    interactive = is_terminal() and not yes and not json_out

    entry: ArchiveEntry | None = None
    if from_target is not None:
        from .offsite import fetch_for_restore

        path = fetch_for_restore(s, from_target, archive)
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
    if not dry_run:
        confirm(layout, path, entry, selected, yes)

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
    with (
        exclusive_lock(s.layout().meta_dir, "restore", wait),
        progress_bar("restore", not json_out) as update,
    ):
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            update(done, 0, "unpacking and verifying")

        result = restore(layout, path, options, progress=advance if update else None)
    undo = undo_command(layout, result)
    if json_out:
        emit_json({**result.to_dict(), "undo_command": undo})
        return
    print_result(layout, result, undo)
    if not dry_run and use_app_hooks and not s.restore.start_command:
        out.print(
            "Next: restart the backend (cd backend && python3 -m uvicorn main:app) and "
            "check it (curl http://localhost:8000/health)."
        )


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
