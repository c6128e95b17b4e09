"""Health checks around stop/start: every way a URL can fail is a plain failure."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

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
