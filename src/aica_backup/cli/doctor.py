"""``aica-backup doctor [--fix]``: diagnose the troubleshooting table's problems."""

from __future__ import annotations

from typing import Annotated

import typer

from ..doctor import ERROR, INFO, diagnose
from ..errors import ExitCode
from .common import JSON_OPTION, emit_json, out, settings


def command(
    ctx: typer.Context,
    fix: Annotated[
        bool, typer.Option("--fix", help="Apply the safe fixes (permissions, stale WAL).")
    ] = False,
    json_out: bool = JSON_OPTION,
) -> int:
    """Check backups, the database (locked, stale WAL, missing, corrupt) and permissions.

    With encryption recipients and offsite targets set, also look for unencrypted copies on
    the targets.
    """
    s = settings(ctx)
    findings = diagnose(s.layout(), max_age_hours=s.health.max_age_hours, fix=fix)
    if s.encryption.recipients and s.offsite.targets:
        from ..doctor import check_offsite_plaintext
        from .offsite import REPLACE_COMMAND, configured_targets

        findings += check_offsite_plaintext(configured_targets(s), REPLACE_COMMAND)
    open_ = [f for f in findings if not f.fixed and f.severity != INFO]
    if json_out:
        emit_json({"ok": not open_, "findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            mark = "fixed" if f.fixed else f.severity.upper()
            out.print(f"[{mark}] {f.diagnosis}", markup=False)
            if not f.fixed and f.severity != INFO:
                out.print(f"        fix: {f.fix}", markup=False)
        if not open_:
            out.print("All checks passed: backups fresh, database healthy, permissions private.")
    if any(f.severity == ERROR for f in open_):
        return int(ExitCode.ERROR)
    return int(ExitCode.WARNING if open_ else ExitCode.OK)


def register(app: typer.Typer) -> None:
    app.command("doctor")(command)
