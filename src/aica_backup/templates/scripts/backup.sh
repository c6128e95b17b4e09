#!/usr/bin/env bash
# バックアップスクリプト — back up the database, uploads and .env.production into
# backups/backup_YYYYMMDD_HHMMSS.tar.gz. Extra arguments go to `aica-backup backup`
# (e.g. --verify, --json). Prints the archive path; exits with aica-backup's exit code.
set -euo pipefail
# shellcheck source=_aica.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_aica.sh"
exec "${AICA[@]}" --root "$AICA_ROOT" backup "$@"
