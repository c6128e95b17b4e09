"""``aica-backup demo``: the whole job on a sample app — back up, damage, restore, check."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..config import load_settings
from ..demo import build_sample_app, damage, fingerprint
from ..lock import exclusive_lock
from ..restore import RestoreOptions, restore
from .backup import run_backup_job, summary_line
from .common import human_size, out
from .verify import verify_and_record


def _step(n: int, text: str) -> None:
    out.print(f"\n[bold cyan]{n}.[/] [bold]{text}[/]")


def command(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Build the sample app here (default: a new temp folder).", file_okay=False
        ),
    ] = None,
) -> None:
    """Run the main job on a sample app: backup, verify, offsite, damage, restore, check."""
    root = (directory or Path(tempfile.mkdtemp(prefix="aica-backup-demo-"))).absolute()
    if root.exists() and any(root.iterdir()):
        raise typer.BadParameter(f"{root} is not empty", param_hint="--dir")
    offsite = root.parent / f"{root.name}-offsite"
    s = load_settings(root, env={}, overrides={("offsite", "targets"): [str(offsite)]})
    layout = s.layout()

    _step(1, f"Sample app in {root}")
    build_sample_app(layout)
    original = fingerprint(layout)
    out.print(
        f"   database {layout.database} ({len(original['rows']):,} rows, WAL mode), "
        f"{len(original['uploads'])} uploads with Japanese names, "
        f"{layout.config} (0600)"
    )

    _step(2, "Backup (the guide's ./scripts/backup.sh), with an offsite copy to a folder")
    result, report, _code = run_backup_job(
        s, verify=False, apply_retention=True, offsite=True, wait=0, show_progress=True
    )
    out.print("   " + summary_line(result), markup=False)
    for copy in report.get("offsite", []):
        state = "verified" if copy["ok"] else f"FAILED: {copy['error']}"
        out.print(f"   offsite copy → {copy['target']}: {state}", markup=False)

    _step(3, "Verify (the guide's test restore, automated)")
    check = verify_and_record(s, result.name)
    state = "OK" if check["ok"] else "FAILED"
    out.print(
        f"   {result.name}: {state} — {check['members']} members, "
        f"every SHA-256 rechecked, database integrity {check['database']}",
        markup=False,
    )

    _step(4, "Disaster")
    for line in damage(layout):
        out.print(f"   ✗ {line}", markup=False)

    _step(5, "Restore (the guide's ./scripts/restore.sh, answered yes)")
    with exclusive_lock(layout.meta_dir, "restore"):
        restored = restore(layout, result.path, RestoreOptions(safety_keep=3))
    out.print(
        f"   restored {restored.archive}; safety backup of the damaged state: "
        f"{restored.safety_backup}",
        markup=False,
    )

    _step(6, "Check")
    now = fingerprint(layout)
    checks = {
        f"database: {len(now['rows']):,} rows identical": now["rows"] == original["rows"],
        f"uploads: {len(now['uploads'])} files byte-for-byte identical": now["uploads"]
        == original["uploads"],
        ".env.production: identical bytes, mode 0600": (now["config"], now["config_mode"])
        == (original["config"], 0o600),
    }
    for text, ok in checks.items():
        out.print(f"   {'✓' if ok else '✗'} {text}", markup=False)
    size = sum(p.stat().st_size for p in layout.backups_dir.glob("*.tar.gz"))
    out.print(
        f"\nArchives ({human_size(size)}) in {layout.backups_dir}; explore with:\n"
        f"   aica-backup --root {root} list --all\n"
        f"   tar -tzf {result.path}"
    )
    if not all(checks.values()):
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("demo")(command)
