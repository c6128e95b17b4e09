"""The end of every run: one log line, and the webhook / heartbeat notifications."""

from __future__ import annotations

import os
from typing import Any

from ..config import Settings
from ..notify import Notifier, Redactor
from ..runlog import RunLog, outcome_of

# Credentials that may sit in the environment of a backup run, masked in every message.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RCLONE_CONFIG_PASS")


def redactor(s: Settings) -> Redactor:
    return Redactor.from_env_file(
        s.layout().config_path, extra=[os.environ.get(k, "") for k in _SECRET_ENV]
    )


def finished(
    s: Settings,
    operation: str,
    *,
    ok: bool,
    facts: dict[str, Any],
    warning: bool = False,
    notify: bool = True,
) -> list[str]:
    """Log and notify the outcome of a run; return warnings about deliveries that failed.

    ``ok``: the job was done; ``warning``: done, with something to look at (exit 1), which
    the log records as such and the webhook always hears about. ``notify=False``: log only
    (a restore or a verify run by hand).
    """
    redact = redactor(s)
    clean = {k: redact(v) if isinstance(v, str) else v for k, v in facts.items()}
    log = RunLog(s.log_path, max_bytes=s.log.max_bytes, keep=s.log.keep)
    warnings = [w for w in [log.write(operation, outcome_of(ok, warning), clean)] if w]
    if not notify:
        return warnings
    notifier = Notifier(
        webhook_url=s.notify.webhook_url,
        on_success=s.notify.on_success,
        heartbeat_url=s.notify.heartbeat_url,
        timeout=s.notify.timeout,
        redact=redact,
    )
    return warnings + notifier.send(ok, operation, clean, warning=warning)
