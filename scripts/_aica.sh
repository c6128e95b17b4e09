# Shared by backup.sh and restore.sh: find the app root and the aica-backup command.
# The app root is the folder holding scripts/ (the guide runs ./scripts/backup.sh from there).
AICA_ROOT="${AICA_BACKUP_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
if [ -x "$AICA_ROOT/.venv/bin/aica-backup" ]; then
  AICA=("$AICA_ROOT/.venv/bin/aica-backup")
elif command -v aica-backup >/dev/null 2>&1; then
  AICA=(aica-backup)
else
  AICA=(python3 -m aica_backup)
fi
