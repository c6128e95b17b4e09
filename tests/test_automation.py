"""Automation files: the GitHub workflow (schema, schedule, and its SSH steps run for real against
an sshd on 127.0.0.1), and docker-compose.yml with backend/Dockerfile (schema, structure, and
the backup service's scheduling loop run by a real shell)."""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from ruamel.yaml import YAML

from tests.support.app import App, make_app

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "scheduled-backup.yml"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "backend" / "Dockerfile"


def load_yaml(path: Path) -> Any:
    # YAML 1.2 (ruamel, check-jsonschema's own parser): `on:` stays a string key, as GitHub
    # reads it; a YAML 1.1 parser would turn it into True.
    return YAML(typ="safe", pure=True).load(path.read_text())


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    """The installed check-jsonschema with its bundled schema (no network)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the workflow ------------------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    data = load_yaml(WORKFLOW)
    assert isinstance(data, dict)
    return data


def steps() -> list[dict[str, Any]]:
    jobs = workflow()["jobs"]
    assert list(jobs) == ["backup"]
    return list(jobs["backup"]["steps"])


def test_workflow_validates_against_the_github_schema() -> None:
    proc = check_jsonschema("vendor.github-workflows", WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_does_catch_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:"))
    assert check_jsonschema("vendor.github-workflows", broken).returncode != 0


def test_workflow_runs_daily_at_03_jst_and_by_hand() -> None:
    wf = workflow()
    assert wf["name"] == "Scheduled Backup"
    assert wf["on"]["schedule"] == [{"cron": "0 18 * * *"}]
    assert "workflow_dispatch" in wf["on"]
    minute, hour = (int(x) for x in wf["on"]["schedule"][0]["cron"].split()[:2])
    # GitHub's cron is UTC: 18:00 UTC is 03:00 the next day in Japan.
    utc = datetime(2024, 10, 9, hour, minute, tzinfo=UTC)
    assert utc.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%d %H:%M") == "10 03:00"


def test_archive_is_kept_seven_days() -> None:
    upload = [s for s in steps() if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert len(upload) == 1
    assert upload[0]["uses"] == "actions/upload-artifact@v4"
    assert upload[0]["with"]["retention-days"] == 7
    assert upload[0]["with"]["if-no-files-found"] == "error"


def test_workflow_handles_secrets_safely() -> None:
    scripts = [s["run"] for s in steps() if "run" in s]
    text = WORKFLOW.read_text()
    for script in scripts:
        # Secrets reach scripts only through env: no expression is pasted into shell code.
        assert "${{" not in script
        assert "set -x" not in script
    assert "StrictHostKeyChecking yes" in text
    assert "StrictHostKeyChecking no" not in text and "ssh-keyscan" not in "".join(scripts)
    assert "./scripts/backup.sh --verify --json" in text
    for name in ("BACKUP_SSH_HOST", "BACKUP_SSH_USER", "BACKUP_SSH_KEY", "BACKUP_SSH_KNOWN_HOSTS"):
        assert f"secrets.{name}" in text


def test_workflow_scripts_are_valid_bash() -> None:
    for step in steps():
        if "run" in step:
            proc = subprocess.run(["bash", "-n"], input=step["run"], capture_output=True, text=True)
            assert proc.returncode == 0, f"{step['name']}: {proc.stderr}"


# -- the workflow's steps, run against a real sshd on 127.0.0.1 ---------------------------------

SSHD = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    port: int
    host_public_key: str
    client_key: Path

    def known_hosts(self, public_key: str | None = None) -> str:
        return f"[127.0.0.1]:{self.port} {public_key or self.host_public_key}"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1 that lets this user in with a fresh key."""
    if SSHD is None:
        pytest.skip("sshd is not installed here (Debian: apt-get install openssh-server)")
    missing = [t for t in ("ssh", "scp", "ssh-keygen", "jq") if shutil.which(t) is None]
    if missing:  # all preinstalled on GitHub's ubuntu runners, where the workflow runs
        pytest.skip(f"{', '.join(missing)} not installed here")
    d = tmp_path / "sshd"
    d.mkdir()
    host_public = keygen(d / "host_key")
    (d / "authorized_keys").write_text(keygen(d / "client_key") + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        # sshd started as root insists on its privilege-separation folder (normally made by
        # the init script, which never ran here).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Sshd(port, host_public, d / "client_key")
    finally:
        proc.terminate()
        proc.wait(10)


def tool_shim(path: Path) -> Path:
    """An ``aica-backup`` executable at ``path`` running this checkout's tool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m aica_backup "$@"\n')
    path.chmod(0o755)
    return path


def production_host(root: Path, *, installed: bool = True) -> App:
    """The app as the README sets it up: data, scripts/ and Makefile copied in, aica-backup in
    .venv (unless not ``installed``)."""
    app = make_app(root)
    shutil.copytree(REPO / "scripts", app.root / "scripts")
    shutil.copy2(REPO / "Makefile", app.root / "Makefile")
    if installed:
        tool_shim(app.root / ".venv" / "bin" / "aica-backup")
    return app


@dataclass
class Run:
    ok: bool
    output: str
    workspace: Path
    home: Path
    outputs: dict[str, str]


def run_workflow_steps(tmp_path: Path, secrets: dict[str, str]) -> Run:
    """Run the job's `run:` steps as the runner would: bash -eo pipefail, env from secrets."""
    workspace, home = tmp_path / "workspace", tmp_path / "runner-home"
    workspace.mkdir()
    home.mkdir()
    github_output = tmp_path / "github_output"
    github_output.touch()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "AICA_BACKUP_"))}
    base.update(HOME=str(home), GITHUB_OUTPUT=str(github_output))
    output, failed = [], False
    for step in steps():
        if "run" not in step or (failed and step.get("if") != "always()"):
            continue
        env = dict(base)
        for key, value in (step.get("env") or {}).items():
            match = re.fullmatch(r"\$\{\{ secrets\.(\w+) \}\}", str(value))
            assert match, f"unexpected env value {value!r}"
            env[key] = secrets.get(match.group(1), "")
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output.append(f"## {step['name']} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
        failed = failed or proc.returncode != 0
    outputs = dict(line.split("=", 1) for line in github_output.read_text().splitlines())
    return Run(not failed, "\n".join(output), workspace, home, outputs)


def secrets_for(server: Sshd, app: App) -> dict[str, str]:
    return {
        "BACKUP_SSH_HOST": "127.0.0.1",
        "BACKUP_SSH_PORT": str(server.port),
        "BACKUP_SSH_USER": getpass.getuser(),
        "BACKUP_SSH_KEY": server.client_key.read_text(),
        "BACKUP_SSH_KNOWN_HOSTS": server.known_hosts(),
        "BACKUP_APP_DIR": str(app.root),
    }


@pytest.mark.integration
def test_workflow_backs_up_over_ssh_and_keeps_a_verified_copy(sshd: Sshd, tmp_path: Path) -> None:
    app = production_host(tmp_path / "server" / "aica-sys")
    secrets = secrets_for(sshd, app)
    run = run_workflow_steps(tmp_path, secrets)
    assert run.ok, run.output
    made = app.archives()
    assert len(made) == 1
    name = run.outputs["name"]
    assert name == made[0].name
    copied = run.workspace / "artifact" / name
    assert copied.read_bytes() == made[0].read_bytes()
    assert (run.workspace / "artifact" / "backup-report.json").is_file()
    upload = next(s for s in steps() if "uses" in s)
    assert upload["with"]["path"] == "artifact/"
    # The key is gone after the job, and never appeared in the log.
    assert not (run.home / ".ssh" / "backup_key").exists()
    key_body = secrets["BACKUP_SSH_KEY"].splitlines()[1]
    assert key_body not in run.output


@pytest.mark.integration
def test_workflow_refuses_an_unknown_host_key(sshd: Sshd, tmp_path: Path) -> None:
    app = production_host(tmp_path / "server" / "aica-sys")
    secrets = secrets_for(sshd, app)
    other_key = keygen(tmp_path / "impostor")
    secrets["BACKUP_SSH_KNOWN_HOSTS"] = sshd.known_hosts(other_key)
    run = run_workflow_steps(tmp_path, secrets)
    assert not run.ok
    assert "Host key verification failed" in run.output
    assert app.archives() == []  # the command never ran on the host


@pytest.mark.integration
def test_workflow_fails_clearly_on_a_wrong_app_folder(sshd: Sshd, tmp_path: Path) -> None:
    app = production_host(tmp_path / "server" / "aica-sys")
    secrets = secrets_for(sshd, app)
    secrets["BACKUP_APP_DIR"] = str(tmp_path / "server" / "no such app")
    run = run_workflow_steps(tmp_path, secrets)
    assert not run.ok
    assert "::error::backup on the production host failed" in run.output
    assert "no such app" in run.output  # the remote shell's own message
    assert "name" not in run.outputs


def test_workflow_names_a_missing_secret(tmp_path: Path) -> None:
    run = run_workflow_steps(tmp_path, {"BACKUP_SSH_HOST": "127.0.0.1", "BACKUP_SSH_USER": "x"})
    assert not run.ok
    assert "repository secret BACKUP_SSH_KEY is not set" in run.output


# -- the wrappers and the Makefile, in an app root --------------------------------------------

# What cron or a fresh login has: no dev venv, no aica-backup on PATH.
PLAIN_PATH = "/usr/bin:/bin"


def run_in(
    app: App, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AICA_", "MAKE"))}
    return subprocess.run(
        list(argv),
        cwd=app.root,
        env={**base, "PATH": PLAIN_PATH, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_targets_work_in_an_app_root(tmp_path: Path) -> None:
    """The README's app root has no pyproject.toml: make backup/list/verify use the installed
    tool (ROOT/.venv/bin/aica-backup) and set nothing up."""
    app = production_host(tmp_path / "aica-sys")
    assert run_in(app, "make", "backup").returncode == 0
    (archive,) = app.archives()
    listed = run_in(app, "make", "list")
    assert listed.returncode == 0, listed.stderr
    assert archive.name in listed.stdout
    verified = run_in(app, "make", "verify")
    assert verified.returncode == 0, verified.stderr
    assert archive.name in verified.stdout
    assert not (app.root / ".venv" / ".installed").exists()
    assert sorted(p.name for p in (app.root / ".venv").iterdir()) == ["bin"]


@pytest.mark.parametrize(
    "argv",
    [("scripts/backup.sh",), ("scripts/restore.sh", "--yes"), ("make", "list"), ("make", "backup")],
)
def test_without_the_tool_the_wrappers_say_how_to_install_it(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    app = production_host(tmp_path / "aica-sys", installed=False)
    proc = run_in(app, *argv)
    assert "aica-backup is not installed" in proc.stderr
    assert "python3 -m venv .venv && .venv/bin/pip install" in proc.stderr
    assert "AICA_BACKUP_BIN" in proc.stderr
    assert "No module named" not in proc.stderr
    if argv[0] == "make":
        assert proc.returncode == 2 and "Error 127" in proc.stderr
    else:
        assert proc.returncode == 127
    assert not app.backups.exists()  # nothing made


def test_aica_backup_bin_wins_over_the_venv(tmp_path: Path) -> None:
    app = production_host(tmp_path / "aica-sys")
    venv_tool = app.root / ".venv" / "bin" / "aica-backup"
    venv_tool.write_text("#!/bin/sh\necho 'the venv tool ran' >&2\nexit 99\n")
    chosen = tool_shim(tmp_path / "elsewhere" / "aica-backup")
    proc = run_in(app, "scripts/backup.sh", env={"AICA_BACKUP_BIN": str(chosen)})
    assert proc.returncode == 0, proc.stderr  # the tool accepts the variable in its environment
    assert "the venv tool ran" not in proc.stderr
    assert len(app.archives()) == 1
    # Without it, the venv beside the app is the one found.
    assert run_in(app, "scripts/backup.sh").returncode == 99
    missing = run_in(app, "scripts/backup.sh", env={"AICA_BACKUP_BIN": str(tmp_path / "nope")})
    assert missing.returncode == 127
    assert f"AICA_BACKUP_BIN={tmp_path / 'nope'} is not an executable file" in missing.stderr


# -- docker-compose.yml and backend/Dockerfile --------------------------------------------------


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def test_compose_validates_against_the_compose_schema() -> None:
    proc = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def docker_app_root(root: Path) -> App:
    """An app root as the README sets it up for Docker: the app's data and backend code (the
    reference backend stands in), scripts/, Makefile, docker-compose.yml, backend/Dockerfile;
    no aica-backup source tree."""
    app = production_host(root)
    for source in [*REPO.glob("backend/*.py"), REPO / "backend" / "requirements.txt", DOCKERFILE]:
        shutil.copy2(source, app.root / "backend" / source.name)
    shutil.copy2(COMPOSE, app.root / COMPOSE.name)
    shutil.copy2(REPO / ".dockerignore", app.root / ".dockerignore")
    assert not (app.root / "pyproject.toml").exists() and not (app.root / "src").exists()
    return app


DOCKER_COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed here (Debian 12: apt-get install docker-compose)",
)
def test_debian_docker_compose_accepts_the_file_in_an_app_root(tmp_path: Path) -> None:
    """Debian 12's docker-compose 1.29, the spelling the guide uses, reads and resolves the
    file (`config` needs no Docker engine); it rejected bind.create_host_path."""
    assert DOCKER_COMPOSE is not None
    app = docker_app_root(tmp_path / "aica-sys")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AICA_", "COMPOSE_"))}
    version = subprocess.run(
        [DOCKER_COMPOSE, "version", "--short"], capture_output=True, text=True, env=env
    )
    proc = subprocess.run(
        [DOCKER_COMPOSE, "config"], cwd=app.root, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, f"docker-compose {version.stdout.strip()}: {proc.stderr}"
    resolved = YAML(typ="safe", pure=True).load(proc.stdout)
    for name in ("backend", "backup"):
        service = resolved["services"][name]
        context = Path(service["build"]["context"])
        assert context == app.root
        assert (context / service["build"]["dockerfile"]).is_file()
        env_mount = next(
            v
            for v in service["volumes"]
            if isinstance(v, dict) and v["target"] == "/app/.env.production"
        )
        # The long syntax: a missing .env.production is an error, never a new empty folder.
        assert env_mount["type"] == "bind" and env_mount["read_only"] is True
        assert env_mount["source"] == str(app.env)
    # Compose's .env sets the tool's pip requirement for the build.
    (app.root / ".env").write_text("AICA_BACKUP=aica-backup[backend]==9.9\n")
    pinned = subprocess.run(
        [DOCKER_COMPOSE, "config"], cwd=app.root, capture_output=True, text=True, env=env
    )
    assert "AICA_BACKUP: aica-backup[backend]==9.9" in pinned.stdout, pinned.stderr


def test_the_compose_schema_check_does_catch_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restart: [1]", 1))
    assert check_jsonschema("vendor.compose-spec", broken).returncode != 0


def backup_script() -> str:
    command = compose()["services"]["backup"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2])


def volumes(service: str) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for a service's mounts, short or long syntax."""
    found: dict[str, tuple[str, bool]] = {}
    for v in compose()["services"][service]["volumes"]:
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            found[target] = (source, mode == ["ro"])
        else:
            found[v["target"]] = (v["source"], bool(v.get("read_only")))
    return found


def test_backup_service_uses_aica_backup_never_cp() -> None:
    script = backup_script()
    assert "aica-backup backup --verify" in script
    assert re.search(r"\bcp\b", script) is None
    assert "aica_sys.db" not in script
    mounts = volumes("backup")
    # The database folder must be writable: SQLite's WAL readers write the -shm index.
    assert mounts["/app/backend"] == ("./backend", False)
    assert mounts["/app/backups"] == ("./backups", False)
    assert mounts["/app/public/uploads"] == ("./public/uploads", True)
    assert mounts["/app/.env.production"] == ("./.env.production", True)


def test_backend_service_serves_port_8000_with_the_data_mounted() -> None:
    backend = compose()["services"]["backend"]
    assert backend["build"] == {
        "context": ".",
        "dockerfile": "backend/Dockerfile",
        "args": {"AICA_BACKUP": "${AICA_BACKUP:-}"},
    }
    assert "8000:8000" in backend["ports"]
    mounts = volumes("backend")
    assert mounts["/app/backend"] == ("./backend", False)
    assert mounts["/app/public/uploads"] == ("./public/uploads", False)
    assert mounts["/app/.env.production"][0] == "./.env.production"
    assert "/health" in " ".join(backend["healthcheck"]["test"])
    # Both services run as the same user, so files one creates stay usable by the other.
    assert backend["user"] == compose()["services"]["backup"]["user"]


def test_compose_file_escapes_every_dollar_of_the_script() -> None:
    # Compose substitutes $VAR itself; the loop's own variables must be written $$VAR.
    assert all(len(run) % 2 == 0 for run in re.findall(r"\$+", backup_script()))


def gnu_date() -> bool:
    probe = subprocess.run(["date", "-d", "tomorrow 03:00", "+%s"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not gnu_date(), reason="needs GNU date, as in the Debian-based image")
def test_backup_loop_sleeps_until_the_next_0300_then_backs_up(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        # The first sleep returns at once; the second ends the loop (and the test).
        "sleep": f'echo "sleep $1" >> {calls}\n'
        f'[ "$(grep -c sleep {calls})" -ge 2 ] && kill -TERM "$PPID"\nexit 0',
        "aica-backup": f'echo "aica-backup $*" >> {calls}\nexit 2',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env_of_service = compose()["services"]["backup"]["environment"]
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TZ": env_of_service["TZ"],
        "BACKUP_AT": env_of_service["BACKUP_AT"],
    }
    script = backup_script().replace("$$", "$")  # what Compose hands to the container
    started = time.time()
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines()
    assert lines[1] == "aica-backup backup --verify"
    assert "backup failed (exit 2)" in proc.stderr  # a failed run is reported, the loop goes on
    seconds = int(lines[0].split()[1])
    wake = datetime.fromtimestamp(started + seconds, ZoneInfo("Asia/Tokyo"))
    assert 0 < seconds <= 86_400
    assert (wake.hour, wake.minute) in ((3, 0), (2, 59))  # the next 03:00 in Tokyo


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_runs_uvicorn_on_all_interfaces() -> None:
    instructions = dockerfile()
    assert instructions[0][0] == "FROM" and re.fullmatch(r"python:3\.1\d-slim", instructions[0][1])
    cmd = [args for ins, args in instructions if ins == "CMD"]
    assert cmd == ['["python", "-m", "uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]']
    # aica-backup from a pip requirement, not from a source tree an app root does not have.
    assert ("ARG", "AICA_BACKUP=") in instructions
    assert any(
        ins == "RUN" and args.startswith('pip install "${AICA_BACKUP:-aica-backup[backend] @ https')
        for ins, args in instructions
    )


def test_dockerfile_copies_code_that_exists_and_never_data(tmp_path: Path) -> None:
    app = docker_app_root(tmp_path / "aica-sys")
    for ins, args in dockerfile():
        assert ins != "ADD"
        if ins != "COPY":
            continue
        *sources, _dest = args.split()
        assert sources != ["."], "copying the whole tree would bake data into the image"
        # Docker accepts a COPY when its patterns match at least one file: in the app root,
        # the build context, which has no pyproject.toml or src/.
        assert any(glob.glob(str(app.root / s)) for s in sources), args
        for s in sources:
            assert not re.search(r"\.db|\.env|backups|uploads", s), s
