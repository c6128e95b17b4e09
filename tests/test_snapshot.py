"""The database check: the parallel integrity_check finds what the single pragma finds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aica_backup.snapshot import check_file, integrity_of


def _database(path: Path, *, broken_index: bool) -> Path:
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE t(a, b NOT NULL); CREATE INDEX i ON t(a);"
        'CREATE TABLE "odd ""name"" ; --"(x); INSERT INTO "odd ""name"" ; --" VALUES (1);'
    )
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, -i) for i in range(500)])
    db.commit()
    if broken_index:  # the index no longer matches its table: only integrity_check sees it
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_schema SET sql = 'CREATE INDEX i ON t(b)' WHERE name = 'i'")
        db.commit()
    db.close()
    return path


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_clean_database_passes(tmp_path: Path, workers: int) -> None:
    db = _database(tmp_path / "ok.db", broken_index=False)
    assert check_file(db, "integrity", workers)[:2] == ("ok", "integrity_check")


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_index_out_of_step_with_its_table_is_found(tmp_path: Path, workers: int) -> None:
    db = _database(tmp_path / "bad.db", broken_index=True)
    assert check_file(db, "quick")[0] == "ok"  # quick_check cannot see this
    result = check_file(db, "integrity", workers)[0]
    assert "missing from index i" in result


def test_damaged_page_is_found_by_every_worker_count(tmp_path: Path) -> None:
    db = _database(tmp_path / "torn.db", broken_index=False)
    data = bytearray(db.read_bytes())
    page = 4096 if len(data) > 8192 else 1024
    data[page + 8 : page + 64] = b"\xff" * 56  # garbage over the second page's cells
    db.write_bytes(bytes(data))
    results = {w: check_file(db, "integrity", w)[0] for w in (1, 2)}
    assert all(r != "ok" for r in results.values()), results


def test_a_schema_that_is_not_utf8_is_damage_not_a_crash(tmp_path: Path) -> None:
    """Found by the archive fuzzer: a database whose sqlite_schema holds a table name that is
    not UTF-8 made the check raise UnicodeDecodeError (an internal error, exit 2) instead of
    failing the database (exit 6 for an archive, 5 for a live one)."""
    db = tmp_path / "bad.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_schema SET name = CAST(X'74CE' AS TEXT) WHERE name = 't'")
    conn.commit()
    conn.close()
    for mode in ("integrity", "quick"):
        result = integrity_of(db, mode)  # type: ignore[arg-type]
        assert result != "ok", (mode, result)
