"""Verify an archive: the guide's test restore, automated.

The whole archive is read (so compression and encryption trailers are checked too), every
member's SHA-256 is recomputed and compared with the manifest, the member list is compared
both ways, and the database is unpacked to a scratch folder for ``PRAGMA integrity_check``.
Nothing but that scratch database is written, and it is removed once checked, while the
rest of the archive is still being read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import AicaBackupError, ArchiveError
from .fsutil import TMP_PREFIX, discard_tree, ensure_private_dir
from .layout import Component
from .manifest import check_app_name
from .snapshot import CheckMode
from .staging import expected_bytes, stage


def verify_archive(
    archive: Path,
    scratch_parent: Path,
    *,
    identities: Sequence[Any] | None = None,
    check: CheckMode = "integrity",
    app_name: str | None = None,
) -> dict[str, Any]:
    """Check one archive fully; return a JSON-able report (``ok`` plus ``problems``).

    Damage is reported, not raised; only errors outside the archive (a missing key, an
    unreadable file, a full scratch disk, Ctrl-C) raise, and then there is no report: a
    verification that did not finish says nothing about the archive. Every report returned
    is ``finished``. ``app_name``: the app it should have been made for; another app's
    archive is sound (``ok``), but restore would refuse it here: a warning says so.
    """
    started = time.perf_counter()
    ensure_private_dir(scratch_parent)
    scratch = scratch_parent / f"{TMP_PREFIX}verify-{os.getpid()}"
    discard_tree(scratch)
    report: dict[str, Any] = {
        "archive": archive.name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": f"sha256 of every member + {'integrity_check' if check == 'integrity' else check}",
        "finished": True,
    }
    try:
        staged = stage(
            archive,
            scratch,
            identities=identities,
            check=check,
            write=lambda _entry, is_first: is_first,
            drop_database=True,
            purpose="check",
            expect_bytes=expected_bytes(archive, database_only=True),
        )
    except AicaBackupError as exc:
        if exc.exit_code.name != "ARCHIVE":
            raise
        member = getattr(exc, "member", None)
        report.update(ok=False, problems=[f"{member}: {exc}" if member else str(exc)])
    else:
        problems = [f"{m}: {why}" for m, why in staged.problems]
        if staged.db_integrity not in (None, "ok", "skipped"):
            db = staged.manifest.components[Component.DATABASE].path
            problems.append(f"{db}: database failed its integrity check: {staged.db_integrity}")
        summary = staged.manifest.summary()
        db_info = staged.manifest.components.get(Component.DATABASE)
        if not problems and db_info is not None and staged.db_check == "integrity_check":
            # what restore needs to skip repeating this full check on the very same bytes
            report["database_sha256"] = staged.scan.files[db_info.path][0]
        if app_name is not None:
            try:
                check_app_name(staged.manifest, app_name)
            except ArchiveError as exc:
                report["warnings"] = [str(exc)]
        report.update(
            ok=not problems,
            problems=problems,
            members=len(staged.manifest.members),
            bytes=staged.scan.total_bytes,
            database=staged.db_integrity,
            created_at=summary["created_at"],
            skipped=len(staged.manifest.skipped),  # intact, but incomplete since its backup
        )
    finally:
        discard_tree(scratch)
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
