"""The running app, as restore sees it: who holds the database, stop/start commands, health.

A restore must never leave a running backend writing to a database file that was swapped
away under it. So it finds the processes holding the database (or its -wal/-shm/-journal)
open and either refuses, naming them, or — when the operator configured them — runs the stop
command, waits until the files are free, restores, runs the start command and checks health.
"""

from __future__ import annotations

import http.client
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

from .errors import BusyError
from .holders import Holder, find_holders

DB_SIDE_FILES = ("-wal", "-shm", "-journal")
# Every way a health URL can fail: refused, timed out, a malformed URL (a typo'd port), a
# server speaking broken HTTP. None of them may escape a stop, a start or a rollback.
_HTTP_FAILURES = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


def database_files(db: Path) -> list[Path]:
    """The database and the side files SQLite may keep beside it."""
    return [db] + [db.with_name(db.name + s) for s in DB_SIDE_FILES]


def describe(holders: Sequence[Holder]) -> str:
    return ", ".join(f"pid {h.pid} ({h.cmdline})" for h in holders)


def refuse_if_held(db: Path) -> None:
    """BusyError naming every process that holds the database open."""
    holders = find_holders(database_files(db))
    if holders:
        raise BusyError(
            f"the database is in use by {describe(holders)}",
            hint="stop the backend first, or set restore.stop_command and restore.start_command",
        )


def run_command(command: str, what: str, timeout: float = 120) -> None:
    """Run an operator-configured shell command; BusyError if it fails.

    Output goes to a temp file, not a pipe: a start command that launches a server in the
    background would hold a pipe open and hang us until the timeout.
    """
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run(  # noqa: S602 - the operator's own command line, from config
                command,
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BusyError(f"{what} command did not finish within {timeout:.0f} s") from None
        output.seek(0)
        lines = output.read().decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        last = f": {lines[-1]}" if lines else ""
        raise BusyError(f"{what} command failed with exit code {proc.returncode}{last}")


def stop_app(
    command: str, db: Path, health_url: str = "", timeout: float = 30, root: Path | None = None
) -> None:
    """Run the stop command and wait until no process holds the database.

    Once the files are free it also waits (within the same timeout) for the processes that
    held them, and the app's own server on the health URL's port, to exit, and for
    ``health_url`` to stop answering: a server that closed the database but is still
    shutting down keeps its port, and the start command that follows would fail to bind it.
    (The reference backend opens the database per request, so between requests it holds
    nothing; and a health URL that answers 404 looks stopped already.)
    """
    before = [p for h in find_holders(database_files(db)) if (p := _process(h.pid))]
    held = {p.pid for p in before}
    before += [p for p in _servers(health_url, root) if p.pid not in held]
    run_command(command, "stop")
    deadline = time.monotonic() + timeout
    while True:
        holders = find_holders(database_files(db))
        if not holders:
            psutil.wait_procs(before, timeout=max(0.0, deadline - time.monotonic()))
            while health_url and _answers(health_url) and time.monotonic() < deadline:
                time.sleep(0.2)
            return
        if time.monotonic() > deadline:
            raise BusyError(
                f"after the stop command the database is still held by {describe(holders)}"
            )
        time.sleep(0.2)


def _servers(health_url: str, root: Path | None) -> list[psutil.Process]:
    """Processes listening on ``health_url``'s local port that run inside ``root`` (the app's
    own server; a proxy in front of it runs elsewhere and stays up)."""
    if not health_url or root is None:
        return []
    try:
        url = urllib.parse.urlsplit(health_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        connections = psutil.net_connections(kind="tcp")
    except (ValueError, psutil.Error):
        return []
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    found = []
    top = root.resolve()
    for c in connections:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port != port or not c.pid:
            continue
        try:
            process = psutil.Process(c.pid)
            if Path(process.cwd()).resolve().is_relative_to(top):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _answers(url: str) -> bool:
    """Whether the app still answers 200 at ``url``. An error status counts as gone: a proxy
    in front of a stopped app answers 502, and must not hold the restore up."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - configured URL
            return bool(response.status == 200)
    except _HTTP_FAILURES:  # HTTPError included
        return False


def wait_healthy(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; BusyError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - configured URL
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except _HTTP_FAILURES as exc:
            last = str(getattr(exc, "reason", exc)) or type(exc).__name__
        time.sleep(0.5)
    raise BusyError(f"health check {url} failed after {timeout:.0f} s: {last}")
