"""``make bench``: time aica-backup against the naive pipeline, tar+zstd, restic and borg.

    python bench/run.py [--scale 1.0] [--rounds 3] [--only aica,baseline,zstd,restic,borg]
                        [--extras list,files,load] [--scale-check 4]

One run: the data set is generated (or reused) under ``bench/data/``, then every round runs
each contender's backup, (verify,) and restore, the contenders alternating and their order
rotating from round to round; the table shows medians. Results go to stdout and to
``bench/results/latest.md`` / ``latest.json`` (plus a dated copy). See bench/README.md.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import generate
import loadtest
import report
from measure import RSS_METHOD, CommandFailed, Sample, median, retire, run, settle, summarize, warm
from pipelines import BASELINE, ZSTD, AicaBackup, Borg, Contender, Context, Restic

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MB = 1_000_000
CONTENDERS = ("baseline", "zstd", "restic", "borg", "aica")
EXTRAS = ("list", "files", "load")
LABELS = {
    "backup": {"baseline": BASELINE.label, "zstd": ZSTD.label, "restic": Restic.label,
               "borg": Borg.label, "aica": "aica-backup backup"},
    "restore": {"baseline": "tar -xzf", "zstd": "tar -I zstd -xf",
                "restic": "restic restore latest", "borg": "borg extract",
                "aica": "aica-backup restore --yes"},
    "verify": {"aica": "aica-backup verify --latest"},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_env() -> dict[str, str]:
    """The environment of every command: the caller's, without aica-backup's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICA_BACKUP_")}
    env["COLUMNS"] = "200"
    return env


def default_aica() -> str:
    sibling = Path(sys.executable).with_name("aica-backup")
    return str(sibling) if sibling.exists() else "aica-backup"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="data set scale (1.0 ≈ 800 MB)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(CONTENDERS),
                   help=f"contenders to run, comma-separated (default: {','.join(CONTENDERS)})")
    p.add_argument("--extras", default=",".join(EXTRAS),
                   help="extra measurements: list, files, load, or none (default: all three)")
    p.add_argument("--scale-check", type=float, default=None, metavar="S",
                   help="also measure aica-backup's peak RSS at scale S (memory flatness; "
                        "scale 4 needs ~3.2 GB of data and as much again free)")
    p.add_argument("--list-archives", type=int, default=200)
    p.add_argument("--many-files", type=int, default=100_000)
    p.add_argument("--few-files", type=int, default=1_000)
    p.add_argument("--files-scale", type=float, default=None,
                   help="upload bytes of the files test, as a scale (default: --scale)")
    p.add_argument("--load-rate", type=float, default=50.0, help="POST /api/notes per second")
    p.add_argument("--load-idle", type=float, default=10.0,
                   help="seconds of each window without a backup")
    p.add_argument("--load-rounds", type=int, default=5,
                   help="idle + backup windows of the load test (default 5)")
    p.add_argument("--aica-setting", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="run aica-backup with a non-default setting (an AICA_BACKUP_* variable), "
                        "e.g. backup.check=quick; repeatable; the report says so")
    p.add_argument("--aica", default=default_aica(),
                   help="the aica-backup command, split like a shell would "
                        "(e.g. 'python -m aica_backup')")
    p.add_argument("--data-dir", type=Path, default=BENCH / "data")
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    args.only = [c for c in args.only.split(",") if c]
    unknown = set(args.only) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    args.extras = [] if args.extras in ("", "none") else args.extras.split(",")
    if set(args.extras) - set(EXTRAS):
        p.error(f"unknown extras: {', '.join(sorted(set(args.extras) - set(EXTRAS)))}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.settings = {}
    for item in args.aica_setting:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            p.error(f"--aica-setting wants SECTION.KEY=VALUE, got {item!r}")
        args.settings["AICA_BACKUP_" + key.replace(".", "_").upper()] = value
    return args


def dataset_dir(data: Path, scale: float) -> Path:
    return data / f"scale-{scale:g}"


def share_database(source_app: Path, app: Path) -> int:
    """Give ``app`` the database of ``source_app``; return its size.

    The files test compares the same bytes cut into many or few upload files, but the generator
    gives every upload its row, so the 100,000-file tree's database is ten times the other's
    (49.5 vs 4.6 MB at scale 1). Both trees back up the larger one; only the files differ.
    """
    source, target = source_app / generate.DB_REL, app / generate.DB_REL
    for leftover in (target.with_name(target.name + s) for s in ("-wal", "-shm")):
        leftover.unlink(missing_ok=True)  # a stale WAL would be replayed into the database
    if not filecmp.cmp(source, target, shallow=False):
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return target.stat().st_size


class Bench:
    """One run: the contenders' samples, the notes, the extras."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = {**clean_env(), **args.settings}
        self.aica = AicaBackup(shlex.split(args.aica))
        self.notes: list[str] = []
        self.samples: dict[str, dict[str, list[Sample]]] = {
            "backup": {}, "restore": {}, "verify": {}}
        self.extras: dict[str, Any] = {}
        self.full_check: list[Sample] = []  # aica-backup restore --full-check
        self.failed: set[str] = set()
        self.work = args.data_dir / "work"
        if args.settings:
            self.note("NOT the default settings: aica-backup ran with "
                      + ", ".join(f"{k}={v}" for k, v in args.settings.items()))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log(f"note: {text}")

    # -- the main comparison ---------------------------------------------------------------
    def contenders(self) -> list[Contender]:
        table: dict[str, Contender] = {"baseline": BASELINE, "zstd": ZSTD, "restic": Restic(),
                                       "borg": Borg(), "aica": self.aica}
        chosen: list[Contender] = []
        for key in self.args.only:
            c = table[key]
            why = c.available()
            if why:
                self.note(f"{c.label} skipped: {why}")
            else:
                chosen.append(c)
        if self.aica in chosen:
            f = self.aica.features
            if not f.get("restore"):
                self.note("aica-backup restore: the command is not in this build yet: not measured")
            elif not f.get("restore_json"):
                self.note("aica-backup restore has no --json: its safety backup is not timed apart")
            if not f.get("verify"):
                self.note("aica-backup verify: the command is not in this build yet: not measured")
        return chosen

    def record(self, op: str, c: Contender, sample: Sample | None) -> None:
        if sample is None:
            return
        self.samples[op].setdefault(c.key, []).append(sample)
        size = f", {sample.size / MB:.0f} MB" if sample.size else ""
        log(f"    {c.key:8} {op:7} {sample.wall:7.2f} s  cpu {sample.cpu:6.2f} s  "
            f"rss {sample.rss / MB:5.0f} MB{size}")

    def one_round(self, ctx: Context, contenders: list[Contender], r: int) -> None:
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            if c.key in self.failed:
                continue
            slot = self.work / f"round{r}-{c.key}"
            slot.mkdir(parents=True)
            try:
                # Every contender backs up a warm data set: borg drops what it read from the
                # page cache (385 MB of a 385 MB file resident before `borg create`, 2.3 MB
                # after), and the next in turn, aica-backup in every round, read 400 MB of
                # uploads from the disk (backup 2.53 s after borg, 2.08 s first in a round).
                warm(ctx.app)
                settle()
                self.record("backup", c, c.backup(ctx, slot))
                if c is self.aica:
                    self.record("verify", c, self.aica.verify(ctx))
                    if not self.aica.features.get("restore"):
                        continue
                settle()
                self.record("restore", c, c.restore(ctx, slot, slot / "restored"))
                if c is self.aica and self.aica.features.get("restore_full_check"):
                    # verify ran first, so the restore above reused its integrity_check of
                    # the same database: time the restore that repeats it as well
                    self.retire(slot / "restored")
                    settle()
                    full = self.aica.restore(ctx, slot, slot / "restored", "--full-check")
                    self.full_check.append(full)
                    log(f"    {c.key:8} restore --full-check {full.wall:7.2f} s")
            except (CommandFailed, OSError) as exc:
                self.failed.add(c.key)
                self.note(f"{c.label} failed in round {r + 1}, not run again: "
                          f"{str(exc).strip().splitlines()[0][:300]}")
                log(str(exc))
            finally:
                self.retire(slot)
                shutil.rmtree(ctx.app / "backups", ignore_errors=True)

    def retire(self, path: Path) -> None:
        """Out of the way, its inodes kept until the run ends (see :func:`measure.retire`)."""
        try:
            retire(path, self.work / ".retired")
        except OSError as exc:
            log(f"cannot retire {path} ({exc}): deleting it")
            shutil.rmtree(path, ignore_errors=True)

    def compare(self, app: Path) -> None:
        ctx = Context(app=app, work=self.work, env=self.env)
        contenders = self.contenders()
        if not contenders:
            return
        shutil.rmtree(app / "backups", ignore_errors=True)
        for r in range(self.args.rounds):
            log(f"round {r + 1}/{self.args.rounds}")
            self.one_round(ctx, contenders, r)

    # -- extras ----------------------------------------------------------------------------
    def measure_extra(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (CommandFailed, OSError, RuntimeError, ValueError) as exc:
            self.note(f"extra '{name}' failed: {str(exc).strip().splitlines()[0][:300]}")
            log(traceback.format_exc())
        finally:
            shutil.rmtree(self.work / name, ignore_errors=True)

    def extra_list(self) -> None:
        app = self.args.data_dir / "list-app"
        generate.generate(app, 0.0005, self.args.seed, replace_other=True, quiet=True)
        n = self.args.list_archives
        log(f"list: making {n} small archives")
        first = generate.make_archives(app, n, self.aica.command)
        samples = []
        for _ in range(max(3, self.args.rounds)):
            samples.append(run([*self.aica.command, "--root", str(app), "list", "--json"],
                               env=self.env, name="list"))
        listed = json.loads(samples[-1].output)
        if len(listed) != n:
            raise ValueError(f"list showed {len(listed)} archives, expected {n}")
        shutil.rmtree(app / "backups", ignore_errors=True)
        self.extras["list"] = {"archives": n, "rounds": len(samples), "first": first,
                               "wall": median([s.wall for s in samples]),
                               "rss": max(s.rss for s in samples)}
        log(f"    list    {self.extras['list']['wall']:.3f} s (first, indexing: {first:.2f} s)")

    def extra_files(self) -> None:
        scale = self.args.files_scale if self.args.files_scale is not None else self.args.scale
        sets = {}
        for which, count in (("many", self.args.many_files), ("few", self.args.few_files)):
            app = self.args.data_dir / f"files-{count}-{scale:g}"
            log(f"files: data set of {count:,} upload files")
            stamp = generate.generate(app, scale, self.args.seed, db_scale=0.01,
                                      small_files=count, replace_other=True, quiet=True)
            sets[which] = (app, stamp)
        db_bytes = share_database(sets["many"][0], sets["few"][0])
        log(f"files: both trees back up the same {db_bytes / 1e6:.1f} MB database")
        for app, _stamp in sets.values():
            warm(app)
        walls: dict[str, list[float]] = {"many": [], "few": []}
        zwalls: dict[str, list[float]] = {"many": [], "few": []}
        for r in range(self.args.rounds):
            for which in (("many", "few") if r % 2 == 0 else ("few", "many")):
                app = sets[which][0]
                ctx = Context(app=app, work=self.work / "files", env=self.env)
                shutil.rmtree(app / "backups", ignore_errors=True)
                s = self.aica.backup(ctx, self.work)
                walls[which].append(s.wall)
                shutil.rmtree(app / "backups", ignore_errors=True)
                slot = self.work / "files" / f"{which}-{r}"
                slot.mkdir(parents=True)
                settle()
                zwalls[which].append(ZSTD.backup(ctx, slot).wall)
                shutil.rmtree(slot)
                log(f"    files   {which:4} aica {s.wall:.2f} s, "
                    f"tar+zstd {zwalls[which][-1]:.2f} s")
        out: dict[str, Any] = {}
        for which, (_app, stamp) in sets.items():
            out[which] = {"files": stamp["uploads"]["files"], "bytes": stamp["uploads"]["bytes"],  # type: ignore[index]
                          "wall": median(walls[which]), "zstd_wall": median(zwalls[which])}
        out["ratio"] = out["many"]["wall"] / out["few"]["wall"]
        out["database_bytes"] = db_bytes
        self.extras["files"] = out

    def extra_load(self, app: Path) -> None:
        dest = self.work / "load" / "app"
        why = loadtest.prepare_app(app, REPO, dest, self.env)
        if why:
            self.note(why)
            return
        log(f"load: reference backend under {self.args.load_rate:g} writes/s, "
            f"{self.args.load_rounds} idle and backup windows")
        self.extras["load"] = loadtest.measure_load(
            dest, self.aica.command, self.env, rounds=self.args.load_rounds,
            rate=self.args.load_rate, idle_seconds=self.args.load_idle,
            log=self.work / "load" / "backend.log")
        e = self.extras["load"]
        log(f"    load    p99 idle {e['idle']['p99'] * 1000:.1f} ms, during backup "
            f"{e['backup']['p99'] * 1000:.1f} ms ({e['p99_ratio']:.2f}×)")

    def extra_memory(self) -> None:
        scale = self.args.scale_check
        app = dataset_dir(self.args.data_dir, scale)
        log(f"memory: data set at scale {scale:g}")
        generate.generate(app, scale, self.args.seed, replace_other=True, quiet=True)
        ctx = Context(app=app, work=self.work, env=self.env)
        slot = self.work / "memory"
        slot.mkdir(parents=True)
        got: dict[str, Sample | None] = {}
        try:
            settle()
            got["backup"] = self.aica.backup(ctx, slot)
            got["verify"] = self.aica.verify(ctx)
            if self.aica.features.get("restore"):
                settle()
                got["restore"] = self.aica.restore(ctx, slot, slot / "restored")
        finally:
            shutil.rmtree(slot, ignore_errors=True)
            shutil.rmtree(app / "backups", ignore_errors=True)
        ops = {}
        for op, sample in got.items():
            base = self.samples[op].get("aica")
            if sample is None or not base:
                continue
            s1 = median([float(s.rss) for s in base])
            ops[op] = {"scale1": s1, "scaleN": sample.rss, "ratio": sample.rss / s1,
                       "wall": sample.wall}
            log(f"    memory  {op:7} rss {s1 / MB:.0f} → {sample.rss / MB:.0f} MB, "
                f"{sample.wall:.2f} s")
        self.extras["memory"] = {"scale": scale, "ops": ops}

    # -- all of it -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        args = self.args
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        app = dataset_dir(args.data_dir, args.scale)
        log(f"data set: {app}")
        stamp = generate.generate(app, args.scale, args.seed, replace_other=True)
        started = time.perf_counter()
        load_before = os.getloadavg()
        try:
            self.compare(app)
            aica_ok = "aica" in self.samples["backup"]
            if args.extras and not aica_ok:
                self.note("extras skipped: aica-backup backup did not run")
            else:
                if "list" in args.extras:
                    self.measure_extra("list", self.extra_list)
                if "files" in args.extras:
                    self.measure_extra("files", self.extra_files)
                if "load" in args.extras:
                    self.measure_extra("load", lambda: self.extra_load(app))
            if args.scale_check and aica_ok:
                self.measure_extra("memory", self.extra_memory)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        ops = {op: {k: summarize(v) for k, v in per.items()} for op, per in self.samples.items()}
        ordered = {op: {k: ops[op][k] for k in CONTENDERS if k in ops[op]} for op in ops}
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": report.machine_info(args.data_dir, self.aica.command, REPO),
            "params": {"scale": args.scale, "seed": args.seed, "rounds": args.rounds,
                       "only": args.only, "extras": args.extras, "dataset": stamp,
                       "aica_features": self.aica.features, "aica_settings": args.settings,
                       "seconds": round(time.perf_counter() - started, 1),
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "labels": LABELS,
            "ops": {op: v for op, v in ordered.items() if v},
            "extras": self.extras,
        }
        if self.full_check:
            results["extras"]["restore_full_check"] = {
                "wall": median([s.wall for s in self.full_check]),
                "net": median([s.wall - s.parts.get("restore.safety_backup", 0.0)
                               for s in self.full_check]),
                "rss_max": max(s.rss for s in self.full_check),
            }
        results["targets"] = targets(results)
        ran = {k for per in self.samples.values() for k in per}
        results["notes"] = self.notes + standing_notes(ran)
        return results


def standing_notes(ran: set[str]) -> list[str]:
    """How each figure is measured (under the table), for the contenders that ran."""
    notes = [
        "Wall time: fork to reap of each command, page cache warm (every tool reads the same "
        "cached data set, read once before each backup: borg drops what it read from the "
        "cache); `sync` before every timed step, outside the timing.",
        "CPU time: user + system of each process and the children it waited for (tar's "
        "gzip / zstd); multi-stage contenders add up their stages.",
        f"Peak RSS: `ru_maxrss` measured by {RSS_METHOD}, i.e. the largest *single* process of "
        "a contender (sqlite3, tar, gzip/zstd for the pipelines), not the sum of a pipeline.",
        "The plain pipelines, restic and borg first snapshot the database with "
        "`sqlite3 DB \".backup SNAP\"` (timed as part of their backup); aica-backup does its "
        "snapshot, integrity check and SHA-256 of every member itself, and fsyncs its archive "
        "(tar pipelines do not fsync).",
        "aica-backup restore replaces a fresh copy of the app root each round (database, "
        "uploads and config copied, backups folder hard-linked, before the clock starts); "
        "it includes its own safety backup of that copy, checksums and the database check. "
        "The others extract into an empty folder and check nothing beyond their own format.",
        "aica-backup verify is compared with the baseline restore (`tar -xzf`).",
        "Each round runs aica-backup's backup, verify, restore in that order (as a scheduled "
        "job with `backup.verify = true` leaves it): the restore finds verify's record and "
        "does not repeat integrity_check on the same database bytes (SHA-256 equal; a "
        "quick_check still runs). `restore --full-check`, which repeats it, is timed too.",
    ]
    notes += [c.note for c in (Restic(), Borg()) if c.key in ran]
    return notes


def _get(results: dict[str, Any], op: str, key: str) -> dict[str, Any] | None:
    return results["ops"].get(op, {}).get(key)


def _net_restore(sample: dict[str, Any]) -> float:
    """A restore's wall time without its own safety backup (where it reports that apart)."""
    return float(sample["wall"] - sample["parts"].get("restore.safety_backup", 0.0))


def _rounds(results: dict[str, Any], a: dict[str, Any], b: dict[str, Any],
            net: Callable[[dict[str, Any]], float] = lambda s: float(s["wall"]),
            digits: int = 2) -> str:
    """'; rounds X–Y×': the ratio a/b round by round (both ran in each round, one after the
    other), so a median near a target shows how far its rounds spread. Empty for one round,
    or when a contender is missing a round (the rounds would no longer pair)."""
    n = results["params"]["rounds"]
    sa, sb = a.get("samples") or [], b.get("samples") or []
    if n < 2 or len(sa) != n or len(sb) != n:
        return ""
    ratios = sorted(net(x) / y["wall"] for x, y in zip(sa, sb, strict=True))
    return f"; rounds {ratios[0]:.{digits}f}–{ratios[-1]:.{digits}f}×"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        rows.append({"target": target, "measured": measured, "ok": ok})

    ab, bb = _get(results, "backup", "aica"), _get(results, "backup", "baseline")
    zb = _get(results, "backup", "zstd")
    if ab and bb:
        ratio = ab["wall"] / bb["wall"]
        add("backup ≤ 0.10× baseline wall time", f"{ratio:.3f}× ({ab['wall']:.2f} s vs "
            f"{bb['wall']:.2f} s; its check {ab['parts'].get('backup.check', float('nan')):.2f} s"
            f"{_rounds(results, ab, bb, digits=3)})", ratio <= 0.10)
    if ab and zb:
        ratio = ab["wall"] / zb["wall"]
        add("backup ≤ 1.3× tar+zstd", f"{ratio:.2f}× ({zb['wall']:.2f} s)", ratio <= 1.3)
    for other in ("restic", "borg"):
        ob = _get(results, "backup", other)
        if ab and ob:
            add(f"backup faster than {other}'s first backup",
                f"{ab['wall']:.2f} s vs {ob['wall']:.2f} s", ab["wall"] < ob["wall"])
    ar, br = _get(results, "restore", "aica"), _get(results, "restore", "baseline")
    if ar:
        safety = ar["parts"].get("restore.safety_backup")
        net = ar["wall"] - safety if safety is not None else ar["wall"]
        how = "without its safety backup" if safety is not None else \
            "safety backup included: not reported apart"
        if br:
            add("restore ≤ 0.6× baseline `tar -xzf`",
                f"{net / br['wall']:.2f}× ({net:.2f} s {how}, vs {br['wall']:.2f} s"
                f"{_rounds(results, ar, br, _net_restore)})", net / br["wall"] <= 0.6)
        for other in ("restic", "borg"):
            orr = _get(results, "restore", other)
            if orr:
                add(f"restore faster than {other}'s restore",
                    f"{net:.2f} s vs {orr['wall']:.2f} s", net < orr["wall"])
        add("end-to-end recovery (safety backup included) < 30 s", f"{ar['wall']:.2f} s",
            ar["wall"] < 30)
        full = results.get("extras", {}).get("restore_full_check")
        if full and br:
            ratio = full["net"] / br["wall"]
            add("restore --full-check (integrity_check repeated, not taken from verify) "
                "≤ 0.6× baseline", f"{ratio:.2f}× ({full['net']:.2f} s without its safety "
                f"backup; {full['wall']:.2f} s in all)", ratio <= 0.6)
    av = _get(results, "verify", "aica")
    if av and br:
        ratio = av["wall"] / br["wall"]
        add("verify ≤ 0.5× baseline `tar -xzf`",
            f"{ratio:.2f}× ({av['wall']:.2f} s{_rounds(results, av, br)})", ratio <= 0.5)
    for op in ("backup", "restore", "verify"):
        s = _get(results, op, "aica")
        if s:
            add(f"{op} peak RSS < 150 MB", f"{s['rss_max'] / MB:.0f} MB (largest round)",
                s["rss_max"] < 150 * MB)
    ex = results.get("extras", {})
    if "memory" in ex:
        for op, v in ex["memory"]["ops"].items():
            add(f"{op} peak RSS flat (±20 %) scale 1 → {ex['memory']['scale']:g}",
                f"{v['ratio']:.2f}×", abs(v["ratio"] - 1) <= 0.20)
    if "list" in ex:
        add(f"list over {ex['list']['archives']} archives < 0.5 s", f"{ex['list']['wall']:.3f} s",
            ex["list"]["wall"] < 0.5)
    if "files" in ex:
        f = ex["files"]
        add(f"backup of {f['many']['files']:,} files < 2× the same bytes in "
            f"{f['few']['files']:,}", f"{f['ratio']:.2f}×", f["ratio"] < 2)
    if "load" in ex:
        e = ex["load"]
        add("write p99 during a backup ≤ 2× without", f"{e['p99_ratio']:.2f}× "
            f"({e['backup']['p99'] * 1000:.1f} ms vs {e['idle']['p99'] * 1000:.1f} ms"
            + (f"; a SCHED_IDLE busy loop instead: {e['control_p99_ratio']:.2f}×)"
               if "control" in e else ")"),
            e["p99_ratio"] <= 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.run()
    text = report.render(results)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for name in ("latest", f"run-{stamp}"):
        (args.results_dir / f"{name}.md").write_text(text)
        (args.results_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"results: {args.results_dir / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
