"""``aica-backup recover``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Not wired yet."""


def finish_interrupted_restore(ctx: typer.Context) -> None:
    """Not wired yet."""
