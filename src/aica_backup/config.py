"""Configuration: ``aica-backup.toml`` at the app root, ``AICA_BACKUP_*`` variables, then flags.

One typed object, validated once, reporting every problem at once with the key (and where it
came from). Only the command layer reads configuration; it then builds the library's objects
(:class:`~aica_backup.layout.Layout`, :class:`~aica_backup.retention.Policy`, …) from it.

Environment variables are ``AICA_BACKUP_<SECTION>_<KEY>`` (``AICA_BACKUP_RETENTION_KEEP_LAST``),
``AICA_BACKUP_APP_NAME`` for the top-level key, lists comma-separated; ``AICA_BACKUP_IDENTITY``
is a short alias of ``AICA_BACKUP_ENCRYPTION_IDENTITY``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from .errors import ConfigError, UsageError
from .layout import Layout, check_relative, components_overlap
from .retention import Policy, parse_duration

CONFIG_FILENAME = "aica-backup.toml"
ENV_PREFIX = "AICA_BACKUP_"
# Variables that select the configuration itself rather than set a key in it.
ENV_CONTROL = {
    "AICA_BACKUP_ROOT",
    "AICA_BACKUP_CONFIG_FILE",
    "AICA_BACKUP_DEBUG",
    "AICA_BACKUP_BIN",  # read by scripts/_aica.sh: which aica-backup the wrappers run
    "AICA_BACKUP_TEST_CRASH_AT",  # fault injection for the crash tests (journal.py)
}
ENV_ALIASES = {"AICA_BACKUP_IDENTITY": ("encryption", "identity")}


def _key(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    check: Callable[[Any], object] | None = None,
) -> Any:
    """A key with bounds and/or a ``check`` that raises ValueError (see :func:`_convert`)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "check": check})


def _relative_path(value: str) -> None:
    problem = check_relative(value)
    if problem:
        raise ValueError(problem)


def _duration(value: str) -> None:
    if value:
        parse_duration(value)


class _Section:
    """A table of the file: plain dataclasses, converted and checked by :func:`_convert`."""

    def validate(self) -> None:
        """Checks across keys, run once every key is valid; raise ValueError."""


@dataclass
class PathsConfig(_Section):
    database: str = _key("backend/aica_sys.db", check=_relative_path)
    uploads: str = _key("public/uploads", check=_relative_path)
    config: str = _key(".env.production", check=_relative_path)
    backups: str = "backups"


@dataclass
class BackupConfig(_Section):
    # quick_check: every page and b-tree of the snapshot, in a tenth of integrity_check's time;
    # the full check runs on every database unpacked from an archive (verify, restore).
    check: Literal["integrity", "quick", "none"] = "quick"
    compression: Literal["gzip", "zstd"] = "gzip"
    level: int | None = _key(None, ge=0, le=22)
    threads: int = _key(0, ge=0, le=256)
    nice: int = _key(10, ge=0, le=19)
    idle_priority: bool = True
    database_optional: bool = False
    verify: bool = False
    lock_wait: float = _key(0.0, ge=0)

    def validate(self) -> None:
        if self.compression == "gzip" and self.level is not None and self.level > 3:
            raise ValueError("level: gzip (python-isal) levels are 0-3")

    @property
    def effective_level(self) -> int:
        if self.level is not None:
            return self.level
        return 1 if self.compression == "gzip" else 3


@dataclass
class RetentionConfig(_Section):
    keep_last: int = _key(7, ge=0)
    keep_daily: int = _key(0, ge=0)
    keep_weekly: int = _key(0, ge=0)
    keep_monthly: int = _key(0, ge=0)
    keep_yearly: int = _key(0, ge=0)
    keep_within: str = _key("", check=_duration)
    pre_restore_keep: int = _key(3, ge=1)

    def validate(self) -> None:
        if self.policy().is_empty():
            raise ValueError("at least one keep_* rule must be set (a policy keeping nothing)")

    def policy(self) -> Policy:
        return Policy(
            keep_last=self.keep_last,
            keep_daily=self.keep_daily,
            keep_weekly=self.keep_weekly,
            keep_monthly=self.keep_monthly,
            keep_yearly=self.keep_yearly,
            keep_within=parse_duration(self.keep_within) if self.keep_within else None,
        )


@dataclass
class RestoreConfig(_Section):
    check: Literal["integrity", "quick"] = "integrity"  # of a database unpacked (and verify's)
    stop_command: str = ""
    start_command: str = ""
    health_url: str = ""
    health_timeout: float = _key(30.0, gt=0)


@dataclass
class EncryptionConfig(_Section):
    recipients: list[str] = field(default_factory=list)
    identity: str = ""
    encrypt: Literal["offsite", "all"] = "offsite"


@dataclass
class OffsiteConfig(_Section):
    targets: list[str] = field(default_factory=list)
    retention: RetentionConfig | None = None
    parallel: int = _key(2, ge=1, le=16)
    retries: int = _key(3, ge=0, le=20)  # after the first attempt: N retries, N + 1 attempts


@dataclass
class NotifyConfig(_Section):
    webhook_url: str = ""
    on_success: bool = False
    heartbeat_url: str = ""
    timeout: float = _key(10.0, gt=0)


@dataclass
class LogConfig(_Section):
    file: str = ".aica-backup/aica-backup.log"  # relative to the backups folder
    max_bytes: int = _key(1_000_000, ge=10_000)
    keep: int = _key(5, ge=1)


@dataclass
class HealthConfig(_Section):
    max_age_hours: float = _key(26.0, gt=0)


@dataclass
class Settings(_Section):
    app_name: str = "aica-sys"
    paths: PathsConfig = field(default_factory=PathsConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    offsite: OffsiteConfig = field(default_factory=OffsiteConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    root: Path = Path()  # filled in by load_settings, not a file key
    # what the command should tell the operator without stopping (an unknown variable)
    notes: list[str] = field(default_factory=list)
    NOT_KEYS: ClassVar[frozenset[str]] = frozenset({"root", "notes"})

    def validate(self) -> None:
        layout = self.layout()
        problem = components_overlap(layout)
        if problem:
            raise ValueError(f"paths: {problem}")
        # Backups inside a component: each backup would hold all the previous ones, and a
        # restore (which makes the uploads tree equal the archive's) would delete newer ones.
        # A component inside the backups folder would be made private (0700) with it.
        backups = Path(os.path.normpath(layout.backups_dir))
        for name in ("database", "uploads", "config"):
            path = Path(os.path.normpath(layout.root / getattr(self.paths, name)))
            if backups == path or path in backups.parents:
                raise ValueError(f"paths: backups ({backups}) lies inside {name} ({path})")
            if backups in path.parents:
                raise ValueError(f"paths: {name} ({path}) lies inside backups ({backups})")

    def _abs(self, value: str, base: Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def layout(self) -> Layout:
        return Layout(
            root=self.root,
            database=self.paths.database,
            uploads=self.paths.uploads,
            config=self.paths.config,
            backups=self._abs(self.paths.backups, self.root),
            app_name=self.app_name,
            database_optional=self.backup.database_optional,
        )

    def check_app_root(self) -> None:
        """Raise UsageError if the root does not look like an app root and has no backups
        folder yet: a wrong ``--root`` (a docs folder) must not get a ``backups/`` of its own,
        after which ``list`` said "No backups" there. Called before any command touches it."""
        layout = self.layout()
        signs = (layout.database_path, layout.uploads_path, layout.config_path)
        if layout.backups_dir.is_dir() or (self.root / CONFIG_FILENAME).is_file():
            return
        if any(p.exists() for p in signs):
            return
        raise UsageError(
            f"{self.root} does not look like an app root (no {self.paths.database}, "
            f"{self.paths.uploads}, {self.paths.config} or {CONFIG_FILENAME}): nothing was "
            "created or changed",
            hint="pass --root (or cd to) the app's folder; for a new app root, run "
            f"`aica-backup init --force` there (or create {CONFIG_FILENAME}) first",
        )

    @property
    def log_path(self) -> Path | None:
        return self._abs(self.log.file, self.layout().backups_dir) if self.log.file else None

    @property
    def identity_path(self) -> Path | None:
        return self._abs(self.encryption.identity, self.root) if self.encryption.identity else None


# --------------------------------------------------------------------------------------------
# Conversion: a TOML/env document into those dataclasses, collecting every problem.
# (Hand-written rather than pydantic: pydantic's import and model building cost ~0.1 s on
# every command, a third of a command's fixed start-up time.)

_BOOLS = {
    "true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
    "false": False, "f": False, "no": False, "n": False, "off": False, "0": False,
}  # fmt: skip


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The file keys of a section: (field, resolved type)."""
    hints = _hints(cls)
    skip: frozenset[str] = getattr(cls, "NOT_KEYS", frozenset())
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip]


def _section_type(tp: Any) -> type[_Section] | None:
    """The section class in ``tp`` (``RetentionConfig`` or ``RetentionConfig | None``), if any."""
    for arg in typing.get_args(tp) or (tp,):
        if isinstance(arg, type) and issubclass(arg, _Section):
            return arg
    return None


def _scalar(tp: Any, value: Any) -> Any:
    """``value`` as ``tp``; raise ValueError saying what was expected. A string is parsed as
    the key's type (environment variables are strings); otherwise the TOML type must fit,
    as pydantic's lax mode had it: no bool for a number, no number for a bool."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (tp,) = (a for a in typing.get_args(tp) if a is not type(None))
        return _scalar(tp, value)
    if origin is Literal:
        options = typing.get_args(tp)
        if value not in options:
            raise ValueError("must be one of " + ", ".join(repr(o) for o in options))
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        return list(value)
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        if not isinstance(value, bool):
            raise ValueError("must be a boolean (true or false)")
        return value
    if tp in (int, float):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value) if tp is float or not value.strip().isdigit() else int(value)
        if isinstance(value, float) and tp is int and value.is_integer():
            value = int(value)  # 1e6 or 4.0 is a whole number
        accepted = int if tp is int else int | float  # never a bool
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ValueError("must be an integer" if tp is int else "must be a number")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise TypeError(f"configuration key of unsupported type {tp}")


def _bounds(f: dataclasses.Field[Any], value: Any) -> None:
    m = f.metadata
    if value is None:
        return
    if m.get("ge") is not None and not value >= m["ge"]:
        raise ValueError(f"must be at least {m['ge']}")
    if m.get("gt") is not None and not value > m["gt"]:
        raise ValueError(f"must be greater than {m['gt']}")
    if m.get("le") is not None and not value <= m["le"]:
        raise ValueError(f"must be at most {m['le']}")
    if m.get("check") is not None:
        m["check"](value)


_S = typing.TypeVar("_S", bound=_Section)
Problems = list[tuple[tuple[str, ...], str]]


def _convert(cls: type[_S], doc: Any, loc: tuple[str, ...], problems: Problems) -> _S | None:
    """Build ``cls`` from the mapping ``doc``; add (key path, message) to ``problems`` for every
    bad key; None if any. ``validate()`` runs only on a section whose keys are all valid."""
    if not isinstance(doc, Mapping):
        problems.append((loc, "must be a table"))
        return None
    keys = {f.name: (f, tp) for f, tp in _keys(cls)}
    given: frozenset[str] = getattr(cls, "NOT_KEYS", frozenset())  # by the code: taken as is
    values: dict[str, Any] = {name: doc[name] for name in given if name in doc}
    ok = True
    for name, value in doc.items():
        where = (*loc, str(name))
        if name not in keys:
            if name not in given:
                problems.append((where, "unknown key"))
            continue
        f, tp = keys[name]
        section = _section_type(tp)
        try:
            if section is not None and value is not None:
                values[name] = _convert(section, value, where, problems)
                ok = ok and values[name] is not None
                continue
            values[name] = _scalar(tp, value)
            _bounds(f, values[name])
        except ValueError as exc:
            problems.append((where, str(exc)))
            ok = False
    if not ok:
        return None
    result = cls(**values)
    try:
        result.validate()
    except ValueError as exc:
        problems.append((loc, str(exc)))
        return None
    return result


# --------------------------------------------------------------------------------------------
# Loading: file < environment < flags, every problem reported at once.


def _known_keys() -> dict[str, tuple[str, ...]]:
    """Map of AICA_BACKUP_* variable names to key paths."""
    keys: dict[str, tuple[str, ...]] = {}
    for f, tp in _keys(Settings):
        section = _section_type(tp)
        if section is None:
            keys[f"{ENV_PREFIX}{f.name}".upper()] = (f.name,)
            continue
        for kf, ktp in _keys(section):
            if _section_type(ktp) is None:  # a nested table ([offsite.retention]): file only
                keys[f"{ENV_PREFIX}{f.name}_{kf.name}".upper()] = (f.name, kf.name)
    for alias, path in ENV_ALIASES.items():
        keys[alias] = path
    return keys


ENV_KEYS = _known_keys()


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        node = doc.setdefault(part, {})
        if not isinstance(node, dict):
            # e.g. a file that set "paths = 3": replacing it with a table silently dropped that
            # error; leave it for validation to report (the configuration fails either way).
            return
        doc = node
    doc[path[-1]] = value


def _env_value(path: tuple[str, ...], raw: str) -> Any:
    """A list key's variable is comma-separated; every other value is parsed by its key."""
    cls: type = Settings
    for part in path[:-1]:
        cls = _section_type(_hints(cls)[part]) or cls
    if typing.get_origin(_hints(cls).get(path[-1])) is list:
        return [v.strip() for v in raw.split(",") if v.strip()]
    return raw


def find_config_file(root: Path, explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    candidate = root / CONFIG_FILENAME
    return candidate if candidate.is_file() else None


def load_settings(
    root: Path,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> Settings:
    """Merge file, environment and flags; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    doc: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    notes: list[str] = []

    path = find_config_file(root, config_file)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"{path.name}: not valid TOML ({exc})")
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_CONTROL:
            continue
        key = ENV_KEYS.get(name)
        if key is None:
            # A warning, not an error: a stray variable in cron's or CI's environment must not
            # stop the 03:00 backup (it did: every command exited 3).
            close = difflib.get_close_matches(name, ENV_KEYS, n=1)
            notes.append(
                f"{name}: unknown variable, ignored"
                + (f" (did you mean {close[0]}?)" if close else "")
                + " (see the README's configuration table)"
            )
            continue
        _set(doc, key, _env_value(key, raw))
        origin[key] = name
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(doc, key, value)
            origin[key] = "--" + key[-1].replace("_", "-")
    doc["root"] = root
    found: Problems = []
    settings = _convert(Settings, doc, (), found)
    for loc, message in found:
        src = origin.get(loc)
        problems.append(
            f"{'.'.join(loc) or 'configuration'}{f' (from {src})' if src else ''}: {message}"
        )
    if problems or settings is None:
        raise ConfigError(problems)
    settings.notes = notes
    return settings
