"""Load on the app: write latency of the reference backend without and with a backup running.

The repository's ``backend/main.py`` and ``backend/database.py`` are copied into a copy of the
generated app root and started the way the guide starts them (``cd backend && python -m
uvicorn main:app``) on 127.0.0.1. A steady, bounded stream of ``POST /api/notes`` requests
(``--load-rate`` per second, open loop: each request has a scheduled start) runs the whole
time; windows without a backup alternate with windows during ``aica-backup backup``. Latency
is measured from a request's *scheduled* start to its response, so a stalled server is not
hidden by the client waiting (no coordinated omission). A control window as long as the backup,
with a busy loop at the lowest CPU priority on every core, shows what any work beside the app
costs it on the machine at hand.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import Sample, median, run, settle

BODY = ("Benchmark note. " * 30).strip()


@dataclass
class Request:
    scheduled: float
    latency: float
    ok: bool


@dataclass
class LoadClient:
    port: int
    rate: float
    workers: int = 4
    results: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.t0 = time.perf_counter() + 0.1
        for k in range(self.workers):
            t = threading.Thread(target=self._worker, args=(k,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _worker(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        payload = json.dumps({"title": "bench", "body": BODY}).encode()
        headers = {"Content-Type": "application/json"}
        i = 0
        while not self._stop.is_set():
            scheduled = self.t0 + (i * self.workers + k) / self.rate
            i += 1
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ok = False
            try:
                conn.request("POST", "/api/notes", payload, headers)
                resp = conn.getresponse()
                body = resp.read()
                ok = 200 <= resp.status < 300
                if not ok and len(self.errors) < 5:
                    self.errors.append(f"HTTP {resp.status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.results.append(Request(scheduled, time.perf_counter() - scheduled, ok))
        conn.close()

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in list(self.results) if start <= r.scheduled < end]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def backend(app: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    """Start the reference backend on the app at ``app``; yield its port."""
    port = free_port()
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=app / "backend", env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    tail = log.read_text()[-800:]
                    raise RuntimeError(f"backend exited {proc.returncode}: {tail}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("backend did not start within 60 s")
                time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prepare_app(src_app: Path, repo: Path, dest: Path, env: dict[str, str]) -> str | None:
    """Copy the data set and the reference backend into ``dest``; None, or why it can't run."""
    backend_src = repo / "backend"
    if not (backend_src / "main.py").exists() or not (backend_src / "database.py").exists():
        return "backend/main.py is not in this checkout yet: load test skipped"
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return "uvicorn is not installed (pip install 'aica-backup[backend]'): load test skipped"
    dest.mkdir(parents=True)
    for rel in ("backend", "public", ".env.production"):
        subprocess.run(["cp", "-a", str(src_app / rel), str(dest / rel)], check=True)
    for f in backend_src.glob("*.py"):
        shutil.copy2(f, dest / "backend" / f.name)
    # The guide's own step: the backend's init_db on this database (a no-op when the schema fits).
    proc = subprocess.run([sys.executable, "-c", "from database import init_db; init_db()"],
                          cwd=dest / "backend", env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return f"backend init_db failed on the data set: {proc.stderr.strip()[-400:]}"
    return None


BUSY = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""


def busy_loop(seconds: float) -> None:
    """Keep every core this process may use busy for ``seconds`` at the lowest CPU priority
    (SCHED_IDLE, which the backup also takes): a control window. The loops are started from a
    thread that is in that class already (Linux schedules threads, and a child inherits its
    parent thread's class), so not even their interpreter's start-up runs at normal priority.
    On the 2-vCPU VM of the README even one such loop doubled the app's write p99: this is the
    floor for any work running beside the app."""

    def start() -> list[subprocess.Popen[bytes]]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
        argv = [sys.executable, "-c", BUSY, str(seconds)]
        return [subprocess.Popen(argv) for _ in os.sched_getaffinity(0)]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        procs = pool.submit(start).result()
    failed = sum(proc.wait() != 0 for proc in procs)
    if failed:
        raise RuntimeError(f"{failed} of {len(procs)} busy loops failed")


def measure_load(
    app: Path,
    aica: list[str],
    env: dict[str, str],
    *,
    rounds: int,
    rate: float,
    idle_seconds: float,
    log: Path,
) -> dict[str, Any]:
    """Alternate idle windows and backup windows under a steady write load."""
    idle: list[Request] = []
    busy: list[Request] = []
    control: list[Request] = []  # beside busy_loop: what any work costs the app on this machine
    per_round: list[dict[str, Any]] = []
    backups: list[Sample] = []
    with backend(app, env, log) as port:
        client = LoadClient(port, rate)
        client.start()
        try:
            time.sleep(2.0)  # warm-up, not counted
            for _ in range(rounds):
                shutil.rmtree(app / "backups", ignore_errors=True)
                settle()
                time.sleep(1.0)
                a = time.perf_counter()
                time.sleep(idle_seconds)
                b = time.perf_counter()
                sample = run([*aica, "--root", str(app), "backup", "--no-prune", "--json"],
                             env=env, name="backup under load")
                c = time.perf_counter()
                backups.append(sample)
                time.sleep(0.5)
                d = time.perf_counter()
                busy_loop(sample.wall)
                e = time.perf_counter()
                time.sleep(0.5)
                w_idle, w_busy = client.between(a, b), client.between(b, c)
                w_control = client.between(d, e)
                idle += w_idle
                busy += w_busy
                control += w_control
                per_round.append({
                    "idle_p99": percentile([r.latency for r in w_idle], 99),
                    "backup_p99": percentile([r.latency for r in w_busy], 99),
                    "control_p99": percentile([r.latency for r in w_control], 99),
                    "backup_seconds": sample.wall,
                })
        finally:
            client.stop()
    shutil.rmtree(app / "backups", ignore_errors=True)

    def stats(reqs: list[Request]) -> dict[str, Any]:
        lat = [r.latency for r in reqs]
        return {"requests": len(reqs), "failed": sum(not r.ok for r in reqs),
                "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                "max": max(lat) if lat else float("nan")}

    result = {
        "rate": rate,
        "idle": stats(idle),
        "backup": stats(busy),
        "control": stats(control),
        "rounds": per_round,
        "backup_wall": median([s.wall for s in backups]),
        "errors": client.errors,
    }
    result["p99_ratio"] = result["backup"]["p99"] / result["idle"]["p99"]
    result["p50_ratio"] = result["backup"]["p50"] / result["idle"]["p50"]
    result["control_p99_ratio"] = result["control"]["p99"] / result["idle"]["p99"]
    return result
