"""aica-backup: backup and recovery for the AICA-SyS app (SQLite database, uploads, secrets)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aica-backup")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "1.0.0"
