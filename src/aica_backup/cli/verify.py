"""``aica-backup verify [ARCHIVE | --latest | --all]``: prove backups can be restored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..catalog import Catalog
from ..config import Settings
from ..errors import ExitCode, UsageError
from ..verify import verify_archive
from . import reporting
from .archives import identities_for, resolve_archive
from .common import JSON_OPTION, emit_json, human_size, out, progress_bar, settings, warn


def verify_and_record(s: Settings, name: str, identity: Path | None = None) -> dict[str, Any]:
    """Verify one archive of the backups folder and record the result in its index."""
    catalog = Catalog(s.layout().backups_dir)
    path = catalog.path_of(name)
    report = verify_archive(
        path,
        s.layout().meta_dir,
        identities=identities_for(s, path, identity),
        check=s.restore.check,
    )
    keys = ("ok", "at", "how", "problems", "database_sha256")
    catalog.record_verification(name, {k: report[k] for k in keys if k in report})
    return report


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
                )
            )
        for name in names:
            reports.append(verify_and_record(s, name, identity))
    failed = [r for r in reports if not r["ok"]]
    incomplete = [r for r in reports if r["ok"] and r.get("skipped")]
    if json_out:
        emit_json({"ok": not failed, "archives": reports})
    else:
        for r in reports:
            if r["ok"]:
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
    for r in incomplete:
        warn(f"{r['archive']} is incomplete: {r['skipped']} file(s) skipped at backup")
    facts = {
        "archives": len(reports),
        "failed": [r["archive"] for r in failed],
        "incomplete": [r["archive"] for r in incomplete],
    }
    code = ExitCode.ARCHIVE if failed else ExitCode.WARNING if incomplete else ExitCode.OK
    for w in reporting.finished(
        s, "verify", ok=not failed, warning=bool(incomplete), facts=facts, notify=False
    ):
        warn(w)
    return int(code)


def register(app: typer.Typer) -> None:
    app.command("verify")(command)
