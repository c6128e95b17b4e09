"""docs/backup-guide.ja.md: every ```bash block runs, in order, as an operator would type it.

The blocks run with ``bash -e`` in a throw-away app root holding the repository's scripts,
Makefile and backend, and the tool in ``.venv`` (on PATH, as activated), on a pseudo-terminal
so the guided restore asks its questions; the test answers like an operator (Enter for the
newest backup, "yes" to confirm). Port 8000 is replaced by a free port, and the backend the
guide starts is stopped at the end.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.backend import free_port, install_backend

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "backup-guide.ja.md"
ANSWERS = {b"Restore which backup?": b"\n", b"[yes/no]": b"yes\n"}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def run_on_terminal(
    script: str, cwd: Path, env: dict[str, str], timeout: float = 180
) -> tuple[int, str]:
    """Run ``script`` with ``bash -e`` on a pty, answering the restore prompts.

    The script goes through a file, not ``bash -c``, so that its text is not in the command
    line (where ``pkill -f`` in the guide would find it, as it never would in a terminal).
    """
    path = cwd.parent / f"block-{time.monotonic_ns()}.sh"
    path.write_text(script)
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(cwd)
        os.execve("/bin/bash", ["bash", "-e", str(path)], env)  # noqa: S606 - fixed program
    seen = b""
    answered = 0
    status: int | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            pending = seen[answered:]
            for prompt, answer in ANSWERS.items():
                at = pending.find(prompt)
                if at >= 0:
                    os.write(fd, answer)
                    answered += at + len(prompt)
                    pending = seen[answered:]
        if status is None:  # reap once: a second waitpid on a reaped child raises ECHILD
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            status = wait_status if done else None
        if status is not None and not select.select([fd], [], [], 0.2)[0]:
            break
    else:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise AssertionError(f"timed out:\n{seen.decode(errors='replace')}")
    if status is None:  # the terminal closed before the child was reaped
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_every_command_of_the_guide_runs(tmp_path: Path) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    blocks = bash_blocks(text)
    assert len(blocks) >= 15
    # Only this app's processes: a pattern kill would stop every uvicorn on the host.
    assert not any("pkill" in block or "killall" in block for block in blocks)
    app = install_backend(tmp_path / "aica-sys", rows=50)
    # scripts/ and the Makefile come from the guide's own `aica-backup init`; the SQLite
    # maintenance script is copied as the guide's maintenance section assumes.
    (app.root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "sqlite-optimization.py", app.root / "scripts")
    # The app root as the README sets it up: the tool (with the backend's extras) in .venv,
    # activated as the guide says; this checkout's own venv is not on PATH.
    venv_bin = app.root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, run in (("python", ""), ("aica-backup", " -m aica_backup")):
        (venv_bin / name).write_text(f'#!/bin/sh\nexec {sys.executable}{run} "$@"\n')
        (venv_bin / name).chmod(0o755)
    own_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != own_bin]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AICA_", "VIRTUAL_ENV"))},
        "PATH": os.pathsep.join([str(venv_bin), *path]),
        "TERM": "dumb",
        "COLUMNS": "120",
    }
    try:
        for i, block in enumerate(blocks):
            script = block.replace("8000", str(port))
            code, output = run_on_terminal(script, app.root, env)
            assert code == 0, f"block {i + 1} failed ({code}):\n{block}\n--- output ---\n{output}"
            if "PRAGMA integrity_check" in block:
                assert "ok" in output
            if "/health" in block:
                assert '"status"' in output
        backups = sorted(p.name for p in (app.root / "backups").glob("backup_*.tar.gz"))
        assert len(backups) >= 3
        assert list((app.root / "backups").glob("pre-restore_*.tar.gz"))
    finally:
        subprocess.run(["pkill", "-f", f"[u]vicorn main:app --port {port}"], check=False)
