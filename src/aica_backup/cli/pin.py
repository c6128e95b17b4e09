"""``aica-backup pin`` / ``unpin``: protect a backup from retention."""

from __future__ import annotations

import typer

from ..catalog import Catalog
from ..lock import exclusive_lock
from .common import out, settings


def _set(ctx: typer.Context, name: str, pinned: bool) -> None:
    s = settings(ctx)
    layout = s.layout()
    with exclusive_lock(layout.meta_dir, "pin", s.backup.lock_wait):
        Catalog(layout.backups_dir).set_pinned(name.rsplit("/", 1)[-1], pinned)
    out.print(f"{'Pinned' if pinned else 'Unpinned'}: {name}", markup=False)


def pin(
    ctx: typer.Context,
    name: str = typer.Argument(help="Archive name, e.g. backup_20241010_030000.tar.gz"),
) -> None:
    """Pin a backup: retention never deletes it."""
    _set(ctx, name, True)


def unpin(ctx: typer.Context, name: str = typer.Argument(help="Archive name.")) -> None:
    """Unpin a backup: retention treats it like any other again."""
    _set(ctx, name, False)


def register(app: typer.Typer) -> None:
    app.command("pin")(pin)
    app.command("unpin")(unpin)
