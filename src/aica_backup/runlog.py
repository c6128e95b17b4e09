"""One JSON line per run in a rotating log file (the README's "Run log" documents the fields)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .fsutil import adopt_owner, ensure_private_dir

Outcome = Literal["ok", "warning", "failed"]


def outcome_of(ok: bool, warning: bool = False) -> Outcome:
    """``ok``: the job was done; ``warning``: done, with something to look at (exit 1)."""
    if not ok:
        return "failed"
    return "warning" if warning else "ok"


class RunLog:
    """Appends a run's outcome to ``path`` (rotated at ``max_bytes``, ``keep`` old files).

    Every line is one JSON object, whatever the command's own output: ``time`` (local, with
    its offset), ``operation``, ``outcome`` (``ok``, ``warning`` or ``failed``), ``ok`` (the
    job was done: ``outcome`` is not ``failed``), then the run's facts.
    """

    def __init__(self, path: Path | None, *, max_bytes: int = 1_000_000, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, operation: str, outcome: Outcome, facts: dict[str, Any]) -> str | None:
        """Append one line; return a warning instead of failing if the log cannot be written."""
        if self.path is None:
            return None
        now = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
        record: dict[str, Any] = {"time": now, "operation": operation, "outcome": outcome}
        record["ok"] = outcome != "failed"
        line = json.dumps(
            {**record, **{k: v for k, v in facts.items() if k not in record}},
            default=str,
            ensure_ascii=False,
        )
        try:
            ensure_private_dir(self.path.parent)
            # created private, and a refusal raised here: the handler would only print it
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=self.max_bytes, backupCount=self.keep, encoding="utf-8"
            )
        except Exception as exc:
            return f"cannot write log file {self.path}: {exc}"
        try:
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        finally:
            handler.close()
        try:
            self.path.chmod(0o600)
        except OSError as exc:
            return f"cannot make log file {self.path} private: {exc}"
        adopt_owner(self.path)
        return None
