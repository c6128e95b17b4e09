"""Durability helpers: the background writeback never leaks descriptors or loses data."""

from __future__ import annotations

import os
from pathlib import Path

from aica_backup.fsutil import BackgroundWriteback, sync_to_disk


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_background_writeback_keeps_data_and_closes_its_descriptors(tmp_path: Path) -> None:
    before = _open_fds()
    files = {tmp_path / f"f{i}": os.urandom(size) for i, size in enumerate([10, 2 << 20, 5 << 20])}
    with BackgroundWriteback(min_size=1 << 20, limit=1) as flusher:
        for path, data in files.items():
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                flusher.file_done(f.fileno(), len(data))
    sync_to_disk(tmp_path)
    assert _open_fds() == before
    assert all(path.read_bytes() == data for path, data in files.items())
