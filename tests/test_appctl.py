"""Health checks around stop/start: every way a URL can fail is a plain failure, and a stop
waits until the app's own server has let go of its port."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aica_backup import appctl
from aica_backup.errors import BusyError


@pytest.fixture
def broken_http() -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with a malformed status line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 2\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/health"
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/health", "http://127.0.0.1:1/health"])
def test_bad_or_dead_url_is_not_answering(url: str) -> None:
    assert appctl._answers(url) is False
    with pytest.raises(BusyError, match="health check"):
        appctl.wait_healthy(url, timeout=0.3)


def test_broken_http_is_not_answering(broken_http: str) -> None:
    assert appctl._answers(broken_http) is False
    with pytest.raises(BusyError, match="health check"):
        appctl.wait_healthy(broken_http, timeout=0.3)


# A server that, asked to stop, takes a second to let go of its port (uvicorn finishing its
# requests), and whose health URL answers 404 (a misconfigured one, or the rollback case).
_SLOW_TO_STOP = """
import signal, socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
def stop(*_):
    time.sleep(1.0)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    conn, _ = server.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 404 Not Found\\r\\nContent-Length: 0\\r\\n\\r\\n")
    conn.close()
"""


def test_stop_waits_for_the_apps_own_server_to_let_go_of_its_port(tmp_path: Path) -> None:
    """Otherwise the start command that follows finds the port taken, and the app stays down."""
    app = tmp_path / "app"
    (app / "backend").mkdir(parents=True)
    server = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TO_STOP], cwd=app / "backend", stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/no-such-endpoint"
        assert [p.pid for p in appctl._servers(url, app)] == [server.pid]
        assert appctl._servers(url, tmp_path / "elsewhere") == []  # a proxy in front stays up
        db = app / "backend" / "aica_sys.db"
        appctl.stop_app(f"kill {server.pid}", db, url, timeout=10, root=app)
        assert server.poll() is not None  # gone, port and all, when stop_app returned
    finally:
        server.kill()
        server.wait()
