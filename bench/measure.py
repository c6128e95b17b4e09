"""Run a command (or a sequence of stages) and measure it: wall time, CPU time, peak RSS.

Each stage is its own child process, started through GNU ``/usr/bin/time``, which reaps it
with ``wait4``: the rusage covers the command and every descendant it waited for (``tar`` →
``gzip``, ``sh`` → ``zstd``), so CPU time is the sum over all of them and ``ru_maxrss`` is the
largest *single* process among them. Why the small C launcher: a child forked (or vforked)
from this Python process carries the runner's own resident size into its ``ru_maxrss`` up to
its ``exec`` (Linux keeps the high-water mark across exec), which would bill a 3 MB ``gzip``
for the runner's 30–500 MB. Without GNU time, ``os.wait4`` of the direct child is used and
the report says so. Stages of a pipeline run one after the other; the pipeline's wall and
CPU time are the sums, its peak RSS the largest stage's.
"""

from __future__ import annotations

import os
import signal
import stat
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 3600.0
GNU_TIME = "/usr/bin/time"


def _gnu_time() -> str | None:
    if not os.access(GNU_TIME, os.X_OK):
        return None
    proc = subprocess.run([GNU_TIME, "--version"], capture_output=True, text=True, check=False)
    return GNU_TIME if "GNU" in proc.stdout + proc.stderr else None


TIME = _gnu_time()
RSS_METHOD = ("GNU time (%M: ru_maxrss of the command)" if TIME else
              "os.wait4 of the direct child (GNU time missing: includes the runner's own RSS)")


class CommandFailed(RuntimeError):
    """A measured command exited non-zero (its output is in the message)."""


@dataclass
class Sample:
    """One measured run of one operation."""

    wall: float = 0.0  # seconds
    cpu: float = 0.0  # user + system seconds, descendants included
    rss: int = 0  # peak resident set of the largest single process, bytes
    size: int | None = None  # bytes of the archive / repository it produced, if any
    parts: dict[str, float] = field(default_factory=dict)  # named sub-timings (seconds)
    output: str = ""  # stdout of the last stage

    def add(self, other: Sample) -> None:
        self.wall += other.wall
        self.cpu += other.cpu
        self.rss = max(self.rss, other.rss)
        self.parts.update(other.parts)
        self.output = other.output

    def to_dict(self) -> dict[str, Any]:
        return {"wall": self.wall, "cpu": self.cpu, "rss": self.rss, "size": self.size,
                "parts": self.parts}


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
) -> Sample:
    """Run ``argv`` to completion and measure it (stdout kept, stderr shown on failure)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as usage_file:
        launch = [TIME, "-f", "%U %S %M", "-o", usage_file.name, *argv] if TIME else list(argv)
        t0 = time.perf_counter()
        proc = subprocess.Popen(launch, cwd=cwd, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        # On timeout, kill the command's whole process group (time, the command, its children).
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        cpu, rss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
        if TIME:
            lines = usage_file.read().strip().splitlines()
            try:
                user, system, maxrss_kb = lines[-1].split()
                cpu, rss = float(user) + float(system), int(maxrss_kb) * 1024
            except (IndexError, ValueError):
                pass  # killed before GNU time could write: keep wait4's figures
    if check and proc.returncode != 0:
        raise CommandFailed(
            f"{name or argv[0]} exited {proc.returncode}: {' '.join(argv)}\n"
            f"{stderr.strip()[-2000:]}\n{stdout.strip()[-1000:]}"
        )
    sample = Sample(wall, cpu, rss, output=stdout)
    if name:
        sample.parts[name] = wall
    return sample


def run_stages(stages: Sequence[tuple[str, Sequence[str]]], *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> Sample:
    """Run named stages one after the other; the sample adds them up."""
    total = Sample()
    for name, argv in stages:
        total.add(run(argv, cwd=cwd, env=env, name=name))
    return total


def settle() -> None:
    """Flush dirty pages before a timed step, so one tool's writeback is not billed to the next."""
    os.sync()
    time.sleep(0.2)


def warm(root: Path, skip: tuple[str, ...] = ("backups",)) -> int:
    """Read every regular file under ``root`` once, untimed, so the page cache is warm as the
    report says it is; return the bytes read. Links and special files are left alone, and so
    are top-level folders named in ``skip`` (what an interrupted run left). (A files-test tree
    generated in an earlier session was cold in the first round: 3.3 s instead of 2.0 s.)"""
    total = 0
    buf = bytearray(1 << 20)
    for folder, dirs, files in os.walk(root):
        if folder == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = os.path.join(folder, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def retire(path: Path, graveyard: Path) -> None:
    """Put a finished tree out of the way: free its space now, unlink its files at the end.

    ext4 without a journal (the root file system of many VMs) will not reuse an inode freed in
    the last minute, or six while its inode table block is unwritten: every file created
    scans past each of them (``recently_deleted`` in the kernel). Deleting one round's few
    thousand files then slowed the later extractions of every contender, by up to a second.
    Truncating frees the blocks and keeps the inodes; the caller removes ``graveyard`` once
    the timings are over. Files with other links (archives hard-linked from the app's backups
    folder) are left whole.
    """
    if not path.exists():
        return
    for folder, _dirs, files in os.walk(path):
        for name in files:
            file = os.path.join(folder, name)
            st = os.lstat(file)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size:
                if not st.st_mode & stat.S_IWUSR:  # restic's and borg's read-only files
                    os.chmod(file, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
                os.truncate(file, 0)
    graveyard.mkdir(exist_ok=True)
    path.rename(graveyard / f"{len(os.listdir(graveyard))}-{path.name}")


def tree_size(path: Path) -> int:
    """Bytes of every file under ``path`` (a file: its size)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_size
            except FileNotFoundError:
                continue
    return total


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Medians (and min/max of wall time) over the rounds of one operation."""
    if not samples:
        return {}
    parts: dict[str, float] = {}
    for key in {k for s in samples for k in s.parts}:
        parts[key] = median([s.parts[key] for s in samples if key in s.parts])
    sizes = [float(s.size) for s in samples if s.size is not None]
    return {
        "rounds": len(samples),
        "wall": median([s.wall for s in samples]),
        "wall_min": min(s.wall for s in samples),
        "wall_max": max(s.wall for s in samples),
        "cpu": median([s.cpu for s in samples]),
        "rss": median([float(s.rss) for s in samples]),
        "rss_max": max(s.rss for s in samples),
        "size": median(sizes) if sizes else None,
        "parts": parts,
        "samples": [s.to_dict() for s in samples],
    }
