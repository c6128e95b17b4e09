"""``aica-backup init``: write the wrappers, Makefile targets, settings file and (on request)
the automation files into an app root (the work is :mod:`aica_backup.adopt`'s)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import adopt, schedule
from ..config import load_settings
from .common import JSON_OPTION, emit_json, globals_of, note, out, warn

WORDS = {"create": "wrote", "replace": "replaced", "append": "added the targets to", "keep": "kept"}
DRY_WORDS = {
    "create": "would write",
    "replace": "would replace",
    "append": "would add the targets to",
    "keep": "would keep",
}


def init(
    ctx: typer.Context,
    with_: Annotated[
        str,
        typer.Option(
            "--with",
            help="Also write automation files, filled in for this app: "
            f"{','.join(adopt.EXTRAS)} (comma-separated).",
            metavar="LIST",
        ),
    ] = "",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace files init wrote before that differ (never aica-backup.toml), and "
            "adopt a folder that has none of the app's files yet.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be written; write nothing.")
    ] = False,
    json_out: bool = JSON_OPTION,
) -> None:
    """Set up this app root: scripts/, make targets, aica-backup.toml (only what is absent)."""
    g = globals_of(ctx)
    extras = adopt.parse_extras(with_)
    settings = load_settings(g.root, config_file=g.config_file)
    for message in settings.notes:
        warn(message)
    adopt.check_adoptable(settings, force)
    tool = schedule.running_tool()
    plans = adopt.plan(settings, extras, tool, force)
    if not dry_run:
        adopt.apply(settings, plans)
    steps = adopt.next_steps(settings, extras)
    if json_out:
        emit_json(
            {
                "root": str(settings.root),
                "tool": str(tool) if tool else None,
                "dry_run": dry_run,
                "files": [
                    {"path": str(p.path), "action": p.action, "reason": p.reason} for p in plans
                ],
                "next": steps,
            }
        )
        return
    if tool is None:
        warn("could not tell where this aica-backup is installed: the wrappers look it up")
    words = DRY_WORDS if dry_run else WORDS
    for p in plans:
        shown = p.path.relative_to(settings.root)
        reason = f" ({p.reason})" if p.reason else ""
        out.print(f"{words[p.action]} {shown}{reason}", markup=False)
    if dry_run:
        note("Dry run: nothing was written.")
        return
    note("Next:")
    for step in steps:
        note(f"  {step}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
