"""``aica-backup list``: the archives, newest first, from the index (archives are not opened)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..catalog import KINDS, ArchiveEntry, Catalog
from ..errors import ExitCode
from .common import JSON_OPTION, emit_json, human_age, human_size, out, settings, warn


def contents(e: ArchiveEntry) -> tuple[str, str]:
    """(database, uploads) columns for an entry."""
    if e.unreadable:
        return ("UNREADABLE", "?")
    s: dict[str, Any] = e.summary or {}
    db = s.get("database") or {}
    up = s.get("uploads") or {}
    if e.summary is None:
        return ("?", "?")
    # human_size, not a fixed "x.x MB": a new app's 12 KB database showed as "0.0 MB"
    dbcol = (
        human_size(db.get("page_count", 0) * db.get("page_size", 0))
        if db.get("present")
        else "absent"
    )
    if db.get("present") and db.get("integrity") not in ("ok", "skipped"):
        dbcol += " (DAMAGED)"
    upcol = f"{up.get('file_count', 0):,} files" if up.get("present") else "absent"
    if s.get("skipped"):
        upcol += f" (INCOMPLETE: {s['skipped']:,} skipped)"
    return dbcol, upcol


def verified(e: ArchiveEntry) -> str:
    v = e.verification
    if not v:
        return "never"
    # a failure recorded without "finished" (older releases) may have been a full disk
    state = "ok" if v.get("ok") else "FAILED" if v.get("finished") else "unsure, verify again"
    return f"{state} ({v.get('how', 'full')}, {v.get('at', '?')[:16].replace('T', ' ')})"


def command(
    ctx: typer.Context,
    json_out: bool = JSON_OPTION,
    all_kinds: Annotated[
        bool, typer.Option("--all", help="Also list the safety backups made before restores.")
    ] = False,
) -> int:
    """List the backups, newest first: name, local time, age, size, contents, verification.

    An archive this user cannot read is listed as UNREADABLE with a warning (exit 1).
    """
    s = settings(ctx)
    catalog = Catalog(s.layout().backups_dir)
    entries = catalog.entries(KINDS if all_kinds else ("backup",))
    code = ExitCode.WARNING if any(e.unreadable for e in entries) else ExitCode.OK
    for e in entries:
        if e.unreadable:
            warn(f"{e.unreadable} (run aica-backup doctor)")
    if json_out:
        now = datetime.now(UTC)
        # the age the table shows, in seconds, so scripts need not redo the time arithmetic
        emit_json(
            [
                {**e.to_dict(), "age_seconds": int((now - e.local_time).total_seconds())}
                for e in entries
            ]
        )
        return int(code)
    if not entries:
        out.print(f"No backups in {catalog.backups_dir}. Make one with: ./scripts/backup.sh")
        return int(code)
    table = Table(box=None, pad_edge=False)
    longest = max(len(e.name) + (9 if e.pinned else 0) for e in entries)
    for col in ("#", "name", "local time", "age", "size", "database", "uploads", "verified"):
        # The name is what the operator copies into ``restore``: never truncate or wrap it.
        table.add_column(
            col,
            justify="right" if col in ("#", "size", "age") else "left",
            no_wrap=col == "name",
            min_width=longest if col == "name" else None,
        )
    for i, e in enumerate(entries, 1):
        db, up = contents(e)
        name = e.name + (" [pinned]" if e.pinned else "")
        cells = (
            str(i),
            name,
            e.local_time.strftime("%Y-%m-%d %H:%M:%S"),
            human_age(e.local_time),
            human_size(e.size),
            db,
            up,
            verified(e),
        )
        # Text, not markup: Rich took "[pinned]" for a style tag and printed nothing.
        table.add_row(*(Text(c) for c in cells))
    if out.is_terminal:
        out.print(table)
    else:
        # Piped or redirected (cron mail, grep): Rich would squeeze the table into 80 columns
        # and cut the names; print it at its natural width instead.
        width = Measurement.get(out, out.options.update_width(1000), table).maximum
        wide = Console(file=out.file, width=max(width, out.width), highlight=False)
        wide.print(table)
    return int(code)


def register(app: typer.Typer) -> None:
    app.command("list")(command)
