"""``aica-backup schedule cron``: the guide's crontab lines for this app, printed or installed.

systemd and Docker schedules are files to copy, not commands: see ``deploy/systemd/`` and
``docker-compose.yml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .. import schedule
from ..errors import UsageError
from .common import JSON_OPTION, emit_json, globals_of, note, out, warn

schedule_app = typer.Typer(
    help="Scheduled backups: the guide's cron lines (systemd and Docker files are in deploy/).",
    no_args_is_help=True,
)


def _writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK)


def cron(
    ctx: typer.Context,
    log: Annotated[
        Path,
        typer.Option("--log", help="File the jobs append their output to.", dir_okay=False),
    ] = schedule.DEFAULT_LOG_FILE,
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
    lines = schedule.cron_lines(root, log.absolute())
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
        warn(f"{script} is missing or not executable: the jobs would fail (is --root the app?)")
    if not _writable(log.absolute()):
        warn(f"you cannot write {log.absolute()}: the jobs' output would be lost (pass --log)")
    changed = schedule.install(lines) if install else False
    if json_out:
        emit_json({"lines": lines, "installed": install, "changed": changed})
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
