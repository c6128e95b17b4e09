"""A backup of the live app: the real backend serves a stream of writes while it runs.

This is the reason the tool snapshots through SQLite's backup API instead of copying the file:
the writers must not notice, and the archive must hold one consistent point in time.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.backend import WriteLoad, install_backend, running_backend, seed_notes

# About 125 MB of notes: enough that the snapshot, check and compression take a moment.
SEED_ROWS = 250_000
SEED_BODY_BYTES = 400
MAX_WRITE_SECONDS = 1.0


@pytest.mark.slow
@pytest.mark.integration
def test_backup_while_the_backend_takes_writes(tmp_path: Path) -> None:
    app = install_backend(tmp_path / "app")
    seed_notes(app.db, SEED_ROWS, body_bytes=SEED_BODY_BYTES)

    with (
        running_backend(app.root) as server,
        WriteLoad(server.base_url, tmp_path / "load.json", count=20_000, seconds=40) as load,
    ):
        load.wait_started()
        time.sleep(0.5)  # a steady stream before the backup begins
        backup_started = time.time()
        proc = app.run("backup", "--json", check=False)
        backup_finished = time.time()
        time.sleep(0.5)  # and after it ends
        report = load.finish()
        # The backend is still healthy once the backup is done.
        code, health = server.health()

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["database"]["integrity"] == "ok"
    assert result["database"]["journal_mode"] == "wal"
    assert (code, health["database"]["ok"]) == (200, True)

    # The writers did not notice: nothing failed, nothing waited a second.
    assert report.failures == []
    assert report.max_latency < MAX_WRITE_SECONDS, f"slowest write {report.max_latency:.3f} s"
    during = [r for r in report.requests if backup_started <= r.started <= backup_finished]
    assert len(during) >= 20, f"only {len(during)} writes overlapped the backup"

    # Plain tar extracts it (the guide's test restore), and the database passes its check.
    out = tmp_path / "test_restore"
    out.mkdir()
    subprocess.run(["tar", "-xzf", result["path"], "-C", str(out)], check=True, timeout=120)
    with tarfile.open(result["path"]) as tar:
        names = tar.getnames()
    assert not any(n.endswith(("-wal", "-shm")) for n in names)
    db = out / "backend" / "aica_sys.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute(
            "SELECT count(*) FROM notes WHERE id <= ?", (SEED_ROWS,)
        ).fetchone() == (SEED_ROWS,)
        archived = {r[0] for r in conn.execute("SELECT id FROM notes WHERE id > ?", (SEED_ROWS,))}
    finally:
        conn.close()

    committed = sorted(note_id for note_id, _ in report.committed)
    before = {note_id for note_id, acked in report.committed if acked < backup_started}
    assert before, "no write committed before the backup started"
    missing = before - archived
    assert not missing, f"{len(missing)} rows committed before the backup are not in it"
    # One point in time: the archived writes are exactly the first N committed, no gaps, and
    # nothing the load did not commit.
    assert archived == set(committed[: len(archived)])
