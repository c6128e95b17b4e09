"""Restore as one transaction: round trip, kill -9 at every step, refusal cases."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aica_backup import fsutil
from aica_backup.errors import ExitCode
from aica_backup.journal import CRASH_ENV
from tests.support.app import SECRET, App, make_app
from tests.support.fs import permissions_enforced

CRASH_POINTS = [
    # Before the journal exists: staging, the safety backup's snapshot (the live database
    # open), the journal's own temp file.
    "staged",
    "snapshot-open",
    "safety-made",
    "journal-prepared-writing",
    "journal-saved",
    "journal-swapping-writing",
    *[f"swap-{i}-{what}" for i in range(6) for what in ("parked", "placed")],
    "swapped",
    "checked",
    "journal-committed-writing",  # not renamed into place yet: still "swapping", rolled back
    "committed",
]


def logical(db: Path) -> list[tuple[object, ...]]:
    """The database's logical content (rows of every table), independent of file layout."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *row) for t in sorted(tables) for row in conn.execute(f"SELECT * FROM {t}")]
    finally:
        conn.close()


def fingerprint(app: App) -> dict[str, object]:
    """Everything a restore must bring back: rows, uploads bytes, config bytes and mode."""
    env = app.env
    return {
        "db": logical(app.db) if app.db.exists() else None,
        "uploads": {k: hashlib.sha256(v).hexdigest() for k, v in app.uploads_tree().items()},
        "dirs": sorted(
            str(p.relative_to(app.uploads)) for p in app.uploads.rglob("*") if p.is_dir()
        )
        if app.uploads.exists()
        else None,
        "env": env.read_bytes() if env.exists() else None,
        "env_mode": oct(env.stat().st_mode & 0o777) if env.exists() else None,
    }


def kill_writer_leaving_wal(db: Path, rows: int) -> None:
    """Commit rows and die by SIGKILL before any checkpoint: the rows live only in the -wal."""
    code = (
        "import os, signal, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.executemany('INSERT INTO notes(body) VALUES (?)',"
        f" [('wal-%d' % i,) for i in range({rows})])\n"
        "c.commit()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(db)], check=False)
    assert proc.returncode == -9
    assert (db.parent / (db.name + "-wal")).stat().st_size > 0


def make_state_b(app: App) -> None:
    """Rows added, uploads added, changed and deleted, config edited, a stale WAL left."""
    app.add_rows(25, prefix="state-b")
    (app.uploads / "new-in-b.bin").write_bytes(os.urandom(5000))
    (app.uploads / "avatars" / "alice.png").write_bytes(b"changed in B")
    (app.uploads / "docs" / "nested" / "deep" / "data.json").unlink()
    app.env.write_text("API_SECRET=rotated-in-state-b\n")
    app.env.chmod(0o600)
    kill_writer_leaving_wal(app.db, 10)


@pytest.fixture
def ab(app: App) -> tuple[App, Path, dict[str, object], dict[str, object]]:
    """An app with backup of state A, then moved on to state B."""
    app.run("backup")
    state_a = fingerprint(app)
    archive = app.archives()[-1]
    make_state_b(app)
    state_b = fingerprint(app)
    assert state_a != state_b
    return app, archive, state_a, state_b


def test_round_trip_and_undo(ab: tuple[App, Path, dict[str, object], dict[str, object]]) -> None:
    app, archive, state_a, state_b = ab
    proc = app.run("restore", str(archive), "--yes", "--json")
    report = json.loads(proc.stdout)
    # No stale -wal/-shm beside the restored file (checked before anything opens it).
    assert not (app.db.parent / "aica_sys.db-wal").exists()
    assert not (app.db.parent / "aica_sys.db-shm").exists()
    assert fingerprint(app) == state_a
    assert not (app.root / ".aica-restore").exists()
    safety = report["safety_backup"]
    assert safety.startswith("pre-restore_")
    assert "restore" in report["undo_command"] and safety in report["undo_command"]
    assert SECRET not in proc.stdout + proc.stderr

    # The safety backup brings back B, WAL-only rows included.
    app.run("restore", str(app.backups / safety), "--yes")
    assert fingerprint(app) == state_b


def test_restore_latest_by_default_through_the_script(app: App, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    app.run("backup")
    state_a = fingerprint(app)
    make_state_b(app)
    (app.root / "scripts").mkdir()
    for name in ("restore.sh", "backup.sh", "_aica.sh"):
        (app.root / "scripts" / name).write_bytes((repo / "scripts" / name).read_bytes())
        (app.root / "scripts" / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["./scripts/restore.sh", "--yes"],
        cwd=app.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(app) == state_a


def sidecars(app: App) -> set[str]:
    """The SQLite side files beside the live database."""
    side = ("-wal", "-shm", "-journal")
    return {p.name for p in app.db.parent.iterdir() if p.name.endswith(side)}


def leftovers(app: App) -> list[str]:
    """What a killed run could leave in the app: staging, journal, temp files of any kind."""
    found = [str(p) for p in app.root.rglob(".tmp-*")]
    if (app.root / ".aica-restore").exists():
        found += [str(p) for p in (app.root / ".aica-restore").iterdir()] or [".aica-restore"]
    return found


def assert_old_or_new_and_clean(
    app: App, before: dict[str, object], after: dict[str, object], side: set[str], what: str
) -> None:
    """After a kill and the next command: exactly one of the two states, nothing left over,
    no SQLite side file that was not there before, and a sound database."""
    side_now = sidecars(app)  # first: reading the database (read-only) may add its own
    now = fingerprint(app)
    assert now in (before, after), f"{what} left a mix"
    assert not leftovers(app), f"{what} left {leftovers(app)}"
    # The restored database comes without side files; the old one keeps only its own.
    assert side_now <= (side if now == before else set()), f"{what}: {side_now}"
    conn = sqlite3.connect(f"file:{app.db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_every_step_leaves_a_or_b(
    ab: tuple[App, Path, dict[str, object], dict[str, object]], point: str
) -> None:
    app, archive, state_a, state_b = ab
    side = sidecars(app)
    env = {**os.environ, CRASH_ENV: point}
    proc = app.run("restore", str(archive), "--yes", check=False, env=env)
    assert proc.returncode == -9, proc.stderr
    assert leftovers(app)  # the kill did leave something for the next command
    # The next command, whatever it is, finishes or rolls back the interrupted restore and
    # removes what it left.
    nxt = app.run("list")
    assert "interrupted restore" in nxt.stderr
    assert_old_or_new_and_clean(app, state_b, state_a, side, f"crash at {point}")
    expected = state_a if point == "committed" else state_b
    assert fingerprint(app) == expected, f"crash at {point} left a mix"


NEXT_COMMANDS = [("list",), ("recover",), ("doctor",), ("backup",), ("verify", "--all")]


def _restore_process(app: App, archive: Path) -> subprocess.Popen[bytes]:
    cmd = ["restore", str(archive), "--yes"]
    return subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> float:
    """Poll until ``path`` exists (or the process ended); the monotonic time it was seen."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.0005)
    return time.monotonic()


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_a_or_b_and_no_leftovers(app: App) -> None:
    """kill -9 at points spread over a whole restore (timed from when its staging folder
    appears), alternating between two archives; after each, the next command (of several
    kinds) must leave exactly the state before or after, and nothing behind."""
    app.run("backup")
    state_a, archive_a = fingerprint(app), app.archives()[-1]
    make_state_b(app)
    app.run("backup")
    state_b, archive_b = fingerprint(app), app.archives()[-1]
    restore_dir = app.root / ".aica-restore"
    # Calibrate: how long the restore's work lasts once its staging folder exists (the
    # shorter of two runs: the first one pays for cold caches).
    windows = []
    for archive in (archive_a, archive_b, archive_a):
        proc = _restore_process(app, archive)
        seen = _wait_for(restore_dir, proc)
        assert proc.wait(timeout=120) == 0
        windows.append(time.monotonic() - seen)
    window = min(windows)
    assert fingerprint(app) == state_a
    points = 16
    outcomes = []
    for i in range(points):
        now = fingerprint(app)
        before, after, archive = (
            (state_a, state_b, archive_b) if now == state_a else (state_b, state_a, archive_a)
        )
        side = sidecars(app)
        proc = _restore_process(app, archive)
        _wait_for(restore_dir, proc)
        time.sleep(window * (i + 0.5) / points)
        proc.kill()
        code = proc.wait(timeout=60)
        # Any command comes next: each finishes or rolls back, and tidies, first.
        nxt = NEXT_COMMANDS[i % len(NEXT_COMMANDS)]
        assert app.run(*nxt, check=False).returncode in (0, 1), nxt
        assert_old_or_new_and_clean(app, before, after, side, f"kill {i} (exit {code})")
        outcomes.append((code, fingerprint(app) == after))
    # Most kills landed inside the restore (the rest after it ended, under a heavy load).
    assert sum(code == -9 for code, _ in outcomes) >= points // 2, outcomes


def test_a_killed_safety_snapshot_leaves_no_wal_beside_the_live_database(app: App) -> None:
    """Opening a WAL database creates an empty -wal and a -shm, and the last connection to
    close removes them: a snapshot killed in between leaves them. The next command has SQLite
    remove them (never a blind unlink), and only when no process holds the database."""
    app.run("backup")
    archive = app.archives()[-1]
    app.add_rows(5, prefix="after")  # closed cleanly: no side files
    assert not sidecars(app)
    rows = app.rows()
    env = {**os.environ, CRASH_ENV: "snapshot-open"}

    def killed_in_the_snapshot() -> None:
        proc = app.run("restore", str(archive), "--yes", check=False, env=env)
        assert proc.returncode == -9
        assert sidecars(app) == {"aica_sys.db-wal", "aica_sys.db-shm"}
        assert (app.db.parent / "aica_sys.db-wal").stat().st_size == 0

    killed_in_the_snapshot()
    # The app started meanwhile: the files are its own now, and stay.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM notes').fetchall()\n"
            "print('ready', flush=True); sys.stdin.readline(); c.close()\n",
            str(app.db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        app.run("list")
        assert sidecars(app) == {"aica_sys.db-wal", "aica_sys.db-shm"}
        assert not leftovers(app)
    finally:
        holder.communicate("\n", timeout=30)  # its connection closes: SQLite tidies up
    assert not sidecars(app)

    killed_in_the_snapshot()
    app.run("list")
    assert not sidecars(app)
    assert not leftovers(app)
    assert app.rows() == rows


def test_staging_of_a_running_restore_is_left_alone(app: App) -> None:
    """The next command removes only a dead restore's staging: one of a restore that is
    still running (here stopped by SIGSTOP in the middle of its work) stays, and that restore
    then finishes normally."""
    for i in range(40):  # enough uploads for the unpack to last a while
        (app.uploads / "bulk" / f"{i}.bin").parent.mkdir(exist_ok=True)
        (app.uploads / "bulk" / f"{i}.bin").write_bytes(os.urandom(256 << 10))
    app.run("backup")
    state = fingerprint(app)
    archive = app.archives()[-1]
    make_state_b(app)
    proc = _restore_process(app, archive)
    try:
        _wait_for(app.root / ".aica-restore", proc)
        staging: list[Path] = []
        while not staging and proc.poll() is None:
            staging = [p for p in (app.root / ".aica-restore").iterdir() if p.is_dir()]
        proc.send_signal(signal.SIGSTOP)
        assert staging and not (app.root / ".aica-restore" / "journal.json").exists()
        app.run("list")
        assert all(p.is_dir() for p in staging)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=120) == 0
    assert fingerprint(app) == state
    assert not leftovers(app)


def test_staging_named_after_a_reused_pid_is_removed(app: App) -> None:
    """A staging folder whose pid now belongs to a process started after it was made (the
    pid was reused) is a dead restore's, as is one whose pid is gone."""
    restore_dir = app.root / ".aica-restore"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reused = restore_dir / f"20200101T000000-{sleeper.pid}"
        (reused / "new" / "public").mkdir(parents=True)
        (reused / "new" / ".env.production").write_text(f"API_SECRET={SECRET}\n")
        gone = restore_dir / "20200101T000000-4194304"  # above any pid_max
        gone.mkdir()
        (restore_dir / ".tmp-journal.json.4194304").write_bytes(b"{")
        uploads = app.uploads_tree()
        (restore_dir / "20200101T000000-4194305").symlink_to(app.uploads)  # only the link goes
        nxt = app.run("list")
        assert "interrupted restore" in nxt.stderr
        assert not restore_dir.exists()
        assert app.uploads_tree() == uploads
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("point", ["staged", "swap-1-parked"])
def test_a_killed_test_restore_is_finished_by_the_next_one(
    app: App, tmp_path: Path, point: str
) -> None:
    """A restore --target killed at any point: the next restore into that folder first rolls
    back or cleans up what the killed one left, then restores; never a mix."""
    app.run("backup")
    state_a = fingerprint(app)
    target = App(tmp_path / "test-restore")
    app.run("restore", "--yes", "--target", str(target.root))
    assert fingerprint(target) == state_a
    make_state_b(app)
    app.run("backup")
    state_b, archive_b = fingerprint(app), app.archives()[-1]
    env = {**os.environ, CRASH_ENV: point}
    cmd = ("restore", str(archive_b), "--yes", "--target", str(target.root))
    assert app.run(*cmd, check=False, env=env).returncode == -9
    assert leftovers(target)
    nxt = app.run(*cmd)
    assert "interrupted restore" in nxt.stderr
    assert not leftovers(target)
    assert fingerprint(target) == state_b


def test_recover_command_with_nothing_to_do(app: App) -> None:
    proc = app.run("recover")
    assert "Nothing to recover" in proc.stdout


def test_no_terminal_without_yes_changes_nothing(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    app, archive, _, state_b = ab
    proc = app.run("restore", str(archive), check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 8
    assert "--yes" in proc.stderr
    assert fingerprint(app) == state_b
    assert not app.archives("pre-restore_*")


def _restore_on_a_terminal(app: App, archive: Path, answer: bytes | None) -> tuple[int, str]:
    """Run restore with a pseudo-terminal; type ``answer`` at the prompt (None: close = EOF)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "restore", str(archive)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[yes/no]" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            seen += os.read(master, 4096)
    assert b"[yes/no]" in seen, seen.decode(errors="replace")
    if answer is None:
        os.write(master, b"\x04")  # Ctrl-D: EOF at the prompt
    else:
        os.write(master, answer)
    code = proc.wait(timeout=60)
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            seen += os.read(master, 4096)
    except OSError:
        pass
    os.close(master)
    return code, seen.decode(errors="replace")


@pytest.mark.parametrize("answer", [b"no\n", None], ids=["no", "eof"])
def test_no_or_eof_at_the_prompt_changes_nothing(
    ab: tuple[App, Path, dict[str, object], dict[str, object]], answer: bytes | None
) -> None:
    app, archive, _, state_b = ab
    code, screen = _restore_on_a_terminal(app, archive, answer)
    assert code == 8
    assert fingerprint(app) == state_b
    assert not app.archives("pre-restore_*")
    assert not leftovers(app)
    # Before the question: which live files go, largest first, and how much in all.
    question = screen[: screen.index("[yes/no]")]
    assert "deleted" in question and "public/uploads/new-in-b.bin" in question
    assert "replaced" in question and "public/uploads/avatars/alice.png" in question
    assert "will be replaced or deleted" in question
    lines = question.splitlines()
    first = next(i for i, line in enumerate(lines) if "new-in-b.bin" in line)
    assert "alice.png" in "".join(lines[first + 1 :])  # 5,000 bytes before 12


def test_an_identical_tree_shows_no_change(app: App) -> None:
    """The comparison is by content against the manifest, not by file times: right after a
    backup, and after an exact restore, a dry run shows nothing to change; one file whose
    bytes differ (same size, other time) shows as the one change. What the backup holds is
    described with the backup's own file times, not the unpack time."""
    os.utime(app.env, (1_600_000_000, 1_600_000_000))  # September 2020
    app.run("backup")
    archive = app.archives()[-1]

    def changes() -> dict[str, dict[str, Any]]:
        report = json.loads(app.run("restore", str(archive), "--dry-run", "--json").stdout)
        return {c["component"]: c for c in report["changes"]}

    def uploads_change() -> dict[str, Any]:
        return changes()["uploads"]

    config = changes()["config"]
    assert "modified 2020-09-1" in config["archive"] and config["archive"] == config["current"]

    files = len(app.uploads_tree())

    def assert_no_change() -> None:
        got = uploads_change()
        assert (got["added"], got["changed"], got["removed"]) == (0, 0, 0), got
        assert (got["unchanged"], got["bytes_replaced"], got["largest"]) == (files, 0, []), got
        got = changes()["config"]  # the confirm screen named it as replaced
        assert (got["action"], got["largest"]) == ("unchanged", []), got

    assert_no_change()
    app.run("restore", str(archive), "--yes")
    assert_no_change()
    got = changes()["database"]  # the very file the archive holds, since the restore
    assert (got["action"], got["largest"]) == ("unchanged", []), got
    alice = app.uploads / "avatars" / "alice.png"
    data = bytearray(alice.read_bytes())
    data[0] ^= 0xFF
    alice.write_bytes(bytes(data))
    change = uploads_change()
    assert (change["changed"], change["unchanged"]) == (1, files - 1)
    assert change["largest"] == [
        {"path": "public/uploads/avatars/alice.png", "size": len(data), "action": "replaced"}
    ]


def test_yes_at_the_prompt_restores(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    app, archive, state_a, _ = ab
    code, screen = _restore_on_a_terminal(app, archive, b"yes\n")
    assert code == 0, screen
    assert fingerprint(app) == state_a


def test_dry_run_changes_nothing(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    app, archive, _, state_b = ab
    proc = app.run("restore", str(archive), "--dry-run", "--json")
    report = json.loads(proc.stdout)
    uploads = next(c for c in report["changes"] if c["component"] == "uploads")
    assert uploads["added"] == 1 and uploads["removed"] == 1 and uploads["changed"] >= 1
    assert fingerprint(app) == state_b
    assert not app.archives("pre-restore_*")
    assert not (app.root / ".aica-restore").exists()


def test_a_component_the_restore_deletes_is_named(app: App) -> None:
    """The archive has no config: restoring only the config deletes the live file, and the
    report names it among the files that go."""
    app.env.unlink()
    app.run("backup")
    app.env.write_text("API_SECRET=added-later\n")
    cmd = ("restore", str(app.archives()[-1]), "--only", "config", "--dry-run", "--json")
    report = json.loads(app.run(*cmd).stdout)
    config = next(c for c in report["changes"] if c["component"] == "config")
    assert config["action"] == "remove"
    assert config["largest"] == [
        {"path": ".env.production", "size": len("API_SECRET=added-later\n"), "action": "deleted"}
    ]


def test_only_uploads(ab: tuple[App, Path, dict[str, object], dict[str, object]]) -> None:
    app, archive, state_a, state_b = ab
    app.run("restore", str(archive), "--yes", "--only", "uploads")
    now = fingerprint(app)
    assert now["uploads"] == state_a["uploads"]
    assert now["db"] == state_b["db"]
    assert now["env"] == state_b["env"]


def test_target_restores_elsewhere(app: App, tmp_path: Path) -> None:
    app.run("backup")
    state = fingerprint(app)
    target = tmp_path / "test_restore"
    app.run("restore", "--yes", "--target", str(target))
    assert fingerprint(App(target)) == state
    assert fingerprint(app) == state  # the live app untouched


def test_hostile_archive_is_refused_before_any_change(
    ab: tuple[App, Path, dict[str, object], dict[str, object]], tmp_path: Path
) -> None:
    app, archive, _, state_b = ab
    # Flip one byte of an upload inside the compressed stream: rebuild the archive with tar.
    work = tmp_path / "x"
    work.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(work)], check=True)
    (work / "public/uploads/avatars/alice.png").write_bytes(b"tampered")
    bad = app.backups / "backup_20200101_000000.tar.gz"
    members = ["backend", "public", ".env.production", "manifest.json"]  # manifest stays last
    subprocess.run(["tar", "-czf", str(bad), "-C", str(work), *members], check=True)
    proc = app.run("restore", str(bad), "--yes", check=False)
    assert proc.returncode == 6
    assert "alice.png" in proc.stderr
    assert fingerprint(app) == state_b
    assert not app.archives("pre-restore_*")
    assert not (app.root / ".aica-restore").exists()


def test_archive_of_another_app_is_refused(app: App, tmp_path: Path) -> None:
    other = make_app(tmp_path / "other")
    (other.root / "aica-backup.toml").write_text('app_name = "something-else"\n')
    other.run("backup")
    before = fingerprint(app)
    proc = app.run("restore", str(other.archives()[-1]), "--yes", check=False)
    assert proc.returncode == 6
    assert "something-else" in proc.stderr
    assert fingerprint(app) == before


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")


def test_safety_backup_impossible_changes_nothing(
    ab: tuple[App, Path, dict[str, object], dict[str, object]], tmp_path: Path
) -> None:
    app, archive, _, state_b = ab
    full = tmp_path / "full-backups"
    _mount_tmpfs(full, "1m")
    try:
        (app.root / "aica-backup.toml").write_text(f'[paths]\nbackups = "{full}"\n')
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the file system to the brim
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        proc = app.run("restore", str(archive), "--yes", check=False)
        assert proc.returncode == 7, proc.stderr
        assert "safety backup" in proc.stderr
        assert fingerprint(app) == state_b
        assert not (app.root / ".aica-restore").exists()
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_read_only_destination_fails_before_any_change(app: App, tmp_path: Path) -> None:
    app.run("backup")
    archive = app.archives()[-1]
    dest = tmp_path / "ro-root"
    _mount_tmpfs(dest, "16m")
    try:
        make_app(dest)
        before = fingerprint(App(dest))
        subprocess.run(["mount", "-o", "remount,ro", str(dest)], check=True)
        proc = app.run("restore", str(archive), "--yes", "--target", str(dest), check=False)
        assert proc.returncode == 7, proc.stderr
        assert "read-only" in proc.stderr.lower() or "cannot write" in proc.stderr
        assert fingerprint(App(dest)) == before
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def test_restore_refuses_while_a_process_holds_the_database(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    app, archive, _, state_b = ab
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM notes').fetchall()\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(app.db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        proc = app.run("restore", str(archive), "--yes", check=False)
        assert proc.returncode == 9
        assert f"pid {holder.pid}" in proc.stderr
        assert fingerprint(app) == state_b
    finally:
        holder.kill()
        holder.wait()


def test_a_running_app_is_reported_before_any_question(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    """Without stop/start commands a held database makes restore refuse: on a terminal it
    says so at once, before the operator picks a backup and types yes, and stages nothing."""
    app, _, _, state_b = ab
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM notes').fetchall()\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(app.db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aica_backup", "--root", str(app.root), "restore"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    screen = b""
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while proc.poll() is None and b"?" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    screen += os.read(master, 4096)
        text = screen.decode(errors="replace")
        assert "Restore which backup" not in text and "[yes/no]" not in text, text
        assert proc.wait(timeout=30) == 9
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in text
    assert fingerprint(app) == state_b
    assert not (app.root / ".aica-restore").exists()
    assert not app.archives("pre-restore_*")


def test_a_verified_database_is_not_fully_checked_again(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    """verify's full check holds for the same bytes: restore then runs a quick_check only,
    unless --full-check; a record for other bytes is ignored."""
    app, archive, state_a, _ = ab
    first = json.loads(app.run("restore", str(archive), "--yes", "--json").stdout)
    assert first["database_check"] == "integrity_check"  # never verified: the full check
    app.run("verify", archive.name)
    again = json.loads(app.run("restore", str(archive), "--yes", "--json").stdout)
    assert again["database_check"].startswith("quick_check; integrity_check passed")
    assert fingerprint(app) == state_a
    full = json.loads(app.run("restore", archive.name, "--yes", "--full-check", "--json").stdout)
    assert full["database_check"] == "integrity_check"

    index = next((app.backups / ".aica-backup").rglob(f"{archive.name}.json"))
    doc = json.loads(index.read_text())
    doc["verification"]["database_sha256"] = "0" * 64  # a record for some other database
    index.write_text(json.dumps(doc))
    other = json.loads(app.run("restore", str(archive), "--yes", "--json").stdout)
    assert other["database_check"] == "integrity_check"


def test_a_swapped_in_database_that_is_not_the_checked_file_rolls_back(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aica_backup.errors import RolledBackError
    from aica_backup.journal import Journal
    from aica_backup.layout import Layout
    from aica_backup.restore import RestoreOptions, restore

    app, archive, _, state_b = ab
    real_swap = Journal.swap

    def swap_then_replace(self: Journal) -> None:
        real_swap(self)
        copy = app.db.with_name("other.db")
        copy.write_bytes(app.db.read_bytes())  # same bytes, another file
        os.replace(copy, app.db)

    monkeypatch.setattr(Journal, "swap", swap_then_replace)
    with pytest.raises(RolledBackError, match="not the database file that was checked"):
        restore(Layout(root=app.root), archive, RestoreOptions())
    assert fingerprint(app) == state_b


@pytest.mark.skipif(os.geteuid() != 0, reason="only root restores files for another user")
def test_restored_files_keep_the_owner_of_what_they_replace(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    """Run as root, a restore hands every file back to the app's user; files of root's own
    stay root's (nothing to change)."""
    app, archive, _, _ = ab
    for path in [app.db, app.env, app.uploads, *app.uploads.rglob("*")]:
        os.chown(path, 4242, 4343, follow_symlinks=False)
    app.run("restore", str(archive), "--yes")
    restored = [app.db, app.env, app.uploads, *app.uploads.rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in restored} == {(4242, 4343)}
    for path in [app.db, app.uploads, *app.uploads.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
    app.run("restore", str(archive), "--yes")
    assert {p.stat().st_uid for p in [app.db, *app.uploads.rglob("*")]} == {0}


def test_a_leftover_the_cleanup_could_not_remove_is_reported(
    ab: tuple[App, Path, dict[str, object], dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parked old version is deleted after the commit; if that fails the restore stands,
    and the result says which folder is left, instead of hundreds of MB going unseen."""
    from aica_backup import journal
    from aica_backup.layout import Layout
    from aica_backup.restore import RestoreOptions, restore

    app, archive, state_a, _ = ab
    monkeypatch.setattr(journal, "discard_tree", lambda path: None)  # as if every unlink failed
    result = restore(Layout(root=app.root), archive, RestoreOptions())
    assert fingerprint(app) == state_a
    [note] = [n for n in result.notes if "could not be removed" in n]
    left = Path(note.split(" could not be removed")[0])
    assert left.is_dir() and left.parent == app.root / ".aica-restore"
    assert any((left / "old").rglob("*"))  # the replaced version, kept only by the failure


def _add_large_uploads(app: App) -> None:
    """Uploads big enough to be written around the page cache, at sizes off every boundary."""
    for name, size in (("photos/a.jpg", 300_001), ("photos/b.webp", (5 << 19) + 3), ("c", 1 << 20)):
        path = app.uploads / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def _skip_without_direct_io(app: App) -> None:
    probe = os.open(app.root / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.fcntl(probe, fcntl.F_SETFL, os.O_DIRECT)
    except OSError:
        pytest.skip("the file system under the test app does no direct I/O")
    finally:
        os.close(probe)
        (app.root / "probe").unlink()


def test_large_uploads_come_back_byte_for_byte(app: App, tmp_path: Path) -> None:
    _skip_without_direct_io(app)
    _add_large_uploads(app)
    app.run("backup")
    state = fingerprint(app)
    target = tmp_path / "restored"
    app.run("restore", "--yes", "--target", str(target))
    assert fingerprint(App(target)) == state


def test_a_failed_direct_write_fails_the_restore_and_changes_nothing(
    app: App, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_without_direct_io(app)
    _add_large_uploads(app)
    app.run("backup")
    archive = app.archives()[-1]
    make_state_b(app)
    state_b = fingerprint(app)

    def disk_full(fd: int, view: memoryview, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "_pwrite_all", disk_full)
    code, _, err = cli(app, "restore", str(archive), "--yes")
    assert code == 7, err
    assert "disk is full" in err
    assert fingerprint(app) == state_b
    assert not (app.root / ".aica-restore").exists()


@pytest.mark.parametrize("point", ["staged", "journal-saved"])
def test_a_killed_target_restore_is_tidied_by_the_next_command(
    app: App, tmp_path: Path, point: str
) -> None:
    """kill -9 of ``restore --target DIR`` left DIR/.aica-restore/ (an unpacked copy of the
    app, secrets included, or a journal half done) that no later command in the app ever
    removed or reported: list, doctor and backup looked only at the app. The next command
    of the app finishes the target's restore and removes what it left (issue 14.10)."""
    app.run("backup")
    target = tmp_path / "drill"
    env = {**os.environ, CRASH_ENV: point}
    proc = app.run("restore", "--target", str(target), "--yes", check=False, env=env)
    assert proc.returncode == -9, proc.stderr
    assert (target / ".aica-restore").exists()
    nxt = app.run("list")
    assert "interrupted restore" in nxt.stderr
    assert not (target / ".aica-restore").exists()
    assert not [p for p in target.rglob("*") if p.name.startswith(".tmp-")]
    app.run("list")  # and nothing is left to say
    assert app.run("list").stderr == ""


def test_a_failed_target_restore_leaves_no_new_folder(app: App, tmp_path: Path) -> None:
    """restore --target into a new folder, refused (a truncated archive) or interrupted,
    left the folder it made, empty: a failed command changes nothing."""
    app.run("backup")
    archive = app.archives()[-1]
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "drill" / "new"
    proc = app.run("restore", str(archive), "--target", str(target), "--yes", check=False)
    assert proc.returncode == 6, proc.stderr
    assert not (tmp_path / "drill").exists()


# -- an incomplete archive: the uploads the backup could not read are kept ------------------

KEPT = ("avatars/alice.png", "docs/nested")  # an unreadable file, an unreadable folder


@pytest.fixture
def incomplete(app: App) -> tuple[App, Path, dict[str, object], dict[str, object]]:
    """A backup that could not read one upload file and one folder (run without the
    capabilities that bypass file modes), then the app moved on: rows and a file added, the
    unreadable file rewritten and a file added in the unreadable folder. Returns the app,
    the archive, the state before the restore and the state it must leave."""
    if os.geteuid() != 0:
        pytest.skip("reading the unreadable uploads to check them needs root")
    for rel in KEPT:
        (app.uploads / rel).chmod(0)
    proc = app.run("backup", check=False, preexec_fn=permissions_enforced())
    assert proc.returncode == ExitCode.WARNING, proc.stderr
    [archive] = app.archives()
    archived = fingerprint(app)  # as root: the skipped ones' contents too
    app.add_rows(5, prefix="later")
    (app.uploads / "new-since.bin").write_bytes(b"not in the archive")
    (app.uploads / "avatars" / "alice.png").write_bytes(b"alice, edited since the backup")
    (app.uploads / "docs" / "nested" / "later.txt").write_bytes(b"added since the backup")
    before = fingerprint(app)
    uploads = dict(archived["uploads"])  # type: ignore[call-overload]
    for rel in ("avatars/alice.png", "docs/nested/deep/data.json", "docs/nested/later.txt"):
        uploads[rel] = before["uploads"][rel]  # type: ignore[index]
    return app, archive, before, {**archived, "uploads": uploads}


def _kept_intact(app: App) -> None:
    for rel in KEPT:  # kept as they were: unreadable still
        assert stat.S_IMODE((app.uploads / rel).stat().st_mode) == 0, rel
    assert (app.uploads / "docs" / "nested" / "later.txt").read_bytes() == b"added since the backup"


def test_uploads_the_backup_skipped_are_kept_by_the_restore(
    incomplete: tuple[App, Path, dict[str, object], dict[str, object]],
) -> None:
    """An incomplete archive has no version of the uploads its backup could not read: the
    restore made the live tree equal the archive's, deleting them (and the safety backup,
    unable to read them either, would have skipped them too). The live ones are kept, the
    confirm screen says so rather than listing them as deleted, and everything else is the
    archive's."""
    app, archive, _before, expected = incomplete
    proc = app.run("restore", str(archive), "--yes")
    assert fingerprint(app) == expected
    _kept_intact(app)
    assert "1 deleted" in proc.stdout and "3 skipped at backup, kept" in proc.stdout, proc.stdout
    assert "alice.png" not in proc.stderr and "data.json" not in proc.stderr
    assert not leftovers(app)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    # Items: the database's four files (0-3), the two kept uploads (4, 5), the uploads (6).
    [*(f"swap-{i}-{what}" for i in (4, 5, 6) for what in ("parked", "placed")), "committed"],
)
def test_sigkill_around_keeping_skipped_uploads_leaves_a_or_b(
    incomplete: tuple[App, Path, dict[str, object], dict[str, object]], point: str
) -> None:
    app, archive, before, after = incomplete
    env = {**os.environ, CRASH_ENV: point}
    proc = app.run("restore", str(archive), "--yes", check=False, env=env)
    assert proc.returncode == -9, proc.stderr
    items = json.loads((app.root / ".aica-restore" / "journal.json").read_text())["items"]
    kept = [Path(i["new"]).relative_to(app.uploads).as_posix() for i in items[4:6]]
    assert kept == list(KEPT) and items[6]["live"] == str(app.uploads)  # the points' items
    assert "interrupted restore" in app.run("list").stderr
    assert fingerprint(app) == (after if point == "committed" else before), point
    _kept_intact(app)
    assert not leftovers(app)
