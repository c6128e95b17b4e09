"""Ctrl-C and SIGTERM stop every long command within 2 s, cleanly (issue 14, items 4 and 12).

Real signals to a real ``aica-backup`` process, at points spread over a measured run of the
command: Ctrl-C typed on a pseudo-terminal (the terminal sends SIGINT to its foreground
process group, the command's children included, and the progress bar is on), and SIGTERM
sent by ``kill`` to a command without a terminal. Every time: the process is gone within
2 s of the signal, with exit 130 (Ctrl-C) or 143 (SIGTERM) and one line saying what was kept,
or it had finished and exits 0; no temp file or staging folder is left; an interrupted restore
leaves the live app exactly as it was, a finished one leaves the archive's state; and the next
command finds the lock free.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import pytest

from aica_backup import interrupt
from aica_backup.snapshot import check_file
from tests.support.app import App, make_app
from tests.support.s3 import SeaweedServer
from tests.test_restore import fingerprint

pytestmark = [pytest.mark.slow]

GRACE = 2.0  # seconds from the signal to the exit
# Where the signals land, as fractions of a measured run after start-up (Ctrl-C and SIGTERM
# take turns, so each command is stopped at eight points across its run).
POINTS = {"ctrl-c": (0.05, 0.25, 0.45, 0.7), "sigterm": (0.1, 0.3, 0.55, 0.8)}
EXIT = {"ctrl-c": 130, "sigterm": 143}
UPLOADS_MB = 160


def _default_signals() -> None:  # pragma: no cover - runs in the child before exec
    # A test run started as a background job inherits SIGINT ignored (commit c977923), and
    # Python then installs no handler for it: the child gets the defaults a terminal gives.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Outcome:
    code: int  # exit code, or -N when killed by signal N
    output: str  # stderr (a terminal: everything the terminal showed)
    after: float | None  # seconds from the signal to the exit; None: it ended before


def _handles_signals(pid: int) -> bool:
    """Whether the process catches SIGTERM yet. The tool's first step is to handle SIGINT and
    SIGTERM (Python itself never catches SIGTERM); a signal before that lands while the
    interpreter starts, before any of the tool's code, and takes the system's default action
    with nothing to clean up. So a signal due earlier waits until then."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def _argv(app: App, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "aica_backup", "--root", str(app.root), *args]


def _on_terminal(argv: list[str], signal_at: float | None) -> Outcome:
    """Run on a pseudo-terminal; type Ctrl-C ``signal_at`` seconds after the start."""
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _default_signals()
            os.execv(argv[0], argv)  # noqa: S606 - the interpreter running the tests
        finally:
            os._exit(127)
    seen = b""
    sent: float | None = None
    status: int | None = None
    try:
        while status is None:
            now = time.monotonic()
            if (
                signal_at is not None
                and sent is None
                and now - started >= signal_at
                and _handles_signals(pid)
            ):
                os.write(fd, b"\x03")  # the terminal's intr character: SIGINT to the group
                sent = now
            if now - (sent or started) > (GRACE if sent else 120):
                break
            ready, _, _ = select.select([fd], [], [], 0.01)
            if ready:
                with contextlib.suppress(OSError):  # EIO: the child closed the terminal
                    seen += os.read(fd, 65536)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
        ended = time.monotonic()
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"still running {GRACE} s after Ctrl-C:\n{_tail(seen)}")
        while select.select([fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    return Outcome(code, _tail(seen), None if sent is None else ended - sent)


def _tail(raw: bytes) -> str:
    return raw.decode(errors="replace").replace("\r\n", "\n")


def _terminated(argv: list[str], signal_at: float | None) -> Outcome:
    """Run without a terminal; send SIGTERM ``signal_at`` seconds after the start."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_default_signals,
    )
    sent: float | None = None
    while signal_at is not None and proc.poll() is None:
        if time.monotonic() - started >= signal_at and _handles_signals(proc.pid):
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            break
        time.sleep(0.002)
    try:
        _, err = proc.communicate(timeout=GRACE if sent else 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running {GRACE} s after SIGTERM:\n{err.decode(errors='replace')}")
    after = None if sent is None else time.monotonic() - sent
    return Outcome(proc.returncode, err.decode(errors="replace"), after)


def run(app: App, how: str, *args: str, signal_at: float | None = None) -> Outcome:
    argv = _argv(app, args)
    return _on_terminal(argv, signal_at) if how == "ctrl-c" else _terminated(argv, signal_at)


def kill_points(app: App, how: str, *args: str) -> Iterator[float]:
    """Seconds after the start at which to signal: spread over one measured run (after
    Python's own start-up, which ``--version`` measures)."""
    t0 = time.monotonic()
    app.run("--version")
    startup = time.monotonic() - t0
    t0 = time.monotonic()
    full = run(app, how, *args)
    duration = time.monotonic() - t0
    assert full.code == 0, full.output
    for fraction in POINTS[how]:
        yield startup + fraction * (duration - startup)


def check_stopped(outcome: Outcome, how: str) -> bool:
    """True if the command was stopped by the signal (False: it had finished first)."""
    if outcome.after is None or outcome.code == 0:
        assert outcome.code == 0, outcome.output
        return False
    assert outcome.after <= GRACE, f"exited {outcome.after:.2f} s after the signal"
    assert outcome.code == EXIT[how], outcome.output
    assert "Traceback" not in outcome.output, outcome.output
    lines = [line for line in outcome.output.splitlines() if "aica-backup: interrupted: " in line]
    assert len(lines) == 1, outcome.output
    if how == "sigterm":  # stderr is its own: that line ends it, and no error came before
        assert outcome.output.strip().splitlines()[-1] == lines[0], outcome.output
        assert "error" not in outcome.output, outcome.output
    return True


def assert_clean(app: App, *also: Path) -> None:
    """No temp file or staging folder anywhere the tool writes, and the lock is free."""
    left = [p for p in app.backups.rglob("*") if p.name.startswith(".tmp-")]
    for folder in also:
        left += [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]
    assert not left, left
    assert not (app.root / ".aica-restore").exists()
    lock = filelock.FileLock(app.backups / ".aica-backup" / "lock")
    lock.acquire(timeout=0)  # raises if a process still holds it
    lock.release()


def _rclone_children() -> list[int]:
    """rclone processes started by a command of this test (this process's descendants)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if p.name() == "rclone"]


@pytest.fixture(scope="module")
def big_app(tmp_path_factory: pytest.TempPathFactory) -> App:
    """An app whose backup takes about a second: ~160 MB of uploads that compress a little,
    compressed at gzip level 3 by two threads (whatever cores CI has), so compressing is the
    bottleneck and the caller spends its time handing blocks to the compressor's queues."""
    app = make_app(tmp_path_factory.mktemp("signals") / "app", rows=20_000)
    noise = os.urandom(1 << 20)
    for i in range(UPLOADS_MB):
        path = app.uploads / "photos" / f"{i // 50:02d}" / f"img-{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(noise[i:] + b"text %d " % i * 4096)
    (app.root / "aica-backup.toml").write_text(
        "[backup]\nlevel = 3\nthreads = 2\n\n[retention]\nkeep_last = 3\n"
    )
    return app


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_backup_stops_within_2_s_and_leaves_nothing(big_app: App, how: str) -> None:
    app = big_app
    stops = 0
    for at in kill_points(app, how, "backup", "--no-offsite"):
        before = {p.name for p in app.archives()}
        outcome = run(app, how, "backup", "--no-offsite", signal_at=at)
        stopped = check_stopped(outcome, how)
        stops += stopped
        new = {p.name for p in app.archives()} - before
        if stopped and "was kept" not in outcome.output:
            assert "interrupted: nothing changed" in outcome.output
            assert not new, (at, outcome.output)
        else:  # finished, or stopped after the archive was published: it is whole, indexed
            assert len(new) == 1, (at, outcome.output)
            name = new.pop()
            assert (app.backups / ".aica-backup" / "catalog" / f"{name}.json").is_file()
            if stopped:
                assert f"the new archive {name} was kept" in outcome.output
        assert_clean(app)
    assert stops >= 2, "the signals came too late to stop the command"
    app.run("backup", "--no-offsite")  # the lock was released: not exit 4


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_verify_stops_within_2_s_and_records_nothing(big_app: App, how: str) -> None:
    app = big_app
    while len(app.archives()) < 3:  # --all reads them all: a run long enough to stop in
        app.run("backup", "--no-offsite")
    catalog = app.backups / ".aica-backup" / "catalog"
    stops = 0
    for at in kill_points(app, how, "verify", "--all"):
        before = {p.name: p.read_bytes() for p in catalog.iterdir()}
        outcome = run(app, how, "verify", "--all", signal_at=at)
        stops += check_stopped(outcome, how)
        # an interruption is no verdict on an archive: only a verification that finished
        # (before the signal, or as it came) is recorded, and the archives are good
        for path in catalog.iterdir():
            if path.read_bytes() != before[path.name]:
                assert json.loads(path.read_bytes())["verification"]["ok"] is True, path.name
        assert_clean(app)
    assert stops >= 2, "the signals came too late to stop the command"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_restore_stops_within_2_s_leaving_old_or_new_state(big_app: App, how: str) -> None:
    app = big_app
    app.run("backup", "--no-offsite")
    states = {app.archives("backup_*")[-1].name: fingerprint(app)}  # what each archive holds
    app.add_rows(100, how)
    (app.uploads / "photos" / "00" / "img-0000.jpg").unlink(missing_ok=True)
    (app.uploads / f"{how}.txt").write_text("added after the backup")
    live = fingerprint(app)
    first = next(iter(states))
    points = list(kill_points(app, how, "restore", "--yes", first))  # a whole restore, timed

    def restored(name: str) -> None:  # the live state is now the archive's
        nonlocal live
        states[app.archives("pre-restore_*")[-1].name] = live  # its safety backup
        live = states[name]

    restored(first)
    stops = 0
    for at in points:
        # restore whichever archive would change the live state (a finished run swaps them)
        target = next(n for n, st in states.items() if st != live and (app.backups / n).exists())
        outcome = run(app, how, "restore", "--yes", target, signal_at=at)
        stopped = check_stopped(outcome, how)
        stops += stopped
        if not stopped or f"{target} was restored" in outcome.output:  # stopped as it cleaned up
            restored(target)
            assert fingerprint(app) == live, (at, outcome.output)
        else:
            now = fingerprint(app)
            assert now != states[target], ("restored, but said interrupted", outcome.output)
            assert now == live, (at, outcome.output)  # exactly as before
        assert_clean(app)
    assert stops >= 2, "the signals came too late to stop the command"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("how", "kind"),
    # S3 once: its uploads stop on the same flag as the others, and SeaweedFS is slower to fill
    [(h, k) for k in ("folder", "rclone") for h in ("ctrl-c", "sigterm")] + [("sigterm", "s3")],
)
def test_offsite_push_stops_within_2_s_and_leaves_no_temp_file(
    big_app: App, tmp_path: Path, how: str, kind: str, request: pytest.FixtureRequest
) -> None:
    app = big_app
    if not app.archives("backup_*"):
        app.run("backup", "--no-offsite")
    target = tmp_path / "nas"
    target.mkdir()
    location = str(target)
    if kind == "rclone":  # the real rclone binary, its local remote: SIGTERM reaches only us
        request.getfixturevalue("rclone_env")
        location = f"rclone:local:{target}"
    if kind == "s3":  # SeaweedFS; multipart uploads (8 MB parts) that must not be left open
        location = request.getfixturevalue("s3_location")
        server: SeaweedServer = request.getfixturevalue("seaweed")
    push = ("offsite", "push", location)
    app.run("prune", "--keep-last", "2")  # two archives to copy: each run stays short
    stops = 0
    for at in kill_points(app, how, *push):
        shutil.rmtree(target)  # every run has every copy to make
        target.mkdir()
        if kind == "s3":
            bucket, _, prefix = location.removeprefix("s3://").partition("/")
            for obj in (
                server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            ):
                server.client().delete_object(Bucket=bucket, Key=obj["Key"])
        outcome = run(app, how, *push, signal_at=at)
        stops += check_stopped(outcome, how)
        assert_clean(app, target)
        assert not [p for p in target.iterdir() if p.name.endswith(".partial")], outcome
        assert not _rclone_children(), "rclone still running after the command exited"
        if kind == "s3":
            bucket, _, prefix = location.removeprefix("s3://").partition("/")
            listed = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
            assert not listed.get("Uploads"), listed["Uploads"]
    assert stops >= 2, "the signals came too late to stop the command"
    app.run(*push)  # the lock is free, and what was left half done is completed
    assert not [p for p in target.iterdir() if p.name.endswith(".partial")]  # rclone's temp
    [listing] = json.loads(app.run("offsite", "list", location, "--json").stdout)
    assert listing["copies"] and not listing["missing"], listing
    assert all(c["complete"] for c in listing["copies"]), listing


@pytest.fixture
def stop_flag() -> Iterator[threading.Event]:
    """The process-wide stop flag, for a test run in this process: cleared again after it."""
    try:
        yield interrupt.STOP
    finally:
        interrupt.STOP.clear()


@pytest.mark.parametrize("mode", ["integrity", "quick"])
def test_a_database_check_ends_at_once_when_the_command_stops(
    tmp_path: Path, mode: str, stop_flag: threading.Event
) -> None:
    """A check runs for seconds on a large database, in a worker thread the interrupted
    command would wait for (13.7 s for 288 MB here): once the command is stopping, SQLite
    ends it at its next progress call, and it gives no verdict on the database."""
    db = tmp_path / "big.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)")
    conn.execute("CREATE INDEX t_a ON t(a)")
    conn.executemany("INSERT INTO t(a) VALUES (?)", ((f"{i:x}" * 4,) for i in range(200_000)))
    conn.commit()
    conn.close()
    assert check_file(db, mode)[0] == "ok"
    stop_flag.set()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        check_file(db, mode)
    assert time.monotonic() - started < 0.5


def test_a_signal_in_a_deferred_block_is_raised_as_it_ends(stop_flag: threading.Event) -> None:
    """Publishing an archive and indexing it is all or nothing: a SIGTERM meanwhile waits for
    the block's end, and what the block made is named as kept."""
    reached_end = False
    with interrupt.handling_signals():
        with (
            pytest.raises(interrupt.Terminated),
            interrupt.deferred("the new archive X was kept"),
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now, and raised nothing here
            reached_end = True
        assert interrupt.kept() == ["the new archive X was kept"]
        assert interrupt.exit_code() == 143
        os.kill(os.getpid(), signal.SIGINT)  # a second signal, during cleanup: only recorded
        time.sleep(0.05)
    assert reached_end
    assert stop_flag.is_set()  # worker threads were told


def test_a_signal_while_a_finished_command_exits_does_not_kill_it(app: App) -> None:
    """SIGTERM just after a command printed its result, while Python exits: the command is
    done, so its own code (0), never death by the signal. Python's exit puts the default
    handlers back while it still unloads modules (tens of ms): -15 at every offset here."""
    app.run("backup")
    codes = []
    for offset in (0.01, 0.02, 0.03, 0.04, 0.05):
        proc = subprocess.Popen(
            _argv(app, ("list", "--json")),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=_default_signals,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # the JSON is printed (and flushed) last: the command is done
        time.sleep(offset)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        codes.append(proc.wait(timeout=GRACE + 5))
    assert set(codes) <= {0, 143}, codes
    assert 0 in codes, codes


def test_a_push_stopped_after_a_copy_names_the_copy_it_made(big_app: App, tmp_path: Path) -> None:
    """SIGTERM to an encrypting ``offsite push`` once the first copy is verified on the target:
    the one line names that copy (it said "interrupted: nothing changed" with the copy there)."""
    from aica_backup.crypto import generate_identity

    app = big_app
    while len(app.archives("backup_*")) < 2:
        app.run("backup", "--no-offsite")
    app.run("prune", "--keep-last", "2")
    target = tmp_path / "nas"
    env = {**os.environ, "AICA_BACKUP_ENCRYPTION_RECIPIENTS": generate_identity(tmp_path / "id")}
    proc = subprocess.Popen(
        _argv(app, ("offsite", "push", str(target))),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        preexec_fn=_default_signals,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the second archive is being encrypted (seconds) after this
        seen.append(line)
        if "copied and verified" in line:
            proc.send_signal(signal.SIGTERM)
            break
    seen += proc.stderr.readlines()
    assert proc.wait(timeout=GRACE + 5) == 143, "".join(seen)
    [copy] = [p.name for p in target.iterdir() if p.name.endswith(".age")]
    assert seen[-1].strip() == f"aica-backup: interrupted: {copy} was copied to {target}", seen


def test_a_pull_stopped_once_the_archive_is_in_place_names_it(big_app: App, tmp_path: Path) -> None:
    """SIGTERM to ``offsite pull --decrypt`` just after the decrypted archive appeared in
    backups/ (while the encrypted download is removed and the lock released): it said
    "interrupted: nothing changed" with the new archive there."""
    from aica_backup.crypto import generate_identity

    app = big_app
    if not app.archives("backup_*"):
        app.run("backup", "--no-offsite")
    app.run("prune", "--keep-last", "1")
    [archive] = app.archives("backup_*")
    identity = tmp_path / "id"
    env = {**os.environ, "AICA_BACKUP_ENCRYPTION_RECIPIENTS": generate_identity(identity)}
    target = tmp_path / "nas"
    subprocess.run([*_argv(app, ("offsite", "push", str(target)))], env=env, check=True)
    moved = tmp_path / archive.name
    shutil.move(archive, moved)  # the pull brings it back
    try:
        proc = subprocess.Popen(
            _argv(app, ("offsite", "pull", str(target), "--decrypt", "--identity", str(identity))),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_signals,
        )
        while proc.poll() is None and not archive.exists():
            time.sleep(0.0005)
        time.sleep(0.01)  # in place: the pull tidies up now
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=GRACE + 5)
        assert archive.exists(), err
        if proc.returncode == 143:
            assert err.strip().splitlines()[-1] == (
                f"aica-backup: interrupted: {archive.name} was downloaded into {app.backups}"
            ), err
        else:
            assert proc.returncode == 0, err
    finally:
        if not archive.exists():
            shutil.move(moved, archive)
