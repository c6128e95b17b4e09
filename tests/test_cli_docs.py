"""Every command is explained: help text in the command line and a mention in the README
(sqlite-utils' rule: a command without documentation fails the build)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from aica_backup.cli import COMMANDS as MODULES
from aica_backup.cli import app, command_group

README = Path(__file__).resolve().parent.parent / "README.md"


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    if hasattr(cmd, "list_commands"):  # a group (the root one loads its commands on demand)
        for name in sorted(cmd.list_commands(None)):
            sub = cmd.get_command(None, name)
            if not sub.hidden:
                yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(get_command(app)))
NAMES = [" ".join(path) for path, _ in COMMANDS if path]


def test_there_are_commands() -> None:
    assert {"backup", "list", "prune", "pin", "unpin", "restore", "verify"} <= set(NAMES)


def test_the_command_table_names_what_each_module_registers() -> None:
    for module in set(MODULES.values()):
        registered = set(command_group(module).commands)
        assert registered == {n for n, m in MODULES.items() if m == module}, module


def test_a_mistyped_command_gets_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["bakup"])
    assert result.exit_code != 0
    assert "Did you mean 'backup'?" in result.output


def test_a_command_imports_only_what_it_needs() -> None:
    """Start-up time: ``backup`` loads neither the other commands nor the optional layers."""
    code = (
        "import sys; from aica_backup.cli import main\n"
        "try: main(['backup', '--help'])\n"
        "except SystemExit: pass\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(proc.stdout.strip().splitlines()[-1].split())
    assert "aica_backup.cli.backup" in loaded
    for heavy in (
        "pydantic",
        "aica_backup.restore",
        "aica_backup.offsite",
        "aica_backup.cli.demo",
        "rich.progress",
        "urllib.request",
        "psutil",
    ):
        assert heavy not in loaded, heavy


@pytest.mark.parametrize(
    ("path", "cmd"), COMMANDS, ids=[" ".join(p) or "aica-backup" for p, _ in COMMANDS]
)
def test_command_has_help(path: tuple[str, ...], cmd: Any) -> None:
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
    for param in cmd.params:
        if param.param_type_name in ("option", "argument") and param.name != "help":
            assert (getattr(param, "help", None) or "").strip(), (
                f"{' '.join(path)}: {param.name} has no help"
            )


def test_help_as_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aica_backup", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        if " " not in name:
            assert re.search(rf"\b{re.escape(name)}\b", proc.stdout), name


@pytest.mark.parametrize(
    "path", [p for p, _ in COMMANDS], ids=[" ".join(p) or "aica-backup" for p, _ in COMMANDS]
)
def test_help_runs(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("name", NAMES)
def test_command_is_in_the_readme(name: str) -> None:
    if not README.exists():
        pytest.xfail("README.md is not written yet")
    text = README.read_text(encoding="utf-8")
    assert f"aica-backup {name}" in text, f"README.md never shows `aica-backup {name}`"
    if " " not in name:  # a top-level command has its own section
        headings = re.findall(r"^#+ (.*)$", text, re.M)
        assert any(re.search(rf"\b{re.escape(name)}\b", h) for h in headings), name
