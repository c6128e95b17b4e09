"""Retries with exponential backoff, as a wrapper around any storage (restic's habit).

Backends stay simple and report every failure at once; this wrapper decides what is worth
another try. Missing objects and access problems are never retried: asking again cannot help.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from .. import interrupt
from ..errors import StorageError
from .base import AccessError, NotFoundError, ObjectInfo, Storage

T = TypeVar("T")
# on_retry(storage location, attempt number that failed, the error, seconds until the next)
OnRetry = Callable[[str, int, StorageError, float], None]


class RetryingStorage:
    """``inner`` with up to ``retries`` more attempts after a transient failure."""

    def __init__(
        self,
        inner: Storage,
        retries: int = 3,
        *,
        delay: float = 1.0,
        max_delay: float = 30.0,
        sleep: Callable[[float], object] = interrupt.STOP.wait,  # a pause Ctrl-C ends
        on_retry: OnRetry | None = None,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.retries = max(0, retries)
        self.delay = delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._on_retry = on_retry

    def _call(self, op: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
        attempt = 0
        while True:
            try:
                return op()
            except (NotFoundError, AccessError):
                raise
            except StorageError as exc:
                interrupt.check()  # the failure may be the interruption itself (rclone's)
                attempt += 1
                if attempt > self.retries:
                    if self.retries:
                        exc.message = f"{exc.message} (gave up after {attempt} attempts)"
                        exc.args = (exc.message,)
                    raise
                # Full jitter: targets failing together do not retry in lockstep.
                pause = min(self.max_delay, self.delay * 2 ** (attempt - 1))
                pause *= random.uniform(0.5, 1.0)  # noqa: S311 - not for security
                if self._on_retry is not None:
                    self._on_retry(self.location, attempt, exc, pause)
                self._sleep(pause)
                interrupt.check()
                if before_retry is not None:
                    before_retry()

    def put(self, name: str, src: Path) -> None:
        self._call(lambda: self.inner.put(name, src))

    def get(self, name: str, dest: IO[bytes]) -> None:
        """A retried download starts over: ``dest`` is rewound, so it must be seekable for
        retries (a non-seekable one gets a single attempt)."""
        if not dest.seekable():
            self.inner.get(name, dest)
            return
        start = dest.tell()

        def rewind() -> None:
            dest.seek(start)
            dest.truncate()

        self._call(lambda: self.inner.get(name, dest), rewind)

    def list(self) -> list[ObjectInfo]:
        return self._call(self.inner.list)

    def delete(self, name: str) -> None:
        self._call(lambda: self.inner.delete(name))

    def stat(self, name: str) -> ObjectInfo | None:
        return self._call(lambda: self.inner.stat(name))
