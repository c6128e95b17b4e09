"""Where the protected application keeps its data: the three components and the backups folder.

A ``Layout`` is built by the command layer from the configuration; library code only ever
sees this object, never the configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

DEFAULT_DATABASE = "backend/aica_sys.db"
DEFAULT_UPLOADS = "public/uploads"
DEFAULT_CONFIG = ".env.production"
DEFAULT_BACKUPS = "backups"
DEFAULT_APP_NAME = "aica-sys"

# Hidden folders the tool owns: bookkeeping beside the archives, and restore work in the app root.
META_DIRNAME = ".aica-backup"
RESTORE_DIRNAME = ".aica-restore"


class Component(StrEnum):
    """The parts of the application, in the guide's restore order."""

    DATABASE = "database"
    UPLOADS = "uploads"
    CONFIG = "config"


COMPONENT_ORDER: tuple[Component, ...] = (Component.DATABASE, Component.UPLOADS, Component.CONFIG)


@dataclass(frozen=True)
class Layout:
    """The application root and the relative paths of its components.

    ``database``, ``uploads`` and ``config`` are POSIX paths relative to ``root``; they are also
    the member names inside an archive, so ``tar -xzf`` recreates the app's own layout.
    """

    root: Path
    database: str = DEFAULT_DATABASE
    uploads: str = DEFAULT_UPLOADS
    config: str = DEFAULT_CONFIG
    backups: Path | None = None  # absolute; None means root / "backups"
    app_name: str = DEFAULT_APP_NAME
    database_optional: bool = False

    @property
    def backups_dir(self) -> Path:
        return self.backups if self.backups is not None else self.root / DEFAULT_BACKUPS

    @property
    def meta_dir(self) -> Path:
        return self.backups_dir / META_DIRNAME

    @property
    def restore_dir(self) -> Path:
        return self.root / RESTORE_DIRNAME

    def relpath(self, component: Component) -> str:
        return {
            Component.DATABASE: self.database,
            Component.UPLOADS: self.uploads,
            Component.CONFIG: self.config,
        }[component]

    def path(self, component: Component) -> Path:
        return self.root / self.relpath(component)

    @property
    def database_path(self) -> Path:
        return self.path(Component.DATABASE)

    @property
    def uploads_path(self) -> Path:
        return self.path(Component.UPLOADS)

    @property
    def config_path(self) -> Path:
        return self.path(Component.CONFIG)

    def with_root(self, root: Path) -> Layout:
        """The same layout under another root (``restore --target``); backups stay put."""
        return Layout(
            root=root,
            database=self.database,
            uploads=self.uploads,
            config=self.config,
            backups=self.backups_dir,
            app_name=self.app_name,
            database_optional=self.database_optional,
        )


def check_relative(value: str) -> str | None:
    """Return a problem description if ``value`` is not a safe relative POSIX path, else None."""
    if not value or value.strip() != value:
        return "must be a non-empty relative path"
    p = PurePosixPath(value)
    if p.is_absolute():
        return "must be relative to the app root"
    if any(part in ("..", "") for part in p.parts) or "\\" in value or "\0" in value:
        return "must not contain '..', backslashes or NUL"
    if p.parts and p.parts[0] == "manifest.json":
        return "'manifest.json' is reserved for the archive manifest"
    return None


def components_overlap(layout: Layout) -> str | None:
    """Return a problem if one component's path lies inside another's, else None."""
    paths = [(c, PurePosixPath(layout.relpath(c))) for c in COMPONENT_ORDER]
    for i, (ca, pa) in enumerate(paths):
        for cb, pb in paths[i + 1 :]:
            if pa == pb or pa in pb.parents or pb in pa.parents:
                return f"paths of {ca} ({pa}) and {cb} ({pb}) overlap"
    return None
