"""Configuration: ``aica-backup.toml`` at the app root, ``AICA_BACKUP_*`` variables, then flags.

One typed object, validated once, reporting every problem at once with the key (and where it
came from). Only the command layer reads configuration; it then builds the library's objects
(:class:`~aica_backup.layout.Layout`, :class:`~aica_backup.retention.Policy`, …) from it.

Environment variables are ``AICA_BACKUP_<SECTION>_<KEY>`` (``AICA_BACKUP_RETENTION_KEEP_LAST``),
``AICA_BACKUP_APP_NAME`` for the top-level key, lists comma-separated; ``AICA_BACKUP_IDENTITY``
is a short alias of ``AICA_BACKUP_ENCRYPTION_IDENTITY``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .layout import Layout, check_relative, components_overlap
from .retention import Policy, parse_duration

CONFIG_FILENAME = "aica-backup.toml"
ENV_PREFIX = "AICA_BACKUP_"
# Variables that select the configuration itself rather than set a key in it.
ENV_CONTROL = {
    "AICA_BACKUP_ROOT",
    "AICA_BACKUP_CONFIG_FILE",
    "AICA_BACKUP_DEBUG",
    "AICA_BACKUP_TEST_CRASH_AT",  # fault injection for the crash tests (journal.py)
}
ENV_ALIASES = {"AICA_BACKUP_IDENTITY": ("encryption", "identity")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PathsConfig(_Section):
    database: str = "backend/aica_sys.db"
    uploads: str = "public/uploads"
    config: str = ".env.production"
    backups: str = "backups"

    @field_validator("database", "uploads", "config")
    @classmethod
    def _relative(cls, value: str) -> str:
        problem = check_relative(value)
        if problem:
            raise ValueError(problem)
        return value


class BackupConfig(_Section):
    # quick_check: every page and b-tree of the snapshot, in a tenth of integrity_check's time;
    # the full check runs on every database unpacked from an archive (verify, restore).
    check: Literal["integrity", "quick", "none"] = "quick"
    compression: Literal["gzip", "zstd"] = "gzip"
    level: int | None = Field(default=None, ge=0, le=22)
    threads: int = Field(default=0, ge=0, le=256)
    nice: int = Field(default=10, ge=0, le=19)
    idle_priority: bool = True
    database_optional: bool = False
    verify: bool = False
    lock_wait: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _level_fits(self) -> BackupConfig:
        if self.compression == "gzip" and self.level is not None and self.level > 3:
            raise ValueError("level: gzip (python-isal) levels are 0-3")
        return self

    @property
    def effective_level(self) -> int:
        if self.level is not None:
            return self.level
        return 1 if self.compression == "gzip" else 3


class RetentionConfig(_Section):
    keep_last: int = Field(default=7, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    keep_within: str = ""
    pre_restore_keep: int = Field(default=3, ge=1)

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, value: str) -> str:
        if value:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> RetentionConfig:
        if self.policy().is_empty():
            raise ValueError("at least one keep_* rule must be set (a policy keeping nothing)")
        return self

    def policy(self) -> Policy:
        return Policy(
            keep_last=self.keep_last,
            keep_daily=self.keep_daily,
            keep_weekly=self.keep_weekly,
            keep_monthly=self.keep_monthly,
            keep_yearly=self.keep_yearly,
            keep_within=parse_duration(self.keep_within) if self.keep_within else None,
        )


class RestoreConfig(_Section):
    check: Literal["integrity", "quick"] = "integrity"  # of a database unpacked (and verify's)
    stop_command: str = ""
    start_command: str = ""
    health_url: str = ""
    health_timeout: float = Field(default=30, gt=0)


class EncryptionConfig(_Section):
    recipients: list[str] = []
    identity: str = ""
    encrypt: Literal["offsite", "all"] = "offsite"


class OffsiteConfig(_Section):
    targets: list[str] = []
    retention: RetentionConfig | None = None
    parallel: int = Field(default=2, ge=1, le=16)
    retries: int = Field(default=3, ge=1, le=20)


class NotifyConfig(_Section):
    webhook_url: str = ""
    on_success: bool = False
    heartbeat_url: str = ""
    timeout: float = Field(default=10, gt=0)


class LogConfig(_Section):
    file: str = ".aica-backup/aica-backup.log"  # relative to the backups folder
    max_bytes: int = Field(default=1_000_000, ge=10_000)
    keep: int = Field(default=5, ge=1)


class HealthConfig(_Section):
    max_age_hours: float = Field(default=26, gt=0)


class Settings(_Section):
    app_name: str = "aica-sys"
    paths: PathsConfig = PathsConfig()
    backup: BackupConfig = BackupConfig()
    retention: RetentionConfig = RetentionConfig()
    restore: RestoreConfig = RestoreConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    offsite: OffsiteConfig = OffsiteConfig()
    notify: NotifyConfig = NotifyConfig()
    log: LogConfig = LogConfig()
    health: HealthConfig = HealthConfig()

    root: Path = Path()  # filled in by load_settings, not a file key

    @model_validator(mode="after")
    def _paths_distinct(self) -> Settings:
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
        return self

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

    @property
    def log_path(self) -> Path | None:
        return self._abs(self.log.file, self.layout().backups_dir) if self.log.file else None

    @property
    def identity_path(self) -> Path | None:
        return self._abs(self.encryption.identity, self.root) if self.encryption.identity else None


# --------------------------------------------------------------------------------------------
# Loading: file < environment < flags, every problem reported at once.


def _known_keys() -> dict[str, tuple[str, ...]]:
    """Map of AICA_BACKUP_* variable names to key paths."""
    keys: dict[str, tuple[str, ...]] = {}
    for name, f in Settings.model_fields.items():
        if name == "root":
            continue
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            for key, kf in sub.model_fields.items():
                kinds = get_args(kf.annotation) or (kf.annotation,)
                if any(isinstance(k, type) and issubclass(k, BaseModel) for k in kinds):
                    continue  # a nested table ([offsite.retention]) is set in the file only
                keys[f"{ENV_PREFIX}{name}_{key}".upper()] = (name, key)
        else:
            keys[f"{ENV_PREFIX}{name}".upper()] = (name,)
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
    section = Settings.model_fields.get(path[0])
    model = section.annotation if section else None
    if len(path) == 2 and isinstance(model, type) and issubclass(model, BaseModel):
        annotation = str(model.model_fields[path[1]].annotation)
        if annotation.startswith("list"):
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
            problems.append(f"{name}: unknown variable (see the README's configuration table)")
            continue
        _set(doc, key, _env_value(key, raw))
        origin[key] = name
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(doc, key, value)
            origin[key] = "--" + key[-1].replace("_", "-")
    doc["root"] = root
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            where = ".".join(loc) or "configuration"
            src = origin.get(loc)
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{where}{f' (from {src})' if src else ''}: {message}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings
