"""Notifications reach a real local HTTP server, and never carry a secret."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aica_backup.notify import Redactor, safe_url
from tests.support.app import SECRET, App


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, object]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length) if length else b""
                receiver.requests.append((self.path, json.loads(body) if body else {}))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def configure(app: App, receiver: Receiver, on_success: bool = False) -> None:
    (app.root / "aica-backup.toml").write_text(
        "[notify]\n"
        f'webhook_url = "{receiver.url}/hooks/slack"\n'
        f'heartbeat_url = "{receiver.url}/ping/abc"\n'
        f"on_success = {'true' if on_success else 'false'}\n"
    )


def test_failure_webhook_has_the_error_and_no_secret(app: App, receiver: Receiver) -> None:
    configure(app, receiver)
    app.db.write_bytes(b"not a database at all " + SECRET.encode())
    proc = app.run("backup", check=False)
    assert proc.returncode == 5
    paths = [p for p, _ in receiver.requests]
    assert "/hooks/slack" in paths
    assert "/ping/abc/fail" in paths
    hook = next(body for p, body in receiver.requests if p == "/hooks/slack")
    assert hook["ok"] is False
    assert "FAILED" in str(hook["text"]) and "database" in str(hook["error"])
    for _, body in receiver.requests:
        assert SECRET not in json.dumps(body)
    assert SECRET not in proc.stderr + proc.stdout


def test_success_pings_heartbeat_and_optionally_the_webhook(app: App, receiver: Receiver) -> None:
    configure(app, receiver)
    app.run("backup")
    assert [p for p, _ in receiver.requests] == ["/ping/abc"]
    receiver.requests.clear()
    configure(app, receiver, on_success=True)
    app.run("backup")
    paths = sorted(p for p, _ in receiver.requests)
    assert paths == ["/hooks/slack", "/ping/abc"]
    hook = next(body for p, body in receiver.requests if p == "/hooks/slack")
    assert str(hook["archive"]).startswith("backup_") and int(hook["size"]) > 0  # type: ignore[call-overload]


def test_unreachable_webhook_is_a_warning_not_a_failure(app: App) -> None:
    (app.root / "aica-backup.toml").write_text(
        '[notify]\nheartbeat_url = "http://127.0.0.1:9/nothing-listens-here"\n'
    )
    proc = app.run("backup")
    assert proc.returncode == 0
    assert "notification" in proc.stderr


def test_one_log_line_per_run(app: App) -> None:
    app.run("backup")
    app.run("backup", "--json")
    log = (app.backups / ".aica-backup" / "aica-backup.log").read_text().splitlines()
    assert len(log) == 2
    # one format whatever the output (issue 14, item 15): a JSON object a line
    first, second = map(json.loads, log)
    assert first["operation"] == second["operation"] == "backup"
    assert first["outcome"] == second["outcome"] == "ok" and first["ok"] is True
    assert first["archive"].startswith("backup_") and first["time"][:4].isdigit()
    assert (app.backups / ".aica-backup" / "aica-backup.log").stat().st_mode & 0o077 == 0


def test_redactor() -> None:
    r = Redactor(["hunter22"])
    assert r("password hunter22 in https://user:pw@host/x") == "password *** in https://***@host/x"
    assert safe_url("https://u:p@hc-ping.com/uuid?x=1") == "https://hc-ping.com/uuid"
