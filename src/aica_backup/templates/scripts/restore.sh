#!/usr/bin/env bash
# リストアスクリプト — restore the newest backup, or the one given:
#   ./scripts/restore.sh
#   ./scripts/restore.sh backups/backup_20241010_030000.tar.gz
# Asks for confirmation on a terminal; extra arguments go to `aica-backup restore` (e.g. --yes).
set -euo pipefail
# shellcheck source=_aica.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_aica.sh"
exec "${AICA[@]}" --root "$AICA_ROOT" restore "$@"
