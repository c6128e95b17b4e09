"""The contenders: aica-backup, and the plain pipelines and tools it is compared with.

Each contender backs up the same app root (database, uploads, config) into a folder of its
own and restores from what it made. The plain pipelines and restic/borg first take a
consistent copy of the live database with ``sqlite3 DB ".backup SNAP"`` (timed, as part of
their backup), then archive that snapshot with the uploads and the config; aica-backup does
all of it itself. Restores of the plain tools go into an empty folder; aica-backup's restore
replaces a copy of the app root (see ``AicaBackup.restore``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import Sample, run, run_stages, settle, tree_size

DB_REL = "backend/aica_sys.db"
MEMBERS = ("public/uploads", ".env.production")


@dataclass
class Context:
    app: Path  # the generated app root (never modified, but for its backups/ folder)
    work: Path  # scratch folder of this run (same file system as the data)
    env: dict[str, str]  # environment for every command (AICA_BACKUP_* stripped)


class Contender:
    """One tool. ``backup`` returns a sample whose ``size`` is the archive/repository size."""

    key = ""
    label = ""
    note = ""  # shown under the table when set

    def available(self) -> str | None:
        """None if the tool can run here, else why not."""
        return None

    def backup(self, ctx: Context, slot: Path) -> Sample:
        raise NotImplementedError

    def restore(self, ctx: Context, slot: Path, dest: Path) -> Sample:
        raise NotImplementedError


def snapshot_stage(ctx: Context, slot: Path) -> tuple[str, list[str]]:
    """``sqlite3 DB ".backup SNAP"`` into ``slot/snap/backend/aica_sys.db`` (the app's layout)."""
    snap = slot / "snap" / DB_REL
    snap.parent.mkdir(parents=True, exist_ok=True)
    return ("snapshot", ["sqlite3", str(ctx.app / DB_REL), f".backup '{snap}'"])


def snapshot_paths(ctx: Context, slot: Path) -> list[str]:
    return [str(slot / "snap" / DB_REL), *(str(ctx.app / m) for m in MEMBERS)]


class TarPipeline(Contender):
    """sqlite3 .backup, then one tar through an external compressor; ``tar -x`` to restore."""

    def __init__(self, key: str, label: str, compress: list[str], extract: list[str],
                 suffix: str, tool: str) -> None:
        self.key, self.label = key, label
        self.compress, self.extract, self.suffix, self.tool = compress, extract, suffix, tool

    def available(self) -> str | None:
        missing = [t for t in ("sqlite3", "tar", self.tool) if shutil.which(t) is None]
        return f"not installed: {', '.join(missing)}" if missing else None

    def archive(self, slot: Path) -> Path:
        return slot / f"backup{self.suffix}"

    def backup(self, ctx: Context, slot: Path) -> Sample:
        out = self.archive(slot)
        tar = ["tar", *self.compress, "-cf", str(out), "-C", str(slot / "snap"), DB_REL,
               "-C", str(ctx.app), *MEMBERS]
        sample = run_stages([snapshot_stage(ctx, slot), ("archive", tar)], env=ctx.env)
        sample.size = out.stat().st_size
        return sample

    def restore(self, ctx: Context, slot: Path, dest: Path) -> Sample:
        dest.mkdir(parents=True)
        return run(["tar", *self.extract, "-xf", str(self.archive(slot)), "-C", str(dest)],
                   env=ctx.env, name="extract")


BASELINE = TarPipeline("baseline", "sqlite3 .backup + tar -czf (gzip -6)", ["-z"], ["-z"],
                       ".tar.gz", "gzip")
ZSTD = TarPipeline("zstd", "sqlite3 .backup + tar -I 'zstd -T0 -3'", ["-I", "zstd -T0 -3"],
                   ["-I", "zstd"], ".tar.zst", "zstd")


class Restic(Contender):
    key, label = "restic", "sqlite3 .backup + restic backup (first)"
    note = ("restic: a fresh repository each round (repository v2, compression auto, fixed "
            "password: restic 0.14 always encrypts); its cache lives in the round's folder.")

    def available(self) -> str | None:
        return None if shutil.which("restic") else "restic not installed (apt-get install restic)"

    def _env(self, ctx: Context, slot: Path) -> dict[str, str]:
        return {**ctx.env, "RESTIC_REPOSITORY": str(slot / "repo"),
                "RESTIC_PASSWORD": "bench-not-secret", "RESTIC_CACHE_DIR": str(slot / "cache")}

    def backup(self, ctx: Context, slot: Path) -> Sample:
        env = self._env(ctx, slot)
        run(["restic", "init"], env=env)  # not timed: a one-off
        settle()
        sample = run_stages([snapshot_stage(ctx, slot),
                             ("archive", ["restic", "backup", "--quiet", "--host", "bench",
                                          *snapshot_paths(ctx, slot)])], env=env)
        sample.size = tree_size(slot / "repo")
        return sample

    def restore(self, ctx: Context, slot: Path, dest: Path) -> Sample:
        dest.mkdir(parents=True)
        return run(["restic", "restore", "latest", "--target", str(dest)],
                   env=self._env(ctx, slot), name="extract")


class Borg(Contender):
    key, label = "borg", "sqlite3 .backup + borg create (first)"
    note = "borg: `borg init -e none`, default compression (lz4), a fresh repository each round."

    def available(self) -> str | None:
        return None if shutil.which("borg") else "borg not installed (apt-get install borgbackup)"

    def _env(self, ctx: Context, slot: Path) -> dict[str, str]:
        return {**ctx.env, "BORG_REPO": str(slot / "repo"), "BORG_BASE_DIR": str(slot / "base"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def backup(self, ctx: Context, slot: Path) -> Sample:
        env = self._env(ctx, slot)
        run(["borg", "init", "-e", "none"], env=env)  # not timed
        settle()
        sample = run_stages([snapshot_stage(ctx, slot),
                             ("archive", ["borg", "create", "::bench",
                                          *snapshot_paths(ctx, slot)])], env=env)
        sample.size = tree_size(slot / "repo")
        return sample

    def restore(self, ctx: Context, slot: Path, dest: Path) -> Sample:
        dest.mkdir(parents=True)
        return run(["borg", "extract", "::bench"], cwd=dest, env=self._env(ctx, slot),
                   name="extract")


# -- aica-backup -------------------------------------------------------------------------------
def find_seconds(report: Any, words: Sequence[str]) -> float | None:
    """The first number under a key containing one of ``words`` anywhere in a JSON report."""
    if isinstance(report, dict):
        for key, value in report.items():
            lowered = str(key).lower()
            if any(w in lowered for w in words):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
                if isinstance(value, dict):
                    for sub in ("seconds", "wall", "total", "time"):
                        if isinstance(value.get(sub), int | float):
                            return float(value[sub])
        for value in report.values():
            found = find_seconds(value, words)
            if found is not None:
                return found
    elif isinstance(report, list):
        for value in report:
            found = find_seconds(value, words)
            if found is not None:
                return found
    return None


def last_json(text: str) -> Any:
    """The JSON document in a command's output (the last one, if there are JSON lines too)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    starts = [i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    return None


@dataclass
class AicaBackup(Contender):
    """The tool under test, at its default settings, run as an operator runs it."""

    command: list[str]
    key: str = "aica"
    label: str = "aica-backup"
    features: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    last_archive: str = ""

    def _help(self, *args: str) -> str | None:
        proc = subprocess.run([*self.command, *args, "--help"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"}, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def probe(self) -> None:
        """Which commands and options this build has (restore and verify are newer)."""
        top = self._help()
        self.features["cli"] = top is not None
        restore = self._help("restore") if top else None
        verify = self._help("verify") if top else None
        self.features["restore"] = restore is not None
        self.features["restore_json"] = bool(restore and "--json" in restore)
        self.features["restore_full_check"] = bool(restore and "--full-check" in restore)
        self.features["verify"] = verify is not None
        self.features["verify_latest"] = bool(verify and "--latest" in verify)
        self.features["verify_json"] = bool(verify and "--json" in verify)

    def available(self) -> str | None:
        if not self.features:
            self.probe()
        return None if self.features["cli"] else f"{' '.join(self.command)} --help failed"

    def backup(self, ctx: Context, slot: Path) -> Sample:
        shutil.rmtree(ctx.app / "backups", ignore_errors=True)
        settle()
        sample = run([*self.command, "--root", str(ctx.app), "backup", "--no-prune", "--json"],
                     env=ctx.env, name="aica backup")
        report = last_json(sample.output) or {}
        self.last_archive = str(report.get("archive", ""))
        sample.size = int(report.get("size") or 0) or tree_size(ctx.app / "backups")
        for key, value in (report.get("timings") or {}).items():
            sample.parts[f"backup.{key}"] = float(value)
        sample.parts.pop("aica backup", None)
        return sample

    def verify(self, ctx: Context) -> Sample | None:
        if not self.features.get("verify"):
            return None
        which = ["--latest"] if self.features["verify_latest"] else [self.last_archive]
        json_flag = ["--json"] if self.features["verify_json"] else []
        settle()
        sample = run([*self.command, "--root", str(ctx.app), "verify", *which, *json_flag],
                     env=ctx.env, name="aica verify")
        sample.parts.pop("aica verify", None)
        return sample

    def restore(self, ctx: Context, slot: Path, dest: Path, *extra: str) -> Sample:
        """Restore the archive just made into a fresh copy of the app root.

        ``restore`` replaces the app it is pointed at, so it gets a copy (made before the clock
        starts): the database, uploads and config copied, the backups folder hard-linked
        (archives are never written in place). Its own safety backup is part of the timing and
        reported separately when its JSON output names it.
        """
        dest.mkdir(parents=True)
        for rel in ("backend", "public", ".env.production"):
            subprocess.run(["cp", "-a", str(ctx.app / rel), str(dest / rel)], check=True)
        subprocess.run(["cp", "-al", str(ctx.app / "backups"), str(dest / "backups")], check=True)
        json_flag = ["--json"] if self.features.get("restore_json") else []
        settle()
        sample = run([*self.command, "--root", str(dest), "restore", "--yes", *extra, *json_flag],
                     env=ctx.env, name="aica restore")
        sample.parts.pop("aica restore", None)
        report = last_json(sample.output) if json_flag else None
        safety = find_seconds(report, ("safety", "pre_restore", "pre-restore"))
        if safety is not None:
            sample.parts["restore.safety_backup"] = safety
        if isinstance(report, dict):
            for key, value in (report.get("timings") or {}).items():
                if isinstance(value, int | float):
                    sample.parts[f"restore.{key}"] = float(value)
        return sample
