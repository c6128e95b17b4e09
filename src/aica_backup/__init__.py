"""aica-backup: backup and recovery for the AICA-SyS app (SQLite database, uploads, secrets)."""

# The one place the version lives (pyproject.toml reads it): importlib.metadata cost 0.1 s
# at the start of every command.
__version__ = "1.0.0"
