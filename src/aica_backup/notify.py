"""Tell someone how a run went: a Slack-compatible webhook and a heartbeat URL.

The webhook gets a JSON body with ``text`` (what Slack shows) and the facts as fields; the
heartbeat follows the healthchecks.io convention (``URL`` on success, ``URL/fail`` on
failure). Every message passes through a :class:`Redactor` first, so no secret from
``.env.production`` or a URL's credentials ever leaves the machine. A notification that
cannot be delivered is reported back as a warning; it never fails the backup itself.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_MIN_SECRET = 4
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


@dataclass
class Redactor:
    """Replaces known secret values (and URL credentials) with ``***``."""

    secrets: list[str] = field(default_factory=list)

    @classmethod
    def from_env_file(cls, path: Path, extra: Iterable[str] = ()) -> Redactor:
        """Every value of a dotenv file (KEY=VALUE lines) counts as a secret."""
        values = [v for v in extra if v]
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            value = line.split("=", 1)[1].strip().strip("'\"")
            values.append(value)
        # Longest first, so a secret containing another is masked whole.
        return cls(sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def safe_url(url: str) -> str:
    """A URL for display: credentials and query string removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Notifier:
    webhook_url: str = ""
    on_success: bool = False
    heartbeat_url: str = ""
    timeout: float = 10
    redact: Redactor = field(default_factory=Redactor)

    def _post(self, url: str, body: dict[str, Any] | None) -> str | None:
        import urllib.error  # only here: most runs notify no one, and it costs 10 ms to load
        import urllib.request

        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(  # noqa: S310 - the operator configured this URL
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"notification to {safe_url(url)} failed: {self.redact(str(exc))}"
        return None

    def send(
        self, ok: bool, operation: str, facts: dict[str, Any], *, warning: bool = False
    ) -> list[str]:
        """Deliver the outcome; return warnings for deliveries that failed.

        A run that was done with a warning (``ok`` and ``warning``: files skipped, a component
        gone since the last backup, an offsite copy failed) always reaches the webhook, even
        without ``on_success``; the heartbeat gets a success ping (the archive exists).
        """
        warnings: list[str] = []
        host = socket.gethostname()
        if ok and warning:
            text = f"aica-backup {operation} finished with a WARNING on {host}"
            if facts.get("archive"):
                text += f": {facts['archive']}"
            text += f": {facts.get('warning') or facts.get('error') or 'see the log'}"
        elif ok:
            text = f"aica-backup {operation} succeeded on {host}"
            if facts.get("archive"):
                text += f": {facts['archive']}"
        else:
            text = (
                f"aica-backup {operation} FAILED on {host}: {facts.get('error', 'unknown error')}"
            )
        body: dict[str, Any] = {"text": self.redact(text), "ok": ok, "operation": operation}
        body["host"] = host
        body["outcome"] = "failed" if not ok else "warning" if warning else "ok"
        body.update({k: self.redact(v) if isinstance(v, str) else v for k, v in facts.items()})
        wanted = self.webhook_url and (not ok or warning or self.on_success)
        if wanted and (problem := self._post(self.webhook_url, body)):
            warnings.append(problem)
        if self.heartbeat_url:
            url = self.heartbeat_url.rstrip("/") + ("" if ok else "/fail")
            if problem := self._post(url, body):
                warnings.append(problem)
        return warnings
