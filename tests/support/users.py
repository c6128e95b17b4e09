"""A real second user: run the command line as an unprivileged owner of the app folder."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

OWNER = "nobody"  # exists on every Debian system; owns no files of its own


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give every entry under ``root`` (and ``root``) to ``uid:gid``, iteratively."""
    for folder, dirs, files in os.walk(root):
        os.chown(folder, uid, gid)
        for name in [*dirs, *files]:
            os.lchown(os.path.join(folder, name), uid, gid)


@contextmanager
def owner_account() -> Iterator[tuple[list[str], pwd.struct_passwd]]:
    """Yield (command prefix that runs a program as the owner, the owner's account).

    The prefix drops to the owner's uid and gids for real (``setpriv``). Where the interpreter
    or this checkout sits in a folder only root may enter (``/root/.pyenv``), the owner keeps
    one capability, ``CAP_DAC_READ_SEARCH`` (read and search any file, never write or chown
    one), so it can start Python at all; writes still bind as for any user. Skips when not
    root or neither works.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to run commands as a second user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    account = pwd.getpwnam(OWNER)
    base = [
        setpriv,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
    ]
    read_only_search = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    for prefix in (base, [*base, *read_only_search]):
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import aica_backup.cli"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if probe.returncode == 0:
            yield prefix, account
            return
    pytest.skip(f"cannot start Python as {OWNER}: {probe.stderr.strip()[-200:]}")
