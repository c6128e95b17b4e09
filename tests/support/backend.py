"""The real reference backend (backend/main.py on uvicorn) in a throw-away app root, and load.

- :func:`install_backend` copies ``backend/main.py`` and ``backend/database.py`` into an app
  tree made by :func:`tests.support.app.make_app`, with a fresh database made by ``init_db``.
- :func:`running_backend` starts ``python -m uvicorn main:app`` from ``<root>/backend`` on a
  free port of 127.0.0.1, waits for ``/health`` and always stops it (terminate, then kill).
- :class:`WriteLoad` sends a bounded stream of ``POST /api/notes`` from a separate process
  and reports every request's latency, failure, and the committed id with when it was acked.

Fixtures: ``backend_app`` (the installed tree) and ``backend`` (a running server on it).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import App, make_app

BACKEND_SRC = Path(__file__).resolve().parents[2] / "backend"
BACKEND_FILES = ("main.py", "database.py")
# Variables that would point the backend at another app or database than the test's.
_BACKEND_ENV = ("AICA_DB_PATH", "AICA_APP_ROOT", "AICA_MAX_UPLOAD_BYTES", "AICA_HEALTH_CHECK_TTL")


def install_backend(root: Path, *, rows: int = 0) -> App:
    """A sample app (uploads, config) whose database is the backend's own, made by init_db.

    ``make_app``'s database has its own small schema, so it is replaced by the real one;
    ``rows`` notes are then added through plain sqlite3.
    """
    app = make_app(root, rows=0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{app.db}{suffix}").unlink(missing_ok=True)
    for name in BACKEND_FILES:
        shutil.copy2(BACKEND_SRC / name, app.db.parent / name)
    subprocess.run(
        [sys.executable, "-c", "from database import init_db; init_db()"],
        cwd=app.db.parent,
        env=backend_env(),
        check=True,
        timeout=60,
    )
    if rows:
        seed_notes(app.db, rows)
    return app


def seed_notes(db: Path, rows: int, body_bytes: int = 64, batch: int = 20_000) -> None:
    """Add ``rows`` notes of about ``body_bytes`` of random hex text each (half compressible)."""
    conn = sqlite3.connect(db)
    try:
        done = 0
        while done < rows:
            n = min(batch, rows - done)
            blob = os.urandom(n * body_bytes // 2).hex()
            conn.executemany(
                "INSERT INTO notes(title, body) VALUES (?, ?)",
                (
                    (f"seed {done + i}", blob[i * body_bytes : (i + 1) * body_bytes])
                    for i in range(n)
                ),
            )
            conn.commit()
            done += n
    finally:
        conn.close()


def backend_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _BACKEND_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    """A running backend process."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base_url + path

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of ``GET /health``."""
        r = httpx.get(self.url("/health"), timeout=10)
        return r.status_code, r.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # uvicorn shuts down gracefully: lifespan closes the connections
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _start(root: Path, port: int, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # a file, not a pipe: a full pipe would stall the server
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=root / "backend",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """True once /health answers (any status); False if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=5)
            return True
        time.sleep(0.05)
    raise TimeoutError(f"backend did not answer {url} within {timeout:.0f} s")


@contextlib.contextmanager
def running_backend(
    root: Path, *, env: dict[str, str] | None = None, timeout: float = 30
) -> Iterator[Backend]:
    """Start the backend of ``root`` on a free port; stop it on exit, whatever happened."""
    log_path = root.parent / f"{root.name}-backend.log"
    full_env = backend_env(env)
    for _attempt in range(3):
        port = free_port()
        offset = log_path.stat().st_size if log_path.exists() else 0
        process = _start(root, port, log_path, full_env)
        try:
            ready = _wait_ready(process, f"http://127.0.0.1:{port}/health", timeout)
        except BaseException:
            _stop(process)
            raise
        if ready:
            break
        _stop(process)
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            output = fh.read().decode(errors="replace")
        # Another process may grab the free port before uvicorn binds it: try another one.
        if "address already in use" not in output.lower():
            raise RuntimeError(f"backend exited at start-up:\n{output}")
    else:
        raise RuntimeError(f"backend found no free port:\n{log_path.read_text(errors='replace')}")
    try:
        yield Backend(root, port, process, log_path)
    finally:
        _stop(process)


@pytest.fixture
def backend_app(tmp_path: Path) -> App:
    """An app tree with the real backend installed and its database initialised."""
    return install_backend(tmp_path / "app")


@pytest.fixture
def backend(backend_app: App) -> Iterator[Backend]:
    """The real backend serving ``backend_app`` on 127.0.0.1."""
    with running_backend(backend_app.root) as server:
        yield server


# -- write load from another process ------------------------------------------------------------


@dataclass
class Sent:
    """One request of the load: when it left and came back (wall clock), and what it got."""

    started: float
    finished: float
    latency: float  # seconds, monotonic
    status: int | None
    note_id: int | None
    created_at: str | None  # the server's commit time, as it answered
    error: str | None


@dataclass
class LoadReport:
    requests: list[Sent] = field(default_factory=list)

    @property
    def failures(self) -> list[Sent]:
        return [r for r in self.requests if r.error is not None or r.status != 201]

    @property
    def committed(self) -> list[tuple[int, float]]:
        """(note id, wall time the commit was acknowledged) of every successful write."""
        return [(r.note_id, r.finished) for r in self.requests if r.note_id is not None]

    @property
    def max_latency(self) -> float:
        return max((r.latency for r in self.requests), default=0.0)


def _load_main(
    base_url: str, count: int, seconds: float, pause: float, out: str, started: Event, stop: Event
) -> None:
    """Child process: POST notes one after another until ``count``, ``seconds`` or ``stop``."""
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for i in range(count):
            if stop.is_set() or time.monotonic() > deadline:
                break
            t0, m0 = time.time(), time.perf_counter()
            status: int | None = None
            note_id: int | None = None
            created_at: str | None = None
            error: str | None = None
            try:
                r = client.post("/api/notes", json={"title": f"load {i}", "body": f"load-{i}"})
                status = r.status_code
                if status == 201:
                    body = r.json()
                    note_id, created_at = int(body["id"]), str(body["created_at"])
                else:
                    error = r.text[:200]
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - m0
            results.append(
                {
                    "started": t0,
                    "finished": time.time(),
                    "latency": latency,
                    "status": status,
                    "note_id": note_id,
                    "created_at": created_at,
                    "error": error,
                }
            )
            if note_id is not None:
                started.set()
            if pause:
                time.sleep(pause)
    Path(out).write_text(json.dumps(results))


class WriteLoad:
    """A bounded stream of writes from a separate process (its own GIL, like a real client).

    Use as a context manager; :meth:`wait_started` returns once a first write committed,
    :meth:`finish` stops the stream and returns the :class:`LoadReport`. The child stops by
    itself after ``count`` requests or ``seconds``, and is killed on exit if still running.
    """

    def __init__(
        self,
        base_url: str,
        out: Path,
        *,
        count: int = 10_000,
        seconds: float = 30,
        pause: float = 0.002,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of pytest's threads and sockets
        self._started = ctx.Event()
        self._stop = ctx.Event()
        self._out = out
        self._seconds = seconds
        self._process = ctx.Process(
            target=_load_main,
            args=(base_url, count, seconds, pause, str(out), self._started, self._stop),
            daemon=True,
        )

    def __enter__(self) -> WriteLoad:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(10)

    def wait_started(self, timeout: float = 15) -> None:
        if not self._started.wait(timeout):
            raise TimeoutError("the write load committed nothing")

    def finish(self) -> LoadReport:
        self._stop.set()
        self._process.join(self._seconds + 30)
        if self._process.exitcode != 0:
            raise RuntimeError(f"write load process exited with {self._process.exitcode}")
        rows = json.loads(self._out.read_text())
        return LoadReport([Sent(**r) for r in rows])
