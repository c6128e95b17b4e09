"""Restore with the real reference backend running: refuse, or stop / restore / start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.app import App
from tests.support.backend import Backend, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_restore_refuses_while_the_backend_serves(backend: Backend, backend_app: App) -> None:
    app = backend_app
    app.run("backup")
    with backend.client() as client:
        client.post("/api/notes", json={"title": "after backup", "body": "state B"})
    proc = app.run("restore", "--yes", check=False)
    assert proc.returncode == 9
    assert f"pid {backend.pid}" in proc.stderr
    with backend.client() as client:  # still serving, untouched
        assert client.get("/health").status_code == 200


def _service_scripts(app: App, port: int) -> tuple[str, str]:
    """start/stop shell commands for the backend, as an operator would configure them."""
    pid_file = app.root / "backend.pid"
    start = (
        f"cd {app.root}/backend || exit 1; nohup {sys.executable} -m uvicorn main:app "
        f"--host 127.0.0.1 --port {port} >> {app.root}/backend.log 2>&1 & echo $! > {pid_file}"
    )
    stop = f"kill $(cat {pid_file})"
    return start, stop


def _wait_health(url: str, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never became healthy")
        time.sleep(0.2)


@contextlib.contextmanager
def _started(app: App, start: str) -> Iterator[None]:
    """Start the backend with the operator's start command; stop whatever runs at the end."""
    subprocess.run(["bash", "-c", start], check=True)
    try:
        yield
    finally:
        pid_file = app.root / "backend.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_stop_restore_start_and_serve_the_restored_data(backend_app: App) -> None:
    app = backend_app
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start, stop = _service_scripts(app, port)
    (app.root / "aica-backup.toml").write_text(
        "[restore]\n"
        f"start_command = '''{start}'''\n"
        f"stop_command = '''{stop}'''\n"
        f'health_url = "{base}/health"\n'
        "health_timeout = 30\n"
    )
    with _started(app, start):
        _wait_health(f"{base}/health")
        first = httpx.post(f"{base}/api/notes", json={"title": "A", "body": "in state A"}).json()
        app.run("backup")
        later = httpx.post(f"{base}/api/notes", json={"title": "B", "body": "after"}).json()
        old_pid = int((app.root / "backend.pid").read_text())

        proc = app.run("restore", "--yes")
        assert "Restored" in proc.stdout

        new_pid = int((app.root / "backend.pid").read_text())
        assert new_pid != old_pid  # it was stopped and started again
        health = _wait_health(f"{base}/health")
        assert health.json()["database"]["ok"] is True
        assert httpx.get(f"{base}/api/notes/{first['id']}").status_code == 200
        assert httpx.get(f"{base}/api/notes/{later['id']}").status_code == 404
        # The restored backend writes to the restored file, not an orphan.
        third = httpx.post(f"{base}/api/notes", json={"title": "C", "body": "new"}).json()
        assert third["id"] == later["id"]  # the restored sequence continues from state A


def test_health_failure_after_restore_rolls_back(backend_app: App, tmp_path: Path) -> None:
    app = backend_app
    port = free_port()
    start, stop = _service_scripts(app, port)
    (app.root / "aica-backup.toml").write_text(
        "[restore]\n"
        f"start_command = '''{start}'''\n"
        f"stop_command = '''{stop}'''\n"
        f'health_url = "http://127.0.0.1:{port}/no-such-endpoint"\n'
        "health_timeout = 5\n"
    )
    with _started(app, start):
        _wait_health(f"http://127.0.0.1:{port}/health")
        app.run("backup")
        note = httpx.post(
            f"http://127.0.0.1:{port}/api/notes", json={"title": "B", "body": "kept"}
        ).json()
        proc = app.run("restore", "--yes", check=False)
        assert proc.returncode == 10, proc.stderr
        assert "rolled back" in proc.stderr
        _wait_health(f"http://127.0.0.1:{port}/health")
        assert httpx.get(f"http://127.0.0.1:{port}/api/notes/{note['id']}").status_code == 200
