"""``aica-backup list``: the archives, newest first, from the index (archives are not opened)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..catalog import KINDS, ArchiveEntry, Catalog
from .common import JSON_OPTION, emit_json, human_age, human_size, out, settings


def contents(e: ArchiveEntry) -> tuple[str, str]:
    """(database, uploads) columns for an entry."""
    s: dict[str, Any] = e.summary or {}
    db = s.get("database") or {}
    up = s.get("uploads") or {}
    if e.summary is None:
        return ("?", "?")
    dbcol = (
        f"{db.get('page_count', 0) * db.get('page_size', 0) / 1e6:.1f} MB"
        if db.get("present")
        else "absent"
    )
    if db.get("present") and db.get("integrity") not in ("ok", "skipped"):
        dbcol += " (DAMAGED)"
    upcol = f"{up.get('file_count', 0):,} files" if up.get("present") else "absent"
    return dbcol, upcol


def verified(e: ArchiveEntry) -> str:
    v = e.verification
    if not v:
        return "never"
    state = "ok" if v.get("ok") else "FAILED"
    return f"{state} ({v.get('how', 'full')}, {v.get('at', '?')[:16].replace('T', ' ')})"


def command(
    ctx: typer.Context,
    json_out: bool = JSON_OPTION,
    all_kinds: Annotated[
        bool, typer.Option("--all", help="Also list the safety backups made before restores.")
    ] = False,
) -> None:
    """List the backups, newest first: name, local time, age, size, contents, verification."""
    s = settings(ctx)
    catalog = Catalog(s.layout().backups_dir)
    entries = catalog.entries(KINDS if all_kinds else ("backup",))
    if json_out:
        emit_json([e.to_dict() for e in entries])
        return
    if not entries:
        out.print(f"No backups in {catalog.backups_dir}. Make one with: ./scripts/backup.sh")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("#", "name", "local time", "age", "size", "database", "uploads", "verified"):
        table.add_column(col, justify="right" if col in ("#", "size", "age") else "left")
    for i, e in enumerate(entries, 1):
        db, up = contents(e)
        name = e.name + (" [pinned]" if e.pinned else "")
        table.add_row(
            str(i),
            name,
            e.local_time.strftime("%Y-%m-%d %H:%M:%S"),
            human_age(e.local_time),
            human_size(e.size),
            db,
            up,
            verified(e),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("list")(command)
