"""``aica-backup offsite list|push|pull``: the copies on the offsite targets.

This module is also where configuration meets :mod:`aica_backup.offsite`: ``backup`` calls
:func:`push_after_backup`, ``restore --from`` calls :func:`fetch_for_restore`. A TARGET argument
is a number (``1`` is the first of ``[offsite] targets``), a configured location, or any other
location string (``/mnt/usb/aica``, ``s3://bucket/prefix``, ``rclone:remote:path``).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .. import offsite
from ..backup import BackupResult
from ..catalog import Catalog, sha256_file
from ..config import Settings
from ..errors import AicaBackupError, ExitCode, StorageError, UsageError
from ..fsutil import ensure_private_dir
from ..lock import exclusive_lock
from ..offsite import LocalArchive, Target, TargetReport
from ..storage import RetryingStorage, Storage, open_storage
from . import reporting
from .common import JSON_OPTION, emit_json, human_size, note, out, settings, warn

TARGET_ARG = typer.Argument(
    help="Target number (1 = first configured), configured location, or any location. "
    "Default: every configured target."
)

# -- from settings to library objects -----------------------------------------------------------


def resolve_targets(s: Settings, target: str | None) -> list[str]:
    """The locations a TARGET argument names (None: every configured target)."""
    configured = s.offsite.targets
    if target is None:
        if not configured:
            raise UsageError(
                "no offsite targets configured",
                hint='set [offsite] targets = ["s3://bucket/prefix"] in aica-backup.toml '
                "or AICA_BACKUP_OFFSITE_TARGETS, or name a target",
            )
        return list(configured)
    if target.isdigit():
        index = int(target)
        if not 1 <= index <= len(configured):
            raise UsageError(f"no offsite target #{index} ({len(configured)} configured)")
        return [configured[index - 1]]
    return [target]


def open_target(s: Settings, location: str) -> Storage:
    """The storage of one target, with the configured retries around it."""

    def on_retry(where: str, attempt: int, exc: StorageError, pause: float) -> None:
        warn(f"{exc.message} (attempt {attempt}; retrying in {pause:.0f} s)")

    base = open_storage(location, base=s.root)
    return RetryingStorage(base, retries=s.offsite.retries, on_retry=on_retry)


def configured_targets(s: Settings) -> list[Target]:
    """Every configured target, opened (a malformed location raises UsageError)."""
    return [Target(loc, open_target(s, loc)) for loc in s.offsite.targets]


def seals_copies(s: Settings) -> bool:
    """True when copies must leave encrypted: whenever recipients are set, whatever
    ``encryption.encrypt`` says (it only decides whether local archives are encrypted too)."""
    return bool(s.encryption.recipients)


def offsite_recipients(s: Settings) -> list[Any]:
    """The recipients every copy is encrypted to on its way out ([] without encryption)."""
    if not seals_copies(s):
        return []
    from ..crypto import parse_recipients

    return parse_recipients(s.encryption.recipients)


REPLACE_COMMAND = "aica-backup offsite push --replace-plaintext"


def replace_command(label: str | None = None) -> str:
    """The command that replaces the plaintext copies on one target (or on every target)."""
    return f"{REPLACE_COMMAND} {shlex.quote(label)}" if label else REPLACE_COMMAND


def local_archives(s: Settings) -> tuple[list[LocalArchive], frozenset[str]]:
    """The local backups to keep offsite (newest first; never ones that failed
    verification) and the names of the pinned ones."""
    entries = Catalog(s.layout().backups_dir).entries(("backup",))
    archives = [
        LocalArchive(e.name, e.path, e.sha256 or sha256_file(e.path), e.size)
        for e in entries
        if not e.failed
    ]
    return archives, frozenset(e.name for e in entries if e.pinned)


def run_sync(
    s: Settings,
    locations: list[str],
    *,
    prune: bool = True,
    replace: bool = False,
    verbose: bool = False,
) -> list[TargetReport]:
    """Push what each target lacks, verify, apply retention. Never raises for one target."""
    layout = s.layout()
    work_dir = ensure_private_dir(layout.meta_dir)
    recipients = offsite_recipients(s)
    archives, pinned = local_archives(s)
    opened: list[Target] = []
    failed: dict[str, TargetReport] = {}
    for loc in locations:
        try:
            opened.append(Target(loc, open_target(s, loc)))
        except AicaBackupError as exc:
            failed[loc] = TargetReport(loc)
            failed[loc].fail(exc)
    policy = (s.offsite.retention or s.retention).policy() if prune else None
    reports = offsite.sync(
        opened,
        archives,
        work_dir=work_dir,
        recipients=recipients,
        parallel=s.offsite.parallel,
        policy=policy,
        pinned=pinned,
        replace=replace,
        log=note if verbose else None,
    )
    in_order = iter(reports)  # sync answers in the order of ``opened``
    return [failed[loc] if loc in failed else next(in_order) for loc in locations]


def report_dict(r: TargetReport, name: str | None = None) -> dict[str, Any]:
    return {
        "target": r.label,
        "ok": r.ok,
        "error": r.error,
        "name": name,
        "seconds": round(r.seconds, 2),
        "pushed": r.pushed,
        "pruned": r.pruned,
        "replaced": r.replaced,
        "plaintext": r.plaintext,
    }


def push_after_backup(s: Settings, result: BackupResult) -> list[dict[str, Any]]:
    """Copy the new archive (and any older one a target lacks) to every target.

    One dict per target; a failing target is reported with ``ok: False`` and never raises,
    because the local backup it follows has already succeeded.
    """
    started = time.monotonic()
    name = offsite.target_name(result.name, sealed=seals_copies(s))
    try:
        reports = run_sync(s, list(s.offsite.targets))
    except Exception as exc:  # e.g. bad recipients: every target failed, the backup did not
        message = (
            exc.message if isinstance(exc, AicaBackupError) else f"{type(exc).__name__}: {exc}"
        )
        seconds = round(time.monotonic() - started, 2)
        return [
            {
                "target": loc,
                "ok": False,
                "error": offsite.located(message, "", loc),
                "name": name,
                "seconds": seconds,
                "pushed": [],
                "pruned": [],
                "replaced": [],
                "plaintext": [],
            }
            for loc in s.offsite.targets
        ]
    return [report_dict(r, name) for r in reports]


def fetch_for_restore(
    s: Settings,
    target: str | None,
    archive: str | None,
    *,
    identity: Path | None = None,
    need_key: bool = False,
    decrypt: bool = False,
) -> Path:
    """Download ``archive`` (default: the newest backup) from ``target`` (default: the first
    configured) into the local backups folder, verified; return its path.

    For an encrypted copy the identity (``identity``, else the configured one) is loaded
    *before* the download when it will be needed (``need_key``: a restore; ``decrypt``: the
    plaintext is wanted) or was given: a missing or wrong key file costs no transfer.
    """
    location = resolve_targets(s, target)[0]
    storage = open_target(s, location)
    wanted = Path(archive).name if archive else None
    copy = offsite.find_copy(offsite.list_copies(storage), wanted, location)
    identities: list[Any] | None = None
    if offsite.is_encrypted(copy.name) and (need_key or decrypt or identity is not None):
        from ..crypto import load_identities

        identities = load_identities(identity or s.identity_path)
    layout = s.layout()
    ensure_private_dir(layout.backups_dir)
    # Under the lock: a backup starting meanwhile would clean up our temp file as a leftover.
    with exclusive_lock(layout.meta_dir, "offsite pull", s.backup.lock_wait):
        return offsite.fetch(
            storage, copy.name, layout.backups_dir, identities if decrypt else None
        )


# -- commands -------------------------------------------------------------------------------------

app = typer.Typer(
    name="offsite",
    help="Offsite copies: list what each target holds, push what it lacks, pull one back.",
    no_args_is_help=True,
)


@app.command("list")
def list_command(
    ctx: typer.Context,
    target: Annotated[str | None, TARGET_ARG] = None,
    json_out: bool = JSON_OPTION,
) -> int:
    """List the archives on each target: complete or incomplete, and what is missing.

    With encryption recipients set, copies stored unencrypted are listed as plaintext, with
    the command that replaces them.
    """
    s = settings(ctx)
    locations = resolve_targets(s, target)
    archives, _ = local_archives(s)
    sealed = seals_copies(s)
    storages = [open_target(s, loc) for loc in locations]  # a malformed location: exit 3
    results: list[dict[str, Any]] = []
    for index, (loc, storage) in enumerate(zip(locations, storages, strict=True), 1):
        entry: dict[str, Any] = {
            "index": index,
            "target": loc,
            "ok": True,
            "error": None,
            "copies": [],
            "missing": [],
            "plaintext": [],
        }
        try:
            copies = offsite.list_copies(storage)
        except AicaBackupError as exc:
            entry.update(ok=False, error=offsite.located(exc.message, storage.location, loc))
        else:
            entry["copies"] = [c.to_dict() for c in copies]
            entry["missing"] = [a.name for a in offsite.missing(copies, archives, sealed=sealed)]
            if sealed:
                entry["plaintext"] = [c.name for c in offsite.plaintext(copies)]
        results.append(entry)
    code = ExitCode.OK if all(r["ok"] for r in results) else ExitCode.STORAGE
    if json_out:
        emit_json(results)
        return int(code)
    for r in results:
        _print_target(r)
    return int(code)


def _print_target(r: dict[str, Any]) -> None:
    out.print(f"#{r['index']} {r['target']}", markup=False, style="bold")
    if not r["ok"]:
        warn(f"cannot list: {r['error']}")
        return
    copies = r["copies"]
    if copies:
        table = Table(box=None, pad_edge=False)
        for col in ("name", "local time", "size", "state"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for c in copies:
            state = "complete" if c["complete"] else f"INCOMPLETE: {c['problem']}"
            if c["name"] in r["plaintext"]:
                state += " (PLAINTEXT)"
            when = c["time"][:19].replace("T", " ")
            table.add_row(c["name"], when, human_size(c["size"]), state)
        # Not on a terminal (a pipe, a log): full names, never cut to a guessed width.
        wide = Console(width=1 << 16, highlight=False, soft_wrap=True)
        (out if out.is_terminal else wide).print(table)
    else:
        out.print("  (no archives)")
    if r["missing"]:
        out.print(
            f"  missing here: {', '.join(r['missing'])} (copy them with: aica-backup offsite push)",
            markup=False,
        )
    if r["plaintext"]:
        warn(
            f"{len(r['plaintext'])} unencrypted copies on {r['target']} although encryption "
            f"recipients are set; replace them with: {replace_command(r['target'])}"
        )


@app.command("push")
def push_command(
    ctx: typer.Context,
    target: Annotated[str | None, TARGET_ARG] = None,
    json_out: bool = JSON_OPTION,
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Do not apply retention on the targets.")
    ] = False,
    wait: Annotated[
        float | None,
        typer.Option(min=0, help="Seconds to wait for a running backup or restore."),
    ] = None,
    replace_plaintext: Annotated[
        bool,
        typer.Option(
            "--replace-plaintext",
            help="Replace the unencrypted copies on the targets (made before encryption "
            "recipients were set) with verified encrypted ones, then delete them.",
        ),
    ] = False,
) -> int:
    r"""Copy to each target the backups it lacks or holds incomplete, verified.

    Every copy is read back and its SHA-256 checked before it counts. With encryption
    recipients set, every copy leaves encrypted (NAME.age), whatever encryption.encrypt says.

    Then retention runs on each target: \[offsite.retention] if set, else \[retention].
    """
    s = settings(ctx)
    locations = resolve_targets(s, target)
    if replace_plaintext and not seals_copies(s):
        raise UsageError(
            "--replace-plaintext needs encryption recipients: there is nothing to encrypt to",
            hint="set [encryption] recipients in aica-backup.toml (aica-backup keygen makes a key)",
        )
    started = time.monotonic()
    with exclusive_lock(
        s.layout().meta_dir, "offsite push", s.backup.lock_wait if wait is None else wait
    ):
        reports = run_sync(
            s, locations, prune=not no_prune, replace=replace_plaintext, verbose=not json_out
        )
    ok = all(r.ok for r in reports)
    facts: dict[str, Any] = {
        "targets": len(reports),
        "pushed": sum(len(r.pushed) for r in reports),
        "replaced": sum(len(r.replaced) for r in reports),
        "seconds": round(time.monotonic() - started, 1),
    }
    if not ok:
        facts["error"] = "; ".join(str(r.error) for r in reports if not r.ok)
    warnings = reporting.finished(s, "offsite push", ok=ok, facts=facts)
    warnings += plaintext_warnings(reports)
    failed = [e for r in reports for e in r.errors]
    code = ExitCode.OK if ok else (failed[0].exit_code if failed else ExitCode.STORAGE)
    if json_out:
        emit_json({"ok": ok, "targets": [report_dict(r) for r in reports], "warnings": warnings})
        for r in reports:  # stdout is for the machine; the log reader still sees each failure
            if not r.ok:
                warn(str(r.error))
        return int(code)
    for r in reports:
        if r.ok:
            pushed = ", ".join(r.pushed) if r.pushed else "nothing to copy"
            out.print(f"{r.label}: {pushed}", markup=False)
            for name in r.replaced:
                out.print(f"{r.label}: plaintext copy replaced: {name}", markup=False)
            for name in r.pruned:
                out.print(f"{r.label}: removed by retention: {name}", markup=False)
        else:
            warn(str(r.error))
    for w in warnings:
        warn(w)
    return int(code)


def plaintext_warnings(reports: list[TargetReport]) -> list[str]:
    """One warning per target still holding unencrypted copies although recipients are set."""
    return [
        f"{len(r.plaintext)} unencrypted copies on {r.label} although encryption recipients "
        f"are set; replace them with: {replace_command(r.label)}"
        for r in reports
        if r.plaintext
    ]


@app.command("pull")
def pull_command(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(help="Target number, configured location, or location (default: #1)."),
    ] = None,
    name: Annotated[
        str | None, typer.Argument(help="Archive name (default: the newest complete backup).")
    ] = None,
    json_out: bool = JSON_OPTION,
    identity: Annotated[
        Path | None,
        typer.Option(
            help="age identity file: checked before the download, named in the restore hint.",
            dir_okay=False,
        ),
    ] = None,
    decrypt: Annotated[
        bool,
        typer.Option(
            "--decrypt",
            help="Decrypt an encrypted copy on arrival: keep only the plaintext archive.",
        ),
    ] = False,
) -> None:
    """Download an archive into the local backups folder, verified.

    Its SHA-256 is checked before it appears there: a corrupt copy leaves nothing behind.
    An encrypted copy stays encrypted unless --decrypt is given (it needs the identity: from
    --identity, AICA_BACKUP_IDENTITY or encryption.identity, checked before the download).
    """
    s = settings(ctx)
    path = fetch_for_restore(s, target, name, identity=identity, decrypt=decrypt)
    if json_out:
        emit_json({"ok": True, "path": str(path), "name": path.name, "size": path.stat().st_size})
        return
    from .archives import identity_option

    out.print(f"Downloaded and verified: {path}", markup=False)
    hint = f"aica-backup restore {shlex.quote(path.name)}{identity_option(s, path.name, identity)}"
    out.print(f"Restore it with: {hint}", markup=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="offsite")
