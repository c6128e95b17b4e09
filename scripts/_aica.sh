#!/usr/bin/env bash
# shellcheck disable=SC2034  # AICA is read by the scripts that source this file
# Shared by backup.sh and restore.sh (sourced, not run): find the app root and the aica-backup
# command. The app root is the folder holding scripts/ (the guide runs ./scripts/backup.sh from
# there). The command, first found wins:
#   1. $AICA_BACKUP_BIN, when set (the path of an aica-backup executable);
#   2. the aica-backup that wrote this file (`aica-backup init` records its path just below), so
#      cron's and systemd's bare PATH still find a tool installed with pipx, uv or in a venv;
#   3. ROOT/.venv/bin/aica-backup, a venv beside the app;
#   4. aica-backup on PATH;
#   5. python3 -m aica_backup, where python3 can import it.
# Otherwise: how to install it, and exit 127 (the shell's "command not found").
AICA_INIT_BIN=''
AICA_ROOT="${AICA_BACKUP_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
if [ -n "${AICA_BACKUP_BIN:-}" ]; then
  if [ ! -x "$AICA_BACKUP_BIN" ] || [ -d "$AICA_BACKUP_BIN" ]; then
    echo "aica-backup: error: AICA_BACKUP_BIN=$AICA_BACKUP_BIN is not an executable file" >&2
    exit 127
  fi
  AICA=("$AICA_BACKUP_BIN")
elif [ -n "$AICA_INIT_BIN" ] && [ -x "$AICA_INIT_BIN" ] && [ ! -d "$AICA_INIT_BIN" ]; then
  AICA=("$AICA_INIT_BIN")
elif [ -x "$AICA_ROOT/.venv/bin/aica-backup" ]; then
  AICA=("$AICA_ROOT/.venv/bin/aica-backup")
elif command -v aica-backup >/dev/null 2>&1; then
  AICA=(aica-backup)
elif command -v python3 >/dev/null 2>&1 && python3 -c 'import aica_backup' >/dev/null 2>&1; then
  AICA=(python3 -m aica_backup)
else
  {
    echo "aica-backup: error: aica-backup is not installed (looked for \$AICA_BACKUP_BIN," \
      "${AICA_INIT_BIN:+$AICA_INIT_BIN (recorded by init), }$AICA_ROOT/.venv/bin/aica-backup," \
      "aica-backup on PATH and python3's aica_backup)"
    echo "  install it, then record it here from the app root:"
    echo "    pipx install aica-backup && aica-backup init --force"
    echo "  or in a venv beside the app:"
    echo "    python3 -m venv .venv && .venv/bin/pip install '/path/to/aica-backup[all]'"
    echo "  or set AICA_BACKUP_BIN to the path of an installed aica-backup"
  } >&2
  exit 127
fi
