"""``aica-backup prune``: apply the retention policy (or the one given by flags)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from ..catalog import Catalog, prune
from ..lock import exclusive_lock
from .common import JSON_OPTION, emit_json, out, settings


def command(
    ctx: typer.Context,
    json_out: bool = JSON_OPTION,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Show what would be removed and why.")
    ] = False,
    keep_last: Annotated[int | None, typer.Option(help="Keep the newest N backups.")] = None,
    keep_daily: Annotated[int | None, typer.Option(help="Keep the newest of N days.")] = None,
    keep_weekly: Annotated[int | None, typer.Option(help="Keep the newest of N weeks.")] = None,
    keep_monthly: Annotated[int | None, typer.Option(help="Keep the newest of N months.")] = None,
    keep_yearly: Annotated[int | None, typer.Option(help="Keep the newest of N years.")] = None,
    keep_within: Annotated[
        str | None, typer.Option(help="Keep everything younger than this (7d, 12h, 2w, 6m).")
    ] = None,
) -> None:
    """Delete backups outside the retention policy (default: keep the newest 7).

    Pinned backups and the newest good backup are never deleted.
    """
    flags = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    overrides: dict[tuple[str, ...], object] = {}
    if given:  # flags replace the configured policy as a whole, like restic's forget
        overrides = {
            ("retention", k): flags.get(k) or (0 if k != "keep_within" else "") for k in flags
        }
    s = settings(ctx, overrides)
    layout = s.layout()
    catalog = Catalog(layout.backups_dir)
    with exclusive_lock(layout.meta_dir, "prune", s.backup.lock_wait):
        decision = prune(catalog, s.retention.policy(), datetime.now(UTC), dry_run=dry_run)
        safety = prune(
            catalog,
            s.retention.policy().__class__(keep_last=s.retention.pre_restore_keep),
            datetime.now(UTC),
            kind="pre-restore",
            dry_run=dry_run,
        )
    removed = decision.remove + safety.remove
    if json_out:
        emit_json(
            {
                "dry_run": dry_run,
                "keep": [c.name for c in decision.keep + safety.keep],
                "remove": [c.name for c in removed],
                "reasons": {**decision.reasons, **safety.reasons},
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    reasons = {**decision.reasons, **safety.reasons}
    for c in decision.keep + safety.keep:
        out.print(f"keep    {c.name}  ({', '.join(reasons[c.name])})", markup=False)
    for c in removed:
        why = decision.reasons.get(c.name) or safety.reasons[c.name]
        out.print(f"{verb:<7} {c.name}  ({', '.join(why)})", markup=False)
    if not removed:
        out.print("Nothing to remove.")


def register(app: typer.Typer) -> None:
    app.command("prune")(command)
