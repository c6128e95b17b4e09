"""The backup guide's cron lines, and installing them into a crontab without touching the rest.

The lines are the guide's, with the app's real root: a daily run at 03:00 and a weekly one on
Sunday at 02:00, both appending to a log file. Installing puts them between two marker lines,
``# BEGIN aica-backup`` and ``# END aica-backup``, so running it again replaces that block and
nothing else: the user's own jobs are never dropped or reordered.

cron opens the log for the redirection before ``backup.sh`` starts, so a log the user cannot
write means the backup never runs, silently. :func:`choose_log` therefore only ever returns a
log the user can append to: the guide's ``/var/log/aica-sys-backup.log`` where that works
(root), else ``cron.log`` in the app's own bookkeeping folder (``backups/.aica-backup/``).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import AicaBackupError, StorageError, UsageError
from .fsutil import check_writable_dir, ensure_private_dir

DEFAULT_LOG_FILE = Path("/var/log/aica-sys-backup.log")
FALLBACK_LOG_NAME = "cron.log"  # in the app's bookkeeping folder (backups/.aica-backup/)
BEGIN_MARKER = "# BEGIN aica-backup"
END_MARKER = "# END aica-backup"
MANAGED_NOTE = "# Written by `aica-backup schedule cron --install`; edits here are replaced."


@dataclass(frozen=True)
class CronJob:
    """One crontab entry of the guide: when, and a comment saying so."""

    when: str
    comment: str


# The guide's schedule (cron fields are in the server's local time).
GUIDE_JOBS = (
    CronJob("0 3 * * *", "毎日午前3時にバックアップ"),
    CronJob("0 2 * * 0", "毎週日曜日午前2時にバックアップ"),
)


@dataclass(frozen=True)
class LogChoice:
    """The log the cron jobs append to, and the guide's log when it could not be used."""

    path: Path
    instead_of: Path | None = None


def can_append(path: Path) -> bool:
    """Whether this user can open ``path`` for appending, as the shell's ``>>`` will.

    A real open (no write) of an existing file, a real probe file in the folder of a new one:
    permission bits alone miss read-only mounts, ACLs and root-owned files.
    """
    if path.exists():
        if not path.is_file():
            return False
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY))
        except OSError:
            return False
        return True
    if not path.parent.is_dir():
        return False
    try:
        check_writable_dir(path.parent)
    except StorageError:
        return False
    return True


def choose_log(requested: Path | None, meta_dir: Path) -> LogChoice:
    """The log for the cron lines: ``requested`` if given (and writable), else the guide's.

    A log this user cannot write is never returned: cron would fail the redirection and the
    backup would not start. An explicit ``requested`` that cannot be written is refused (the
    operator asked for that file); without one, the guide's ``/var/log`` file is used where this
    user may write it, else ``META_DIR/cron.log`` (its folder is made by :func:`prepare_log`).
    """
    fallback = meta_dir / FALLBACK_LOG_NAME
    if requested is not None:
        if not can_append(requested):
            instead = f"pass --log with a file you can write (e.g. --log {fallback})"
            raise UsageError(
                f"you cannot write {requested}: cron would fail to open it and the backup "
                "would never start",
                hint=f"create its folder (mkdir -p {requested.parent}), or {instead}"
                if not requested.parent.is_dir()
                else f"{instead}, or as root make it this user's: touch {requested} && "
                f"chown {_user_name()} {requested}",
            )
        return LogChoice(requested)
    if can_append(DEFAULT_LOG_FILE):
        return LogChoice(DEFAULT_LOG_FILE)
    return LogChoice(fallback, instead_of=DEFAULT_LOG_FILE)


def prepare_log(choice: LogChoice, meta_dir: Path) -> None:
    """Make the fallback log's folder (mode 0700, as every backup does), so the line can run."""
    if choice.path.parent == meta_dir:
        ensure_private_dir(meta_dir.parent)
        ensure_private_dir(meta_dir)
    if not can_append(choice.path):
        raise UsageError(
            f"you cannot write {choice.path}: cron would fail to open it and the backup "
            "would never start",
            hint="pass --log with a file you can write",
        )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _cron_word(value: Path) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise UsageError(f"a path in a crontab line cannot contain a line break: {text!r}")
    if not value.is_absolute():
        # cron starts jobs in the user's home folder, so a relative path would point elsewhere.
        raise UsageError(f"cron needs an absolute path, not {text!r}")
    # cron turns an unescaped % into a line break before the shell sees the command.
    return shlex.quote(text).replace("%", "\\%")


def cron_command(root: Path, log_file: Path = DEFAULT_LOG_FILE, tool: Path | None = None) -> str:
    """``cd ROOT && [AICA_BACKUP_BIN=TOOL ]./scripts/backup.sh >> LOG 2>&1``, quoted for cron
    and the shell. ``tool``: the aica-backup to run, which cron's ``PATH=/usr/bin:/bin`` would
    not find where pipx, uv or a venv put it."""
    run = "./scripts/backup.sh"
    if tool is not None:
        run = f"AICA_BACKUP_BIN={_cron_word(tool)} {run}"
    return f"cd {_cron_word(root)} && {run} >> {_cron_word(log_file)} 2>&1"


def cron_lines(
    root: Path, log_file: Path = DEFAULT_LOG_FILE, tool: Path | None = None
) -> list[str]:
    """The guide's two crontab lines for the app at ``root`` (an absolute path)."""
    command = cron_command(root, log_file, tool)
    return [f"{job.when} {command}" for job in GUIDE_JOBS]


def running_tool() -> Path | None:
    """The absolute path of the ``aica-backup`` executable running now, if there is one: the
    script this process was started as, else the one beside its Python (a venv's, pipx's).
    Not resolved through symlinks: pipx's ``~/.local/bin/aica-backup`` survives upgrades."""
    candidates = []
    if sys.argv and Path(sys.argv[0]).name == "aica-backup":
        candidates.append(Path(sys.argv[0]))
    candidates.append(Path(sys.executable).parent / "aica-backup")
    for candidate in candidates:
        path = Path(os.path.abspath(candidate))
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def cron_block(lines: list[str]) -> list[str]:
    """``lines`` between the markers, as installed."""
    return [BEGIN_MARKER, MANAGED_NOTE, *lines, END_MARKER]


def _split(text: str) -> tuple[list[str], int | None]:
    """(every line outside aica-backup blocks, index where the first block was or None)."""
    kept: list[str] = []
    position: int | None = None
    inside = False
    # Split on "\n" only: crontab lines end there (str.splitlines would also break at \r or
    # U+2028 inside a user's line and so rewrite it).
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN_MARKER:
            if inside:
                raise UsageError(
                    f"crontab line {number}: '{BEGIN_MARKER}' inside another block",
                    hint="fix the crontab by hand (crontab -e)",
                )
            inside = True
            position = len(kept) if position is None else position
        elif marker == END_MARKER:
            if not inside:
                raise UsageError(
                    f"crontab line {number}: '{END_MARKER}' without a begin marker",
                    hint="fix the crontab by hand (crontab -e)",
                )
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        # Guessing where the block ends could delete the user's own jobs: refuse instead.
        raise UsageError(
            f"the crontab has '{BEGIN_MARKER}' but no '{END_MARKER}'",
            hint="fix the crontab by hand (crontab -e)",
        )
    return kept, position


def merge_block(crontab: str, lines: list[str]) -> str:
    """``crontab`` with the aica-backup block set to ``lines`` (in place, else appended).

    Idempotent: merging the same lines twice gives the same text. Every other line is kept.
    """
    kept, position = _split(crontab)
    block = cron_block(lines)
    if position is None:
        while kept and not kept[-1].strip():
            kept.pop()  # no growing run of blank lines at the end
        out = [*kept, *([""] if kept else []), *block]
    else:
        out = kept[:position] + block + kept[position:]
    return "\n".join(out) + "\n"


def remove_block(crontab: str) -> str:
    """``crontab`` without the aica-backup block; every other line is kept."""
    kept, position = _split(crontab)
    if position is None:
        return crontab
    while kept and not kept[-1].strip():
        kept.pop()  # the blank line merge_block put before the block
    return "\n".join(kept) + "\n" if kept else ""


# --------------------------------------------------------------------------------------------
# The current user's crontab, through the real ``crontab`` binary.


def _crontab_binary() -> str:
    binary = shutil.which("crontab")
    if binary is None:
        raise AicaBackupError(
            "the crontab command is not installed",
            hint="install cron (Debian/Ubuntu: apt-get install cron), or use the systemd timer "
            "in deploy/systemd/",
        )
    return binary


def read_crontab() -> str:
    """The current user's crontab ("" when there is none yet)."""
    proc = subprocess.run([_crontab_binary(), "-l"], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return proc.stdout
    if "no crontab" in proc.stderr.lower():
        return ""
    raise AicaBackupError(f"crontab -l failed: {proc.stderr.strip() or proc.returncode}")


def write_crontab(text: str) -> None:
    """Replace the current user's crontab with ``text`` (cron checks the syntax first)."""
    proc = subprocess.run(
        [_crontab_binary(), "-"], input=text, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AicaBackupError(f"crontab - failed: {proc.stderr.strip() or proc.returncode}")


def install(lines: list[str]) -> bool:
    """Put ``lines`` into the user's crontab between the markers; return False if unchanged."""
    current = read_crontab()
    updated = merge_block(current, lines)
    if updated == current:
        return False
    write_crontab(updated)
    return True


def uninstall() -> bool:
    """Remove the aica-backup block from the user's crontab; return False if there was none."""
    current = read_crontab()
    updated = remove_block(current)
    if updated == current:
        return False
    write_crontab(updated)
    return True
