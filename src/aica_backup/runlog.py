"""One line per run in a rotating log file: text by default, JSON lines with ``--json``."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fsutil import ensure_private_dir


class RunLog:
    """Appends a run's outcome to ``path`` (rotated at ``max_bytes``, ``keep`` old files)."""

    def __init__(
        self,
        path: Path | None,
        *,
        json_lines: bool = False,
        max_bytes: int = 1_000_000,
        keep: int = 5,
    ) -> None:
        self.path = path
        self.json_lines = json_lines
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, operation: str, ok: bool, facts: dict[str, Any]) -> str | None:
        """Append one line; return a warning instead of failing if the log cannot be written."""
        if self.path is None:
            return None
        now = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
        if self.json_lines:
            line = json.dumps(
                {"time": now, "operation": operation, "ok": ok, **facts},
                default=str,
                ensure_ascii=False,
            )
        else:
            fields = " ".join(f"{k}={_text(v)}" for k, v in facts.items() if v not in (None, ""))
            line = f"{now} {operation} {'ok' if ok else 'FAILED'} {fields}".rstrip()
        try:
            ensure_private_dir(self.path.parent)
            handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=self.max_bytes, backupCount=self.keep, encoding="utf-8"
            )
        except Exception as exc:
            return f"cannot write log file {self.path}: {exc}"
        try:
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        finally:
            handler.close()
        self.path.chmod(0o600)
        return None


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text
