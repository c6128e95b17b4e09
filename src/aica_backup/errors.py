"""One exception root; every class carries the exit code the command line returns for it.

The library raises these and never prints or exits; only ``aica_backup.cli`` turns them
into a one-line message and an exit code. The table is documented in the README.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (documented in the README's exit-code table)."""

    OK = 0
    WARNING = 1  # the job was done, but something needs attention (e.g. an offsite copy failed)
    ERROR = 2  # the job failed; nothing was changed
    USAGE = 3  # bad flag, bad configuration file or environment variable
    LOCKED = 4  # another backup or restore holds the lock
    DATABASE = 5  # database missing, unreadable, not SQLite, or failing its integrity check
    ARCHIVE = 6  # archive corrupt, hostile, truncated, or failing a checksum
    STORAGE = 7  # disk full, folder not writable, offsite storage failing
    ABORTED = 8  # the operator said no, or no terminal to ask and no --yes
    BUSY = 9  # a process holds the live database open
    ROLLED_BACK = 10  # restore failed after it began swapping; the previous state is back
    CRYPTO = 11  # missing or wrong encryption key
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM (kill, systemd, docker stop)


class AicaBackupError(Exception):
    """Root of every error this tool reports to the operator."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(AicaBackupError):
    """Configuration (file, environment, flags) is invalid; ``problems`` lists every one."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        joined = "; ".join(problems)
        super().__init__(f"invalid configuration: {joined}")


class UsageError(AicaBackupError):
    exit_code = ExitCode.USAGE


class LockedError(AicaBackupError):
    exit_code = ExitCode.LOCKED


class DatabaseError(AicaBackupError):
    exit_code = ExitCode.DATABASE


class ArchiveError(AicaBackupError):
    """The archive is damaged or hostile. ``member`` names the offending member if known."""

    exit_code = ExitCode.ARCHIVE

    def __init__(self, message: str, *, member: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.member = member


class StorageError(AicaBackupError):
    exit_code = ExitCode.STORAGE


class AbortedError(AicaBackupError):
    exit_code = ExitCode.ABORTED


class BusyError(AicaBackupError):
    exit_code = ExitCode.BUSY


class RolledBackError(AicaBackupError):
    exit_code = ExitCode.ROLLED_BACK


class CryptoError(AicaBackupError):
    exit_code = ExitCode.CRYPTO
