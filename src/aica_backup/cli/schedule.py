"""``aica-backup schedule cron``: the guide's crontab lines for this app, printed or installed.

The lines name the aica-backup running this command (``AICA_BACKUP_BIN=...``): cron's
``PATH=/usr/bin:/bin`` would not find one installed with pipx, uv or in a venv. systemd and
Docker schedules are files: ``aica-backup init --with systemd,compose`` writes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .. import schedule
from ..errors import UsageError
from .common import JSON_OPTION, emit_json, globals_of, note, out, settings, warn

schedule_app = typer.Typer(
    help="Scheduled backups: the guide's cron lines (systemd and Docker files are in deploy/).",
    no_args_is_help=True,
)


def cron(
    ctx: typer.Context,
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="File the jobs append their output to; it must be writable by you. "
            f"[default: {schedule.DEFAULT_LOG_FILE} where you can write it, else "
            f"BACKUPS/.aica-backup/{schedule.FALLBACK_LOG_NAME}]",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="Put the lines into your crontab (replacing an earlier "
            "aica-backup block, keeping every other line).",
        ),
    ] = False,
    remove: Annotated[
        bool, typer.Option("--remove", help="Take the aica-backup block out of your crontab.")
    ] = False,
    json_out: bool = JSON_OPTION,
) -> None:
    """Print the guide's cron lines for this app: daily at 03:00 and Sundays at 02:00."""
    if install and remove:
        raise UsageError("--install and --remove cannot be used together")
    root = globals_of(ctx).root
    if remove:
        changed = schedule.uninstall()
        if json_out:
            emit_json({"removed": changed})
        else:
            out.print(
                "Removed the aica-backup block from your crontab."
                if changed
                else "Your crontab has no aica-backup block.",
                markup=False,
            )
        return
    script = root / "scripts" / "backup.sh"
    if not os.access(script, os.X_OK):
        problem = f"{script} is missing or not executable: the jobs would fail"
        if install:  # never install a line that cannot run
            raise UsageError(
                problem,
                hint="run this from the app root (or pass --root) after `aica-backup init` "
                "has written scripts/ there",
            )
        warn(f"{problem} (is --root the app?)")
    meta_dir = settings(ctx).layout().meta_dir
    choice = schedule.choose_log(log.absolute() if log is not None else None, meta_dir)
    if install:
        schedule.read_crontab()  # fails now if crontab is missing, before anything is made
        schedule.prepare_log(choice, meta_dir)
    elif not choice.path.parent.is_dir():
        warn(
            f"{choice.path.parent} does not exist yet: create it before pasting these lines "
            "(--install does)"
        )
    if choice.instead_of is not None:
        note(
            f"You cannot write {choice.instead_of}: the jobs log to {choice.path} instead "
            "(--log FILE to choose another)."
        )
    lines = schedule.cron_lines(root, choice.path, schedule.running_tool())
    changed = schedule.install(lines) if install else False
    if json_out:
        emit_json(
            {"lines": lines, "log": str(choice.path), "installed": install, "changed": changed}
        )
        return
    if install:
        note(
            "Installed in your crontab (between '# BEGIN aica-backup' and '# END aica-backup'):"
            if changed
            else "Your crontab already has these lines:"
        )
    for line in lines:
        out.print(line, markup=False)


def register(app: typer.Typer) -> None:
    schedule_app.command("cron")(cron)
    app.add_typer(schedule_app, name="schedule")
