"""What every command shares: loading settings, output (human or JSON), progress, formatting.

Results go to stdout; progress, warnings and errors to stderr. Only this package prints.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..config import Settings, load_settings

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON (for scripts).")


@dataclass
class Globals:
    """Options given before the command name."""

    root: Path
    config_file: Path | None
    notes_shown: bool = False  # the settings' notes (a stray variable…) are said once a run


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    if not isinstance(obj, Globals):  # pragma: no cover - the root callback always sets it
        raise RuntimeError("aica-backup: command context missing")
    return obj


def settings(
    ctx: typer.Context, overrides: Mapping[tuple[str, ...], Any] | None = None
) -> Settings:
    g = globals_of(ctx)
    s = load_settings(g.root, config_file=g.config_file, overrides=overrides)
    if not g.notes_shown:
        g.notes_shown = True
        for note in s.notes:
            warn(note)
    s.check_app_root()  # before anything is created under a root that may be wrong
    return s


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", markup=True)


def note(message: str) -> None:
    err.print(message, markup=False)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_age(when: datetime, now: datetime | None = None) -> str:
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 90 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Any]:
    """Yield ``update(done, total, phase)`` for a Rich bar on a terminal, None otherwise
    (so the work skips its progress bookkeeping altogether)."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import (  # only here: a run without a terminal never needs it
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int, phase: str) -> None:
            bar.update(task, completed=done, total=total or None, description=f"{label}: {phase}")

        yield update
