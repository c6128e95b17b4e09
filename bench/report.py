"""The machine, and the results as Markdown: one table of medians with ratios, then the targets."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

MB = 1_000_000
TOOL_VERSION_COMMANDS = {
    "sqlite3": ["sqlite3", "--version"],
    "tar": ["tar", "--version"],
    "gzip": ["gzip", "--version"],
    "zstd": ["zstd", "--version"],
    "restic": ["restic", "version"],
    "borg": ["borg", "--version"],
}


def _version(argv: list[str]) -> str:
    """The version number a tool prints (the first x.y[.z] of its first line)."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (proc.stdout or proc.stderr).strip()
    first = text.splitlines()[0] if text else "?"
    m = re.search(r"\d+\.\d+(?:\.\d+)?", first)
    return m.group(0) if m else first


def _git(repo: Path) -> str:
    """The checkout aica-backup ran from: commit, and whether the work tree differs from it."""
    if shutil.which("git") is None:
        return "?"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    status = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status",
                             "--porcelain", "--untracked-files=no", "--", "src"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return f"{head or '?'}{' + uncommitted changes in src/' if status else ''}"


def _filesystem(path: Path) -> str:
    """The file system under ``path``: its type and, for ext4, whether it keeps a journal
    (without one, creating files is slowed by recent deletions: see ``measure.retire``) and
    whether it discards freed blocks at once (deleting is slower)."""
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(path)],
                           capture_output=True, text=True, check=False).stdout.split()
    if len(found) < 3:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                              text=True, check=False).stdout.strip()
    fstype, source, options = found[:3]
    notes = [fstype]
    device = os.path.basename(source)
    if fstype == "ext4" and os.path.isdir(f"/proc/fs/ext4/{device}"):
        journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
        has = any(name.startswith(device + "-") for name in journals)
        notes.append("with a journal" if has else "without a journal")
    if "discard" in options.split(","):
        notes.append("mounted with discard")
    return ", ".join(notes)


def machine_info(data_dir: Path, aica: list[str], repo: Path) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.MULTILINE)
            cpu = m.group(1).strip() if m else platform.processor() or "?"
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as fh:
            m = re.search(r"^MemTotal:\s+(\d+) kB", fh.read(), re.MULTILINE)
            mem = int(m.group(1)) * 1024 if m else 0
    except OSError:
        pass
    fs = _filesystem(data_dir)
    versions = {name: _version(cmd) for name, cmd in TOOL_VERSION_COMMANDS.items()}
    versions["aica-backup"] = _version([*aica, "--version"])
    versions["aica-backup checkout"] = _git(repo)
    try:
        import isal  # the compressor aica-backup uses for gzip

        versions["python-isal"] = str(isal.__version__)
    except ImportError:
        versions["python-isal"] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "filesystem": fs,
        "versions": versions,
    }


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or math.isnan(value) or math.isnan(base):
        return "–"
    return f"{value / base:.2f}×"


OPERATIONS = (("backup", "backup"), ("restore", "restore"), ("verify", "verify"))


def main_table(results: dict[str, Any]) -> list[str]:
    ops = results["ops"]
    labels = results["labels"]
    base_backup = ops.get("backup", {}).get("baseline")
    base_restore = ops.get("restore", {}).get("baseline")
    lines = [
        "| operation | tool | wall s | × base | CPU s | × base | peak RSS MB | × base "
        "| archive MB | × base |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for op, _ in OPERATIONS:
        base = base_backup if op == "backup" else base_restore
        for key, s in ops.get(op, {}).items():
            b = base or {}
            size = s.get("size") if op == "backup" else None
            lines.append(
                f"| {op} | {labels.get(op, {}).get(key, key)} "
                f"| {_num(s['wall'])} | {_ratio(s['wall'], b.get('wall'))} "
                f"| {_num(s['cpu'])} | {_ratio(s['cpu'], b.get('cpu'))} "
                f"| {_num(s['rss'] / MB, 0)} | {_ratio(s['rss'], b.get('rss'))} "
                f"| {_num(size / MB if size else None, 0)} "
                f"| {_ratio(size, b.get('size')) if size else '–'} |"
            )
    return lines


def details(results: dict[str, Any]) -> list[str]:
    """aica-backup's own breakdown (from its --json output), medians."""
    ops = results["ops"]
    out: list[str] = []
    b = ops.get("backup", {}).get("aica")
    if b:
        parts = ", ".join(f"{k.split('.', 1)[1]} {v:.2f} s" for k, v in sorted(b["parts"].items())
                          if k.startswith("backup."))
        out.append(f"- aica-backup backup, its own timings: {parts or 'not reported'} "
                   "(the integrity check runs in a thread beside the archiving).")
    r = ops.get("restore", {}).get("aica")
    if r:
        safety = r["parts"].get("restore.safety_backup")
        if safety is not None:
            out.append(f"- aica-backup restore: safety backup {safety:.2f} s of {r['wall']:.2f} s; "
                       f"restore without it {r['wall'] - safety:.2f} s.")
        else:
            out.append("- aica-backup restore: its output does not report the safety backup's "
                       "time separately; the wall time above includes it.")
        other = ", ".join(f"{k.split('.', 1)[1]} {v:.2f} s" for k, v in sorted(r["parts"].items())
                          if k.startswith("restore.") and k != "restore.safety_backup")
        if other:
            out.append(f"- aica-backup restore, its own timings: {other}.")
    for op in ("backup", "restore"):
        for key, s in ops.get(op, {}).items():
            if key != "aica" and "snapshot" in s["parts"]:
                parts = s["parts"]
                out.append(f"- {results['labels'][op].get(key, key)}: sqlite3 .backup "
                           f"{parts['snapshot']:.2f} s, then {parts.get('archive', 0):.2f} s.")
    return out


def extras(results: dict[str, Any]) -> list[str]:
    ex = results.get("extras", {})
    out: list[str] = []
    if "list" in ex:
        e = ex["list"]
        out.append(f"- `list --json` over {e['archives']} small archives: {e['wall']:.3f} s "
                   f"(median of {e['rounds']}; the first list, which indexes copied-in archives, "
                   f"{e['first']:.2f} s); peak RSS {e['rss'] / MB:.0f} MB.")
    if "files" in ex:
        e = ex["files"]
        same_db = (f"both trees with the same {e['database_bytes'] / MB:.1f} MB database; "
                   if "database_bytes" in e else "")
        out.append(f"- backup of {e['many']['files']:,} small upload files vs the same "
                   f"{e['many']['bytes'] / MB:.0f} MB in {e['few']['files']:,} files: "
                   f"{e['many']['wall']:.2f} s vs {e['few']['wall']:.2f} s = {e['ratio']:.2f}× "
                   f"({same_db}tar+zstd on the same trees: "
                   f"{e['many'].get('zstd_wall', float('nan')):.2f} s "
                   f"vs {e['few'].get('zstd_wall', float('nan')):.2f} s).")
    if "memory" in ex:
        e = ex["memory"]
        parts = [f"{op} {v['scale1'] / MB:.0f} → {v['scaleN'] / MB:.0f} MB ({v['ratio']:.2f}×)"
                 for op, v in e["ops"].items()]
        out.append(f"- peak RSS of aica-backup, scale 1 → scale {e['scale']:g}: "
                   f"{'; '.join(parts)}.")
    if "load" in ex:
        e = ex["load"]
        out.append(
            f"- write latency of the reference backend at {e['rate']:g} POST /api/notes per s: "
            f"without a backup p50 {e['idle']['p50'] * 1000:.1f} ms, "
            f"p99 {e['idle']['p99'] * 1000:.1f} ms "
            f"({e['idle']['requests']} requests); during `aica-backup backup` p50 "
            f"{e['backup']['p50'] * 1000:.1f} ms, p99 {e['backup']['p99'] * 1000:.1f} ms, max "
            f"{e['backup']['max'] * 1000:.0f} ms ({e['backup']['requests']} requests, "
            f"{e['backup']['failed']} failed): p99 ratio {e['p99_ratio']:.2f}×. Backup under load "
            f"{e['backup_wall']:.2f} s."
        )
        if "control" in e:
            out.append(
                f"- control for the load test: beside a busy loop at the lowest CPU priority "
                f"(SCHED_IDLE, as the backup runs) on every core, as long as each backup, p99 "
                f"{e['control']['p99'] * 1000:.1f} ms ({e['control_p99_ratio']:.2f}× the idle "
                f"p99; {e['control']['requests']} requests): what any work beside the app costs "
                f"it on this machine."
            )
    return out


def targets_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("targets", [])
    if not rows:
        return []
    lines = ["| target (issue 6) | measured | met |", "|---|---|---|"]
    for t in rows:
        met = "–" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    return lines


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    p = results["params"]
    ds = p.get("dataset", {})
    v = m["versions"]
    lines = [
        f"# aica-backup benchmark — {results['date']}",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} cores, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, file system {m['filesystem']}; Python {m['python']}.",
        f"Tools: aica-backup {v.get('aica-backup')} (checkout {v.get('aica-backup checkout')}), "
        f"python-isal {v.get('python-isal')}; "
        + ", ".join(f"{t} {v.get(t)}" for t in TOOL_VERSION_COMMANDS) + ".",
        "",
        f"Data set: scale {p['scale']:g} (seed {p['seed']}): database "
        f"{ds.get('database_bytes', 0) / MB:.0f} MB (WAL mode), uploads "
        f"{ds.get('uploads', {}).get('files', 0):,} files / "
        f"{ds.get('uploads', {}).get('bytes', 0) / MB:.0f} MB, `.env.production`. "
        f"Median of {p['rounds']} rounds, tools alternating within each round; "
        f"{p['seconds']:.0f} s in all; 1-min load average "
        f"{p['loadavg_before'][0]:.2f} before the run "
        f"({p['loadavg_after'][0]:.2f} after it, its own load included).",
        "",
        *main_table(results),
        "",
        "× base: backup rows against the baseline backup (`sqlite3 .backup` + `tar -czf`); "
        "restore and verify rows against the baseline restore (`tar -xzf` into an empty folder).",
        "",
        *details(results),
        *extras(results),
        "",
        *targets_table(results),
        "",
        "Notes:",
        *[f"- {n}" for n in results.get("notes", [])],
        "",
    ]
    return "\n".join(lines)
