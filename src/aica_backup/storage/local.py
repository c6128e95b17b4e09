"""A folder target: a second disk, or a NAS mounted at e.g. ``/mnt/nas/aica-backups``.

Writes go through :func:`aica_backup.fsutil.atomic_file` (temp name → fsync → rename → fsync
folder), so a crash leaves either the old object or the new one, never a torn file under a
valid name. Files are 0600 and the folder 0700, like the local backups folder.
"""

from __future__ import annotations

import glob
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from .. import interrupt
from ..errors import StorageError, UsageError
from ..fsutil import PRIVATE_DIR, TMP_PREFIX, atomic_file, fsync_dir, storage_error
from .base import AccessError, NotFoundError, ObjectInfo, check_name, is_valid_name

BUFFER = 1 << 20


class LocalStorage:
    """Objects are the files of one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)

    @classmethod
    def from_location(cls, location: str, *, base: Path | None = None) -> LocalStorage:
        """``/abs/path``, ``relative/path`` (to ``base``, default the working folder), ``file:///abs``."""
        if location.startswith("file://"):
            parts = urlsplit(location)
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise UsageError(f"file location must be file:///absolute/path: {location}")
            path = Path(unquote(parts.path))
        else:
            path = Path(location).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return cls(path)

    def _failed(self, what: str, exc: OSError) -> StorageError:
        """``LOCATION: what: reason``: the target named once, first (as offsite's messages
        expect), not again in the middle and in the file name."""
        hint = storage_error(what, exc).hint
        return StorageError(f"{self.location}: {what}: {exc.strerror or exc}", hint=hint)

    def _ensure_folder(self) -> None:
        # Only the last level is created: if the NAS is not mounted, its mount point's parent
        # exists but the share's folder does not, and silently creating it on the local disk
        # would make an "offsite" copy that dies with this server.
        try:
            self.folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        except FileNotFoundError:
            raise AccessError(
                f"{self.location}: parent folder does not exist",
                hint="is the NAS or disk mounted? create the folder once by hand to confirm",
            ) from None
        except OSError as exc:
            raise self._failed("cannot create the folder", exc) from exc

    def put(self, name: str, src: Path) -> None:
        target = self.folder / check_name(name)
        self._ensure_folder()
        try:
            # What an earlier push of this very object left when it was killed (atomic_file's
            # NAME.PID; a full-size copy that nothing else would ever remove).
            for stale in self.folder.glob(f"{TMP_PREFIX}{glob.escape(name)}.*"):
                if stale.name.rpartition(".")[2].isdigit():
                    stale.unlink(missing_ok=True)
            with open(src, "rb") as fin, atomic_file(target) as fout:
                while chunk := fin.read(BUFFER):
                    interrupt.check()  # a copy in a worker thread stops with the command
                    fout.write(chunk)
        except StorageError as exc:  # atomic_file's, naming its paths: said as the others
            if not isinstance(exc.__cause__, OSError):
                raise
            raise self._failed(f"cannot copy {src.name}", exc.__cause__) from exc.__cause__
        except OSError as exc:
            raise self._failed(f"cannot copy {src.name}", exc) from exc

    def get(self, name: str, dest: IO[bytes]) -> None:
        """Copy the file into ``dest``; errors writing ``dest`` propagate as they are."""
        try:
            fin = open(self.folder / check_name(name), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFoundError(f"{self.location}: no object named {name}") from None
        except OSError as exc:
            raise self._failed(f"cannot read {name}", exc) from exc
        with fin:
            while True:
                try:
                    chunk = fin.read(BUFFER)
                except OSError as exc:
                    raise self._failed(f"cannot read {name}", exc) from exc
                if not chunk:
                    break
                interrupt.check()
                dest.write(chunk)

    def list(self) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._failed("cannot list", exc) from exc
        for e in entries:
            if not is_valid_name(e.name):
                continue  # temp files of a copy in progress, and foreign files
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted meanwhile
            if stat.S_ISREG(st.st_mode):
                out.append(_info(e.name, st))
        return out

    def delete(self, name: str) -> None:
        try:
            (self.folder / check_name(name)).unlink(missing_ok=True)
            fsync_dir(self.folder)
        except FileNotFoundError:
            return  # the folder itself is gone: so is the object
        except OSError as exc:
            raise self._failed(f"cannot delete {name}", exc) from exc

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = (self.folder / check_name(name)).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failed(f"cannot access {name}", exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{self.location}/{name} is not a regular file")
        return _info(name, st)


def _info(name: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
