"""``aica-backup init``: make a folder an app root by writing what the guide expects there.

The files come from the package (``aica_backup/templates/``, the same bytes as the
repository's ``scripts/``, ``deploy/``, workflow and Makefile block, checked by a test), so an
installed tool can adopt an app without its source tree. What init writes:

- ``scripts/backup.sh``, ``scripts/restore.sh`` and ``scripts/_aica.sh`` (with the path of the
  aica-backup that ran init recorded in it, so cron's bare PATH still finds the tool);
- the ``make backup | restore | verify | list`` targets: a new ``Makefile``, or a block between
  markers appended to the app's own one (its other lines are never touched; a second init
  replaces only that block);
- ``aica-backup.toml``, every key commented out at its default, generated from
  :mod:`aica_backup.config` so it never drifts from the code;
- on request, the automation files filled in with this app's root, user and tool path.

Only what is absent is written; ``force`` replaces what differs, except ``aica-backup.toml``
(the operator's settings are never overwritten). Planning writes nothing (``--dry-run``).
"""

from __future__ import annotations

import dataclasses
import grp
import json
import pwd
import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from . import schedule
from .config import CONFIG_FILENAME, Settings
from .errors import UsageError
from .fsutil import adopt_owner, atomic_write_bytes, storage_error

EXTRAS = ("cron", "systemd", "compose", "github")
SCRIPT_MODE = 0o755
FILE_MODE = 0o644
CONFIG_MODE = 0o600  # webhook URLs and the like may hold tokens
BLOCK_BEGIN = "# BEGIN aica-backup"
BLOCK_END = "# END aica-backup"
MAKE_TARGETS = ("backup", "restore", "verify", "list")
# The line of scripts/_aica.sh that init fills in with the running tool's path.
RECORDED_BIN_LINE = "AICA_INIT_BIN=''"
SAMPLE_ROOT = "/path/to/aica-sys"

# Template (under aica_backup/templates/) -> where it goes in the app root, and its mode.
SCRIPTS = {
    "scripts/_aica.sh": "scripts/_aica.sh",
    "scripts/backup.sh": "scripts/backup.sh",
    "scripts/restore.sh": "scripts/restore.sh",
}
EXTRA_FILES: dict[str, dict[str, str]] = {
    "cron": {"deploy/cron/aica-backup.cron": "deploy/cron/aica-backup.cron"},
    "systemd": {
        "deploy/systemd/aica-backup.service": "deploy/systemd/aica-backup.service",
        "deploy/systemd/aica-backup.timer": "deploy/systemd/aica-backup.timer",
    },
    "compose": {
        "compose/docker-compose.yml": "docker-compose.yml",
        "compose/dockerignore": ".dockerignore",
        "compose/Dockerfile": "backend/Dockerfile",
    },
    "github": {"github/scheduled-backup.yml": ".github/workflows/scheduled-backup.yml"},
}

Action = Literal["create", "replace", "append", "keep"]


@dataclass(frozen=True)
class Planned:
    """One file init would write (or keeps), and why."""

    path: Path  # absolute
    content: bytes
    mode: int
    action: Action
    reason: str = ""

    @property
    def writes(self) -> bool:
        return self.action != "keep"


def template(name: str) -> bytes:
    """A file shipped in ``aica_backup/templates/`` (the repository's copies are the same)."""
    return resources.files("aica_backup").joinpath("templates", name).read_bytes()


def parse_extras(text: str) -> list[str]:
    """``cron,systemd`` -> ["cron", "systemd"]; an unknown name is a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXTRAS]
    if unknown:
        raise UsageError(
            f"unknown --with {', '.join(unknown)}", hint=f"choose from {','.join(EXTRAS)}"
        )
    return list(dict.fromkeys(names))


def check_adoptable(settings: Settings, force: bool) -> None:
    """Refuse a folder with none of the app's files (a mistyped ``--root``) unless ``force``."""
    root = settings.root
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="pass --root (or cd to) the app's folder")
    layout = settings.layout()
    signs = (layout.database_path, layout.uploads_path, layout.config_path, layout.backups_dir)
    if force or (root / CONFIG_FILENAME).is_file() or any(p.exists() for p in signs):
        return
    raise UsageError(
        f"{root} does not look like an app root (no {settings.paths.database}, "
        f"{settings.paths.uploads}, {settings.paths.config} or {CONFIG_FILENAME}): nothing was "
        "written",
        hint="run init in the app's folder (or pass --root); --force adopts this folder anyway",
    )


# -- contents ----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # pragma: no cover - a new key type


def _section_lines(obj: Any) -> list[str]:
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in Settings.NOT_KEYS or dataclasses.is_dataclass(value):
            continue
        if value is None:
            lines.append(f"# {f.name} = ...  (not set by default)")
        else:
            lines.append(f"# {f.name} = {_toml_value(value)}")
    return lines


def commented_config() -> str:
    """``aica-backup.toml`` with every key commented out at its default, from the code's
    settings definition (uncommenting a line gives the default it shows)."""
    defaults = Settings()
    lines = [
        "# aica-backup settings for this app (written by `aica-backup init`).",
        "# Every key is shown commented out at its default: uncomment a line to change it.",
        "# Environment variables AICA_BACKUP_<SECTION>_<KEY> and flags override this file.",
        "",
        *_section_lines(defaults),
    ]
    for f in dataclasses.fields(defaults):
        section = getattr(defaults, f.name)
        if f.name in Settings.NOT_KEYS or not dataclasses.is_dataclass(section):
            continue
        lines += ["", f"# [{f.name}]", *_section_lines(section)]
        if f.name == "offsite":
            lines += [
                "",
                "# Retention on the targets (default: the same as [retention]):",
                "# [offsite.retention]",
                "# keep_last = 7",
            ]
    return "\n".join(lines) + "\n"


def _aica_script(tool: Path | None) -> bytes:
    text = template("scripts/_aica.sh").decode()
    if tool is not None:
        if RECORDED_BIN_LINE not in text:  # pragma: no cover - the template changed
            raise RuntimeError("scripts/_aica.sh template lost its recorded-path line")
        text = text.replace(RECORDED_BIN_LINE, f"AICA_INIT_BIN={shlex.quote(str(tool))}", 1)
    return text.encode()


def _owner(root: Path) -> tuple[str, str]:
    st = root.stat()
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


def _systemd_service(root: Path, tool: Path | None) -> bytes:
    text = template("deploy/systemd/aica-backup.service").decode()
    for path in (root, tool):
        if path is not None and re.search(r"[\s\\%$\"']", str(path)):
            raise UsageError(
                f"{path} cannot be written into a systemd unit as it is (spaces, quotes, % or $)",
                hint="leave out --with systemd and edit deploy/systemd/ by hand",
            )
    user, group = _owner(root)
    text = text.replace(SAMPLE_ROOT, str(root))
    text = re.sub(r"(?m)^User=.*$", f"User={user}", text, count=1)
    text = re.sub(r"(?m)^Group=.*$", f"Group={group}", text, count=1)
    if tool is not None:
        text = re.sub(
            r"(?m)^(WorkingDirectory=.*)$",
            lambda m: (
                f"{m.group(1)}\n# The aica-backup that wrote this unit (systemd's PATH may "
                f"not hold it).\nEnvironment=AICA_BACKUP_BIN={tool}"
            ),
            text,
            count=1,
        )
    header = f"# Filled in by `aica-backup init` for {root} (user {user}).\n"
    return (header + text).encode()


def _cron_file(lines: list[str]) -> bytes:
    out: list[str] = []
    jobs = iter(lines)
    for line in template("deploy/cron/aica-backup.cron").decode().splitlines():
        if line.strip() and not line.startswith("#"):
            line = next(jobs)
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def _makefile_plan(root: Path, force: bool) -> Planned:
    block = template("Makefile.block").decode()
    existing = next(
        (root / n for n in ("GNUmakefile", "makefile", "Makefile") if (root / n).is_file()), None
    )
    if existing is None:
        header = (
            "# Written by `aica-backup init`: the app's backup targets. Add your own targets"
            " above the block.\n.DEFAULT_GOAL := help\n\n.PHONY: help\nhelp:\n"
            + "".join(
                f"\t@echo 'make {usage}'\n"
                for usage in (
                    "backup                 back up this app (./scripts/backup.sh)",
                    "restore [ARCHIVE=FILE] restore the newest (or the given) backup",
                    "verify                 check every backup can be restored",
                    "list                   list the backups, newest first",
                )
            )
            + "\n"
        )
        return Planned(root / "Makefile", (header + block).encode(), FILE_MODE, "create")
    text = existing.read_text()
    begin = text.find(BLOCK_BEGIN)
    if begin != -1:
        end = text.find(BLOCK_END, begin)
        if end == -1:
            raise UsageError(
                f"{existing} has '{BLOCK_BEGIN}' but no '{BLOCK_END}'",
                hint="fix the Makefile by hand: init will not guess where the block ends",
            )
        end = text.find("\n", end)
        end = len(text) if end == -1 else end + 1
        updated = text[:begin] + block + text[end:]
        if updated == text:
            return Planned(existing, updated.encode(), FILE_MODE, "keep", "up to date")
        if not force:
            return Planned(
                existing,
                updated.encode(),
                FILE_MODE,
                "keep",
                "its block differs; --force replaces the block",
            )
        return Planned(existing, updated.encode(), _mode_of(existing), "replace", "the block only")
    clashes = [t for t in MAKE_TARGETS if re.search(rf"(?m)^{t}\s*:(?!=)", text)]
    if clashes:
        return Planned(
            existing, text.encode(), FILE_MODE, "keep",
            f"it already has target(s) {', '.join(clashes)}: add the block by hand",
        )  # fmt: skip
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return Planned(
        existing,
        (text + sep + block).encode(),
        _mode_of(existing),
        "append",
        "its other lines kept",
    )


def _mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777 & ~0o022


def _file_plan(
    path: Path, content: bytes, mode: int, force: bool, never_replace: bool = False
) -> Planned:
    if not path.exists() and not path.is_symlink():
        return Planned(path, content, mode, "create")
    try:
        same = path.is_file() and path.read_bytes() == content
    except OSError as exc:
        raise storage_error(f"cannot read {path}", exc) from exc
    if same:
        return Planned(path, content, mode, "keep", "up to date")
    if never_replace:
        return Planned(path, content, mode, "keep", "exists (your settings: never replaced)")
    if not force:
        return Planned(path, content, mode, "keep", "exists; --force replaces it")
    if not path.is_file():
        raise UsageError(f"{path} exists and is not a file: nothing was written")
    return Planned(path, content, mode, "replace")


def plan(
    settings: Settings, extras: Collection[str], tool: Path | None, force: bool = False
) -> list[Planned]:
    """What init would write in ``settings.root`` (nothing is written)."""
    root = settings.root
    plans = [
        _file_plan(root / CONFIG_FILENAME, commented_config().encode(), CONFIG_MODE, force, True)
    ]
    for name, dest in SCRIPTS.items():
        content = _aica_script(tool) if dest == "scripts/_aica.sh" else template(name)
        plans.append(_file_plan(root / dest, content, SCRIPT_MODE, force))
    plans.append(_makefile_plan(root, force))
    for extra in extras:
        for name, dest in EXTRA_FILES[extra].items():
            if extra == "cron":
                log = schedule.choose_log(None, settings.layout().meta_dir).path
                content = _cron_file(schedule.cron_lines(root, log, tool))
            elif extra == "systemd" and name.endswith(".service"):
                content = _systemd_service(root, tool)
            else:
                content = template(name)
            plans.append(_file_plan(root / dest, content, FILE_MODE, force))
    return plans


def apply(settings: Settings, plans: list[Planned]) -> None:
    """Write what ``plans`` say (each file atomically; folders made as needed)."""
    for p in plans:
        if not p.writes:
            continue
        _make_parents(p.path.parent, settings.root)
        atomic_write_bytes(p.path, p.content, p.mode)
        if p.path.name == "aica-backup.cron":
            schedule.prepare_log(
                schedule.choose_log(None, settings.layout().meta_dir), settings.layout().meta_dir
            )


def _make_parents(folder: Path, root: Path) -> None:
    missing = [p for p in (folder, *folder.parents) if not p.exists() and root in p.parents]
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o755)
        except FileExistsError:
            continue
        except OSError as exc:
            raise storage_error(f"cannot create folder {created}", exc) from exc
        adopt_owner(created)


def next_steps(settings: Settings, extras: Collection[str]) -> list[str]:
    """What to do after init, for the operator."""
    steps = [
        "make backup (or ./scripts/backup.sh) makes a backup; make verify checks them all",
        f"edit {CONFIG_FILENAME} to change paths, retention, offsite copies or notifications",
    ]
    if "cron" in extras:
        steps.append("aica-backup schedule cron --install puts the cron lines into your crontab")
    else:
        steps.append("aica-backup schedule cron --install backs up daily at 03:00 from cron")
    if "systemd" in extras:
        steps.append(
            "as root: cp deploy/systemd/aica-backup.* /etc/systemd/system/ && systemctl "
            "daemon-reload && systemctl enable --now aica-backup.timer"
        )
    if "compose" in extras:
        steps.append("docker-compose up -d starts the backend and the daily backup service")
    if "github" in extras:
        steps.append("set the BACKUP_SSH_* secrets named in .github/workflows/scheduled-backup.yml")
    return steps
