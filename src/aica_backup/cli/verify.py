"""``aica-backup verify [ARCHIVE | --latest | --all]``: prove backups can be restored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..catalog import Catalog
from ..config import Settings
from ..errors import AicaBackupError, ExitCode, UsageError
from ..verify import verify_archive
from . import reporting
from .archives import identities_for, resolve_archive
from .common import (
    JSON_OPTION,
    emit_json,
    err,
    human_size,
    out,
    progress_bar,
    settings,
    warn,
)


def verify_and_record(s: Settings, name: str, identity: Path | None = None) -> dict[str, Any]:
    """Verify one archive of the backups folder and record the result in its index."""
    catalog = Catalog(s.layout().backups_dir)
    path = catalog.path_of(name)
    report = verify_archive(
        path,
        s.layout().meta_dir,
        identities=identities_for(s, path, identity),
        check=s.restore.check,
        app_name=s.layout().app_name,
    )
    keys = ("ok", "finished", "at", "how", "problems", "database_sha256")
    catalog.record_verification(name, {k: report[k] for k in keys if k in report})
    return report


def _verify_each(
    s: Settings,
    names: list[str],
    outside: Path | None,
    identity: Path | None,
    reports: list[dict[str, Any]],
    json_out: bool,
) -> None:
    """Verify ``outside`` (an archive elsewhere) and each named archive, into ``reports``."""
    with progress_bar("verify", not json_out) as update:
        if update is not None:
            update(0, 0, "reading")
        if outside is not None:
            reports.append(
                verify_archive(
                    outside,
                    s.layout().meta_dir,
                    identities=identities_for(s, outside, identity),
                    check=s.restore.check,
                    app_name=s.layout().app_name,
                )
            )
        for name in names:
            try:
                reports.append(verify_and_record(s, name, identity))
            except AicaBackupError as exc:
                if len(names) == 1:
                    raise
                # The machine's fault (a full disk, a missing key), not the archive's: said
                # for this archive, recorded nowhere, and the others are still checked.
                reports.append(
                    {"archive": name, "ok": False, "error": str(exc), "code": int(exc.exit_code)}
                )


def command(
    ctx: typer.Context,
    archive: Annotated[str | None, typer.Argument(help="Archive path or name.")] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="Verify the newest backup (default).")
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="Verify every backup.")] = False,
    identity: Annotated[
        Path | None, typer.Option(help="age identity file for encrypted archives.", dir_okay=False)
    ] = None,
    json_out: bool = JSON_OPTION,
) -> int:
    """Read archives fully: every SHA-256, the member list, and the database's integrity."""
    s = settings(ctx)
    catalog = Catalog(s.layout().backups_dir)
    if archive is not None and (latest or all_):
        raise UsageError("give an archive, --latest or --all, not several")
    if archive is not None:
        path = resolve_archive(catalog, archive)
        names = [path.name] if path.parent == catalog.backups_dir else []
        outside = None if names else path
    else:
        names = catalog.names() if all_ else catalog.names(("backup",))[:1]
        outside = None
        if not names:
            raise UsageError(
                f"no backups in {catalog.backups_dir}", hint="make one with: ./scripts/backup.sh"
            )
    reports: list[dict[str, Any]] = []
    try:
        _verify_each(s, names, outside, identity, reports, json_out)
    except AicaBackupError as exc:  # could not check (no key, no space): logged as backup is
        facts = {"archives": len(names) + (outside is not None), "error": str(exc)}
        reporting.finished(s, "verify", ok=False, facts=facts, notify=False)
        raise
    failed = [r for r in reports if not r["ok"] and "error" not in r]
    errors = [r for r in reports if "error" in r]
    incomplete = [r for r in reports if r["ok"] and r.get("skipped")]
    if json_out:
        emit_json({"ok": not failed and not errors, "archives": reports})
    else:
        for r in reports:
            if "error" in r:
                err.print(f"ERROR   {r['archive']}  {r['error']}", markup=False)
            elif r["ok"]:
                gaps = (
                    f", INCOMPLETE: {r['skipped']} file(s) skipped at backup (unreadable)"
                    if r.get("skipped")
                    else ""
                )
                out.print(
                    f"OK      {r['archive']}  {r['members']} members, "
                    f"{human_size(r['bytes'])}, database {r['database']}, {r['seconds']:.1f} s"
                    + gaps,
                    markup=False,
                )
            else:
                out.print(f"FAILED  {r['archive']}  {r['problems'][0]}", markup=False)
                for p in r["problems"][1:5]:
                    out.print(f"        {p}", markup=False)
            for w in r.get("warnings", []):
                warn(f"{r['archive']}: {w}")
    for r in incomplete:
        warn(f"{r['archive']} is incomplete: {r['skipped']} file(s) skipped at backup")
    facts = {
        "archives": len(reports),
        "failed": [r["archive"] for r in failed],
        "errors": [r["archive"] for r in errors],
        "incomplete": [r["archive"] for r in incomplete],
    }
    warned = bool(incomplete) or any(r.get("warnings") for r in reports)
    if failed:
        code = ExitCode.ARCHIVE
    elif errors:
        code = ExitCode(errors[0]["code"])
    else:
        code = ExitCode.WARNING if warned else ExitCode.OK
    for w in reporting.finished(
        s, "verify", ok=not failed and not errors, warning=warned, facts=facts, notify=False
    ):
        warn(w)
    return int(code)


def register(app: typer.Typer) -> None:
    app.command("verify")(command)
