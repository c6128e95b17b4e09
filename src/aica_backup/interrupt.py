"""Ctrl-C and SIGTERM: one orderly way to stop, whatever a command is doing.

The script's entry point (:mod:`aica_backup.__main__`) calls :func:`install` first thing; the
command line called in-process runs under :func:`handling_signals`. The first
SIGINT or SIGTERM raises in the main thread (``KeyboardInterrupt``, or its subclass
:class:`Terminated`), so every ``finally`` and context manager on the way up removes what it
made and releases the lock, as for any failure; and it sets :data:`STOP`, which the tool's own
threads (database checks, offsite copies) look at between steps, so none of them is waited
for long. Later signals are only recorded: the cleanup they would break off is what leaves the
folders clean, and the tests bound it (well under 2 s). :func:`deferred` holds a signal back
over a few steps that must be all or nothing, and :func:`kept` says what a stopped command
leaves behind on purpose.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP = threading.Event()  # set by the first signal; worker threads look at it
_received: list[int] = []  # every SIGINT or SIGTERM, in order
_deferring: list[str] = []  # one entry per deferred() block the main thread is in
_pending: list[int] = []  # a signal that arrived in such a block
_kept: list[str] = []  # what this process made that stays (see kept())
_settled = False  # the command is over: the process only exits now


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, systemd, docker stop), unwound exactly as Ctrl-C is."""


def received() -> int | None:
    """The first signal that asked this process to stop (SIGINT or SIGTERM), if any."""
    return _received[0] if _received else None


def exit_code() -> int:
    """The exit code of a process stopped by a signal: 143 for SIGTERM, else 130 (Ctrl-C)."""
    return 143 if received() == signal.SIGTERM else 130


def check() -> None:
    """Raise ``KeyboardInterrupt`` (in a worker thread) once the process is stopping."""
    if STOP.is_set():
        raise KeyboardInterrupt


def settle() -> None:
    """The command has finished: a signal from now on changes nothing (the process is
    exiting with the command's own code; an exception raised now would only garble that)."""
    global _settled
    _settled = True


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, _frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    STOP.set()
    if not first or _settled:
        return
    if _deferring:
        _pending.append(signum)
        return
    raise _exception(signum)


def keep(note: str) -> None:
    """Record what this process made that stays however it is stopped from now on (a copy
    finished on a target), for the one line a stopped command says. Any thread may call it."""
    _kept.append(note)


def kept() -> list[str]:
    """What this process made that stays if it is stopped now (say it when stopping)."""
    return list(_kept)


@contextlib.contextmanager
def deferred(note: str) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while the block runs: for a few quick steps that must
    happen all or not at all (publishing a finished archive and indexing it). Once the block
    is done, ``note`` says what it made (:func:`kept`), and a signal that came meanwhile is
    raised."""
    _deferring.append(note)
    try:
        yield
    finally:
        _deferring.pop()
    _kept.append(note)
    if _pending and not _deferring:
        raise _exception(_pending.pop())


def install() -> dict[int, Any]:
    """Turn SIGINT and SIGTERM into the unwinding described above; return the handlers they
    had (empty if they are handled so already, or if this is not the main thread, where
    handlers cannot be set).

    A signal the process was started with ignored (``nohup``, a background job of a script)
    stays ignored: the operator chose that.
    """
    installed = _handler in (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    if installed or threading.current_thread() is not threading.main_thread():
        return {}
    STOP.clear()
    _received.clear()
    _pending.clear()
    _kept.clear()
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, _handler)
    return previous


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """:func:`install` for the ``with`` block (the command line called in-process, by tests);
    the previous handlers come back after it."""
    previous = install()
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
