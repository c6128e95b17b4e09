"""``aica-backup backup``: one archive, then verify, retention, offsite copies, report."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ..backup import BackupOptions, BackupResult, create_archive
from ..catalog import Catalog, prune
from ..config import Settings
from ..errors import AicaBackupError, ExitCode
from ..lock import exclusive_lock
from . import reporting
from .common import JSON_OPTION, emit_json, human_size, out, progress_bar, settings, warn


def backup_options(s: Settings) -> BackupOptions:
    """The library's options from the settings (recipients only when every archive is encrypted)."""
    recipients: list[Any] = []
    if s.encryption.recipients and s.encryption.encrypt == "all":
        from ..crypto import parse_recipients

        recipients = parse_recipients(s.encryption.recipients)
    return BackupOptions(
        check=s.backup.check,
        compression=s.backup.compression,
        level=s.backup.effective_level,
        threads=s.backup.threads,
        recipients=recipients,
        idle_priority=s.backup.idle_priority,
    )


def summary_line(result: BackupResult) -> str:
    m = result.manifest.summary()
    parts = [human_size(result.size)]
    db = m.get("database") or {}
    if db.get("present"):
        check = db.get("check")
        verdict = "not checked" if check in (None, "none") else f"{check} {db.get('integrity')}"
        parts.append(f"database {verdict}")
    else:
        parts.append("no database")
    up = m.get("uploads") or {}
    if up.get("present"):
        parts.append(
            f"{up.get('file_count', 0):,} uploads ({human_size(up.get('total_bytes', 0))})"
        )
    else:
        parts.append("no uploads")
    parts.append("config" if m.get("config_present") else "no config")
    if m.get("skipped"):
        parts.append(f"INCOMPLETE: {m['skipped']} skipped")
    parts.append(f"{result.seconds:.1f} s")
    return f"Backup created: {result.path} ({'; '.join(parts)})"


def run_backup_job(
    s: Settings,
    *,
    verify: bool,
    apply_retention: bool,
    offsite: bool,
    wait: float,
    show_progress: bool,
) -> tuple[BackupResult, dict[str, Any], ExitCode]:
    """The whole scheduled job under the lock. Returns (result, report, exit code).

    Once the archive is published, nothing that fails later (its index entry, its
    verification, retention, an offsite copy) stops the rest of the job: every step runs,
    each problem goes into ``report["problems"]``, and the exit code says the worst.
    A failed verification is an error (the new archive is not good: retention does not
    count it); a step that could not run (no space to verify, an archive retention could not
    delete) exits with its own code; a problem of the archive's bookkeeping (its index
    entry, a component gone since the last backup, skipped uploads, an offsite copy) is a
    warning (exit 1): the backup is there.
    """
    layout = s.layout()
    report: dict[str, Any] = {"ok": True}
    code = ExitCode.OK
    with exclusive_lock(layout.meta_dir, "backup", wait) as notes:
        report["notes"] = notes
        with progress_bar("backup", show_progress) as update:
            result = create_archive(layout, backup_options(s), progress=update)
        report.update(result.to_dict())
        problems: list[str] = list(result.problems)
        if problems:
            code = ExitCode.WARNING
        unchecked = False  # asked to verify the new archive, and the check could not run
        if verify or s.backup.verify:
            from .verify import verify_and_record

            try:
                outcome = verify_and_record(s, result.name)
                report["verification"] = outcome
                if not outcome["ok"]:
                    problems.append(
                        f"archive {result.name} failed verification right after backup: "
                        f"{outcome['problems'][0]}"
                    )
                    code = ExitCode.ERROR
            except AicaBackupError as exc:  # could not check it (space, key): not its fault
                problems.append(f"archive {result.name} could not be verified: {exc}")
                code = max(code, exc.exit_code)
                unchecked = True
        if apply_retention and unchecked:
            # Retention would count the new archive as good on the strength of a check that
            # did not finish and push verified ones out: it waits for a run that can check.
            problems.append("retention skipped: the new archive could not be verified")
        elif apply_retention:
            try:
                decision = prune(
                    Catalog(layout.backups_dir), s.retention.policy(), datetime.now(UTC)
                )
                report["pruned"] = [c.name for c in decision.remove]
            except AicaBackupError as exc:
                problems.append(f"retention failed: {exc}")
                code = max(code, exc.exit_code)
        if offsite and s.offsite.targets:
            from .offsite import push_after_backup

            try:
                copies = push_after_backup(s, result)
            except AicaBackupError as exc:  # none could start (a key, the settings)
                problems.append(f"offsite copies failed: {exc}")
                code = max(code, exc.exit_code)
                copies = []
            report["offsite"] = copies
            failed = [c for c in copies if not c["ok"]]
            if failed:
                problems.append(
                    "offsite copy failed: "
                    + "; ".join(str(c["error"]) for c in failed)  # each names its target
                )
                code = max(code, ExitCode.WARNING)
        report["problems"] = problems
        report["ok"] = code == ExitCode.OK
    return result, report, code


def command(
    ctx: typer.Context,
    json_out: bool = JSON_OPTION,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read the new archive back and check it fully.")
    ] = False,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Skip retention this time.")] = False,
    no_offsite: Annotated[
        bool, typer.Option("--no-offsite", help="Skip the offsite copies this time.")
    ] = False,
    check: Annotated[
        str | None,
        typer.Option(help="Snapshot check: integrity, quick or none (default: quick)."),
    ] = None,
    compression: Annotated[
        str | None, typer.Option(help="gzip (.tar.gz, default) or zstd (.tar.zst).")
    ] = None,
    level: Annotated[int | None, typer.Option(help="Compression level.")] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds to wait for a running backup or restore (default: fail at once).",
        ),
    ] = None,
) -> int:
    """Back up the database, uploads and config into backups/backup_YYYYMMDD_HHMMSS.tar.gz."""
    s = settings(
        ctx,
        {
            ("backup", "check"): check,
            ("backup", "compression"): compression,
            ("backup", "level"): level,
        },
    )
    with contextlib.suppress(OSError):
        os.nice(s.backup.nice)  # the app serving users comes first
    started = time.monotonic()
    try:
        result, report, code = run_backup_job(
            s,
            verify=verify,
            apply_retention=not no_prune,
            offsite=not no_offsite,
            wait=s.backup.lock_wait if wait is None else wait,
            show_progress=not json_out,
        )
    except AicaBackupError as exc:
        reporting.finished(
            s,
            "backup",
            ok=False,
            facts={"error": str(exc), "seconds": round(time.monotonic() - started, 1)},
        )
        raise
    facts: dict[str, Any] = {
        "archive": result.name,
        "size": result.size,
        "seconds": round(result.seconds, 1),
        "warnings": len(result.warnings),
    }
    if result.manifest.skipped:
        facts["skipped"] = len(result.manifest.skipped)
    if "verification" in report:
        facts["verified"] = bool(report["verification"]["ok"])
    if report.get("pruned"):
        facts["pruned"] = report["pruned"]
    problems: list[str] = report["problems"]
    if problems:
        facts["error" if code > ExitCode.WARNING else "warning"] = "; ".join(problems)
    report["warnings"] = result.warnings + reporting.finished(
        s,
        "backup",
        ok=code <= ExitCode.WARNING,
        warning=code == ExitCode.WARNING,
        facts=facts,
    )
    if json_out:
        emit_json(report)
        for problem in problems:  # stdout is for the machine; a log of stderr still says why
            warn(problem)
        return int(code)
    out.print(summary_line(result), markup=False)
    for name in report.get("pruned", []):
        out.print(f"Removed by retention: {name}", markup=False)
    for copy in report.get("offsite", []):
        if copy["ok"]:
            out.print(f"Offsite copy verified: {copy['target']} {copy['name']}", markup=False)
        if copy.get("plaintext"):
            from .offsite import replace_command

            warn(
                f"{len(copy['plaintext'])} unencrypted copies on {copy['target']} although "
                f"encryption recipients are set; replace them with: "
                f"{replace_command(copy['target'])}"
            )
    for w in report["warnings"]:
        warn(w)
    for problem in problems:
        warn(problem)
    return int(code)


def register(app: typer.Typer) -> None:
    app.command("backup")(command)
