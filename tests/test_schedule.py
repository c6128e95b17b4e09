"""Schedules: the guide's cron lines (printed, merged, installed with the real crontab) and the
systemd service + timer (checked by the real systemd-analyze where it exists)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement

from aica_backup import schedule
from aica_backup.errors import UsageError
from tests.support.app import App, make_app

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = "/path/to/aica-sys"
# Verbatim from the guide's 自動化 > Cron設定 section.
GUIDE_LINES = [
    "0 3 * * * cd /path/to/aica-sys && ./scripts/backup.sh >> /var/log/aica-sys-backup.log 2>&1",
    "0 2 * * 0 cd /path/to/aica-sys && ./scripts/backup.sh >> /var/log/aica-sys-backup.log 2>&1",
]
CRONTAB = shutil.which("crontab")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def with_backup_script(app: App, body: str = "exit 0") -> None:
    script = app.root / "scripts" / "backup.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


# -- the lines ---------------------------------------------------------------------------------


def test_lines_are_the_guides() -> None:
    assert schedule.cron_lines(Path(SAMPLE_ROOT)) == GUIDE_LINES


def lines_for(app: App) -> list[str]:
    """The guide's lines for ``app``, with the log this user gets (the guide's where writable)."""
    # `app.run` runs this venv's Python: the lines name the aica-backup beside it.
    tool = Path(sys.executable).parent / "aica-backup"
    lines = [
        line.replace(SAMPLE_ROOT, str(app.root)).replace(
            "./scripts/", f"AICA_BACKUP_BIN={tool} ./scripts/"
        )
        for line in GUIDE_LINES
    ]
    if schedule.can_append(schedule.DEFAULT_LOG_FILE):
        return lines
    fallback = str(app.backups / ".aica-backup" / "cron.log")
    return [line.replace(str(schedule.DEFAULT_LOG_FILE), fallback) for line in lines]


def test_command_prints_the_guide_lines_for_this_app(app: App) -> None:
    with_backup_script(app)
    proc = app.run("schedule", "cron")
    assert proc.stdout.splitlines() == lines_for(app)
    assert "backup.sh" not in proc.stderr


def test_command_warns_outside_an_app_root(app: App) -> None:
    proc = app.run("schedule", "cron")
    assert "scripts/backup.sh is missing or not executable" in proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_log_option_is_made_absolute(app: App, tmp_path: Path) -> None:
    with_backup_script(app)
    (tmp_path / "logs").mkdir()
    proc = app.run("schedule", "cron", "--log", "logs/backup.log", cwd=tmp_path)
    for line in proc.stdout.splitlines():
        assert line.endswith(f">> {tmp_path}/logs/backup.log 2>&1")


def test_odd_paths_survive_cron_and_the_shell(tmp_path: Path) -> None:
    root = tmp_path / "my app 100%"
    app = App(root)
    root.mkdir()
    with_backup_script(app, 'echo "ran in $PWD"')
    log = tmp_path / "log dir" / "backup 'log'.txt"
    log.parent.mkdir()
    line = schedule.cron_lines(root, log)[0]
    command = line.split(" ", 5)[5]
    # cron turns an unescaped % into a line break and unescapes \% before running sh -c.
    assert re.search(r"(?<!\\)%", command) is None
    subprocess.run(["sh", "-c", command.replace("\\%", "%")], check=True, cwd=tmp_path)
    assert log.read_text() == f"ran in {root}\n"


@pytest.mark.parametrize("root", ["relative/app", "/srv/app\nrm -rf /"])
def test_unusable_paths_are_refused(root: str) -> None:
    with pytest.raises(UsageError):
        schedule.cron_lines(Path(root))


def test_sample_cron_file_has_the_guide_lines() -> None:
    text = (REPO / "deploy" / "cron" / "aica-backup.cron").read_text()
    jobs = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert jobs == GUIDE_LINES


# -- merging into a crontab --------------------------------------------------------------------

LINES = schedule.cron_lines(Path("/srv/aica-sys"))
BLOCK = "\n".join(schedule.cron_block(LINES))


def test_merge_into_an_empty_crontab() -> None:
    merged = schedule.merge_block("", LINES)
    assert merged == BLOCK + "\n"
    assert merged.splitlines()[0] == "# BEGIN aica-backup"
    assert merged.splitlines()[-1] == "# END aica-backup"
    assert schedule.merge_block(merged, LINES) == merged


def test_merge_keeps_the_users_lines_and_is_idempotent() -> None:
    mine = "MAILTO=ops@example.com\n# my jobs\n*/5 * * * * /usr/local/bin/poll\n"
    merged = schedule.merge_block(mine, LINES)
    assert merged == mine + "\n" + BLOCK + "\n"
    assert schedule.merge_block(merged, LINES) == merged
    assert schedule.remove_block(merged) == mine


def test_merge_replaces_the_block_in_place() -> None:
    begin, end = schedule.BEGIN_MARKER, schedule.END_MARKER
    text = f"SHELL=/bin/bash\n{begin}\nold line\n{end}\n@reboot me\n"
    merged = schedule.merge_block(text, LINES)
    assert merged == f"SHELL=/bin/bash\n{BLOCK}\n@reboot me\n"
    assert "old line" not in merged


def test_merge_without_a_final_newline() -> None:
    merged = schedule.merge_block("@daily job", LINES)
    assert merged.startswith("@daily job\n\n# BEGIN aica-backup\n")
    assert merged.endswith("\n")


def test_removing_a_missing_block_changes_nothing() -> None:
    assert schedule.remove_block("@daily job\n\n") == "@daily job\n\n"


@pytest.mark.parametrize(
    "text",
    [
        "# BEGIN aica-backup\n0 3 * * * mine\n",  # no end: guessing could delete the user's job
        "0 3 * * * mine\n# END aica-backup\n",
        "# BEGIN aica-backup\n# BEGIN aica-backup\n# END aica-backup\n",
    ],
)
def test_broken_markers_are_refused_not_guessed(text: str) -> None:
    with pytest.raises(UsageError):
        schedule.merge_block(text, LINES)
    with pytest.raises(UsageError):
        schedule.remove_block(text)


# Anything but a line break, \r and U+2028 included: a crontab line ends only at "\n".
user_line = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=40
).filter(lambda s: s.strip() not in (schedule.BEGIN_MARKER, schedule.END_MARKER))


@given(st.lists(user_line, max_size=12))
def test_merge_never_drops_or_reorders_a_user_line(lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    merged = schedule.merge_block(text, LINES)
    assert schedule.merge_block(merged, LINES) == merged
    outside = [line for line in schedule.remove_block(merged).split("\n") if line.strip()]
    assert outside == [line for line in lines if line.strip()]
    assert merged.count(schedule.BEGIN_MARKER) == 1


# -- the real crontab --------------------------------------------------------------------------


def crontab_text() -> str | None:
    assert CRONTAB is not None
    proc = subprocess.run([CRONTAB, "-l"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def set_crontab(text: str | None) -> None:
    assert CRONTAB is not None
    if text is None:
        subprocess.run([CRONTAB, "-r"], capture_output=True)
    else:
        subprocess.run([CRONTAB, "-"], input=text, text=True, check=True)


@pytest.fixture
def user_crontab() -> Iterator[None]:
    """Save this user's crontab and put it back afterwards, whatever the test did."""
    if CRONTAB is None:
        pytest.skip("the crontab command is not installed here (Debian: apt-get install cron)")
    original = crontab_text()
    try:
        yield
    finally:
        set_crontab(original)


def test_install_and_remove_with_the_real_crontab(app: App, user_crontab: None) -> None:
    with_backup_script(app)
    mine = "# my own jobs\n*/10 * * * * /usr/bin/true\n"
    set_crontab(mine)
    first = app.run("schedule", "cron", "--install")
    assert "Installed in your crontab" in first.stderr
    again = app.run("schedule", "cron", "--install")
    assert "already has these lines" in again.stderr
    installed = crontab_text()
    assert installed is not None
    assert installed.startswith(mine)
    assert installed.count(schedule.BEGIN_MARKER) == 1
    assert [line for line in installed.splitlines() if line.startswith("0 ")] == lines_for(app)
    assert "Removed" in app.run("schedule", "cron", "--remove").stdout
    assert crontab_text() == mine


def test_missing_crontab_is_a_clear_error(app: App, tmp_path: Path) -> None:
    with_backup_script(app)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    proc = app.run(
        "schedule",
        "cron",
        "--install",
        check=False,
        env={"PATH": str(empty), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "the crontab command is not installed" in proc.stderr
    assert "apt-get install cron" in proc.stderr
    assert not app.backups.exists()  # a failed command makes nothing


def test_install_refuses_a_log_it_cannot_write(app: App, tmp_path: Path) -> None:
    """An explicit --log that cannot be opened: cron would fail the redirection, and the backup
    would never start. Refused, with the fix, and nothing installed."""
    with_backup_script(app)
    log = tmp_path / "no such folder" / "backup.log"
    empty = tmp_path / "empty-path"  # no crontab on PATH: the refusal must come before it
    empty.mkdir()
    for args in (("--install",), ()):
        proc = app.run(
            "schedule", "cron", "--log", str(log), *args, check=False, env={"PATH": str(empty)}
        )
        assert proc.returncode == 3, proc.stderr
        assert f"you cannot write {log}: cron would fail to open it" in proc.stderr
        assert f"mkdir -p {log.parent}" in proc.stderr and proc.stdout == ""
    assert not log.parent.exists() and not app.backups.exists()


def test_install_refuses_a_line_whose_script_is_missing(app: App, tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    proc = app.run("schedule", "cron", "--install", check=False, env={"PATH": str(empty)})
    assert proc.returncode == 3
    assert "scripts/backup.sh is missing or not executable: the jobs would fail" in proc.stderr
    assert not app.backups.exists()


# -- the real cron daemon, running the installed line as an unprivileged user ------------------

CRON = shutil.which("cron") or next(
    (p for p in ("/usr/sbin/cron", "/usr/sbin/crond") if os.access(p, os.X_OK)), None
)
USERADD = shutil.which("useradd") or next(
    (p for p in ("/usr/sbin/useradd",) if os.access(p, os.X_OK)), None
)
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.fixture
def cron_daemon() -> Iterator[None]:
    """The real cron daemon: the one already running, or one started here and stopped after."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the cron daemon and makes a second user")
    if CRON is None or CRONTAB is None or USERADD is None:
        pytest.skip("cron is not installed here (Debian: apt-get install cron)")
    proc = subprocess.Popen([CRON, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.5)  # exits at once when another cron holds its pid file: use that one
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def second_user() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged account with a home under a world-traversable /tmp folder."""
    if os.geteuid() != 0 or USERADD is None:
        pytest.skip("needs root and useradd to make a second user")
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON}, which a second user can run")
    base = Path(tempfile.mkdtemp(prefix="aica-user-", dir="/tmp"))
    base.chmod(0o755)
    name = f"aicab{os.getpid()}_{base.name[-6:].lower()}"  # unique per test, <= 32 chars
    subprocess.run(
        [
            USERADD,
            "--home-dir",
            str(base / "home"),
            "--create-home",
            "--shell",
            "/bin/sh",
            "--user-group",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        if CRONTAB is not None:
            subprocess.run([CRONTAB, "-u", name, "-r"], capture_output=True)
        wait_for_no_processes(pwd.getpwnam(name).pw_uid, 30)
        subprocess.run(["userdel", name], check=True, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def wait_for_no_processes(uid: int, timeout: float) -> None:
    """Wait until no process runs as ``uid`` (a cron job still finishing, for instance)."""
    deadline = time.monotonic() + timeout
    while any(p.info["uids"] and p.info["uids"].real == uid for p in psutil.process_iter(["uids"])):
        assert time.monotonic() < deadline, f"processes of uid {uid} still running"
        time.sleep(0.1)


def install_tool_for_anyone(venv: Path) -> None:
    """aica-backup in ``venv``, as `pip install` would put it, readable by every user.

    This checkout and its .venv may sit in root's 0700 home, out of another user's reach, so
    the venv is the system Python's with copies of the package and its runtime dependencies.
    """
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3.*/site-packages"))
    shutil.copytree(
        REPO / "src" / "aica_backup",
        site / "aica_backup",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    todo, seen = ["aica-backup"], set()
    while todo:
        for text in importlib.metadata.distribution(todo.pop()).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra, or another platform's
            name = requirement.name.lower()
            if name not in seen:
                seen.add(name)
                todo.append(name)
    for name in seen:
        for file in importlib.metadata.distribution(name).files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(file.locate())), target)
    tool = venv / "bin" / "aica-backup"
    tool.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom aica_backup.cli import main\nsys.exit(main())\n"
    )
    tool.chmod(0o755)


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def app_of(user: pwd.struct_passwd, venv: Path | None = None) -> App:
    """A sample app of ``user``'s: scripts/, the tool in ``venv`` (default: the app's .venv)."""
    app = make_app(Path(user.pw_dir).parent / "aica-sys")
    (app.root / "scripts").mkdir()
    for name in ("backup.sh", "_aica.sh"):
        shutil.copy2(REPO / "scripts" / name, app.root / "scripts" / name)
    venv = venv or app.root / ".venv"
    install_tool_for_anyone(venv)
    chown_tree(app.root, user)
    chown_tree(venv, user)
    return app


@pytest.mark.slow
def test_installed_line_runs_under_the_real_cron_as_an_unprivileged_user(
    cron_daemon: None, second_user: pwd.struct_passwd
) -> None:
    """The reported case: `schedule cron --install` as a user who cannot write /var/log. The
    line it installs must run under the real cron daemon: a backup made by that user, its
    output in the log the command named. The tool lives where pipx or uv put one, outside
    the app and out of cron's PATH: the line runs the tool that installed it (before: the
    wrapper found no aica-backup and exited 127, every night)."""
    venv = Path(second_user.pw_dir) / ".local" / "share" / "aica-backup-venv"
    app = app_of(second_user, venv)
    tool = venv / "bin" / "aica-backup"
    env = {"HOME": second_user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.run(
        [str(tool), "schedule", "cron", "--install"],
        cwd=app.root,
        env=env,
        user=second_user.pw_uid,
        group=second_user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    log = app.backups / ".aica-backup" / "cron.log"
    assert f"You cannot write {schedule.DEFAULT_LOG_FILE}: the jobs log to {log}" in proc.stderr
    assert CRONTAB is not None
    name = second_user.pw_name
    installed = subprocess.run(
        [CRONTAB, "-u", name, "-l"], capture_output=True, text=True, check=True
    ).stdout
    daily = next(line for line in installed.splitlines() if line.startswith("0 3 * * * "))
    # The tool that installed the line is the one it runs (cron's PATH would not find it).
    assert daily == (
        f"0 3 * * * cd {app.root} && AICA_BACKUP_BIN={tool} ./scripts/backup.sh >> {log} 2>&1"
    )
    # The same command, every minute: cron runs it at the next minute boundary.
    subprocess.run(
        [CRONTAB, "-u", name, "-"],
        input=installed.replace("0 3 * * * ", "* * * * * "),
        text=True,
        check=True,
    )
    deadline = time.monotonic() + 75
    while "Backup created" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "cron never ran the installed line"
        time.sleep(0.5)
    subprocess.run([CRONTAB, "-u", name, "-r"], check=True)
    wait_for_no_processes(second_user.pw_uid, 60)  # the job logs, then indexes and prunes
    made = app.archives()
    assert len(made) == 1
    for path in [app.backups, *app.backups.rglob("*")]:
        assert path.stat().st_uid == second_user.pw_uid, path  # all the user's own
    assert log.stat().st_uid == second_user.pw_uid
    assert made[0].name in log.read_text()


# -- systemd -----------------------------------------------------------------------------------

UNITS = REPO / "deploy" / "systemd"


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists (keys like OnCalendar may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_service_runs_the_backup_script_hardened() -> None:
    service = unit("aica-backup.service")["Service"]
    one = {k: v for k, v in service}
    assert one["Type"] == "oneshot"
    assert one["WorkingDirectory"] == SAMPLE_ROOT
    assert one["ExecStart"] == f"{SAMPLE_ROOT}/scripts/backup.sh --verify"
    assert one["IOSchedulingClass"] == "idle" and int(one["Nice"]) > 0
    assert one["ProtectSystem"] == "strict"
    assert one["ReadWritePaths"] == SAMPLE_ROOT
    assert one["PrivateTmp"] == "true" and one["NoNewPrivileges"] == "true"
    assert one["UMask"] == "0077"


def test_timer_keeps_the_guides_schedule() -> None:
    sections = unit("aica-backup.timer")
    timer = sections["Timer"]
    assert values(timer, "OnCalendar") == ["*-*-* 03:00:00", "Sun *-*-* 02:00:00"]
    assert values(timer, "Persistent") == ["true"]
    assert values(timer, "RandomizedDelaySec") == ["5min"]
    assert values(timer, "Unit") == ["aica-backup.service"]
    assert values(sections["Install"], "WantedBy") == ["timers.target"]


def installed_units(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    """The units with a real app root (systemd-analyze checks ExecStart exists)."""
    app = App(tmp_path / "aica-sys")
    app.root.mkdir()
    with_backup_script(app)
    out = tmp_path / "units"
    out.mkdir()
    for name in ("aica-backup.service", "aica-backup.timer"):
        text = (UNITS / name).read_text().replace(SAMPLE_ROOT, str(app.root))
        if name.endswith(".service"):
            text += extra
        (out / name).write_text(text)
    return out / "aica-backup.service", out / "aica-backup.timer"


def analyze_verify(*units: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def complaints(proc: subprocess.CompletedProcess[str], folder: Path) -> list[str]:
    """Problems systemd-analyze reports about our units (not about the host's own units)."""
    text = proc.stdout + proc.stderr
    return [line for line in text.splitlines() if str(folder) in line or "aica-backup" in line]


needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here (no systemd)"
)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service, timer = installed_units(tmp_path)
    proc = analyze_verify(service, timer)
    assert proc.returncode == 0, proc.stderr
    assert complaints(proc, service.parent) == []


@needs_systemd_analyze
def test_systemd_analyze_verify_does_catch_mistakes(tmp_path: Path) -> None:
    service, timer = installed_units(tmp_path, extra="ProtectSytem=strict\n")
    proc = analyze_verify(service, timer)
    assert any("ProtectSytem" in line for line in complaints(proc, service.parent))


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("spec", "when"), [("*-*-* 03:00:00", " 03:00:00 "), ("Sun *-*-* 02:00:00", "Sun ")]
)
def test_timer_calendars_parse(spec: str, when: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", spec], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Normalized form: {spec}" in proc.stdout
    next_elapse = next(line for line in proc.stdout.splitlines() if "Next elapse:" in line)
    assert when in next_elapse


SERVICE_SCORE_LIMIT = 4.0  # systemd-analyze's exposure, 0 (safe) to 10; "OK" is below 4.0


@needs_systemd_analyze
def test_service_is_hardened_by_systemd_analyze_security(tmp_path: Path) -> None:
    """The filled-in unit, rated offline by the real systemd-analyze: it was 7.1 MEDIUM."""
    assert SYSTEMD_ANALYZE is not None
    service, _ = installed_units(tmp_path)
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )
    found = re.search(r"Overall exposure level for aica-backup\.service: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= SERVICE_SCORE_LIMIT, proc.stdout


def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups (``@name`` -> members, groups included), from systemd-analyze."""
    assert SYSTEMD_ANALYZE is not None
    text = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """Syscall names of ``names``, groups expanded (iteratively: they nest)."""
    found: set[str] = set()
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name.startswith("@"):
            if name not in seen:
                seen.add(name)
                todo.extend(groups[name])
        else:
            found.add(name)
    return found


def service_filter() -> set[str] | None:
    """The system calls the shipped unit's SystemCallFilter= lines allow (None: no filter)."""
    lines = values(unit("aica-backup.service")["Service"], "SystemCallFilter")
    if not lines:
        return None
    assert not lines[0].startswith("~"), "expected an allow list first"
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in lines:
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        allowed = allowed - names if deny else allowed | names
    return allowed


STRACE = shutil.which("strace")


@needs_systemd_analyze
@pytest.mark.slow
@pytest.mark.skipif(STRACE is None, reason="strace is not installed here")
def test_the_hardened_service_allows_what_a_backup_does(second_user: pwd.struct_passwd) -> None:
    """A real `backup --verify` as the unit runs it (an unprivileged User=, the tool in the
    app's venv), traced with strace: every system call it makes is in the unit's allow list
    (one outside it would fail with EPERM under systemd), and it opens no /proc file but its
    own processes' (ProcSubset=pid)."""
    assert STRACE is not None
    app = app_of(second_user)
    trace = Path(second_user.pw_dir) / "trace"
    proc = subprocess.run(
        [STRACE, "-f", "-qq", "-o", str(trace), "scripts/backup.sh", "--verify"],
        cwd=app.root,
        env={"HOME": second_user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        user=second_user.pw_uid,
        group=second_user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and not trace.exists():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert len(app.archives()) == 1
    calls: set[str] = set()
    proc_files: set[str] = set()
    for line in trace.read_text().splitlines():
        call = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
        if call is None:
            continue  # "<... resumed>", signals, exits
        calls.add(call.group(1))
        opened = re.search(r'open(?:at)?\((?:AT_FDCWD, )?"(/proc/[^"]*)"', line)
        if opened:
            proc_files.add(opened.group(1))
    allowed = service_filter()
    blocked = set() if allowed is None else calls - allowed
    assert blocked == set(), f"blocked under the unit: {sorted(blocked)}"
    assert {"sched_setscheduler", "execve", "fsync"} <= calls  # the trace is real
    own = re.compile(r"/proc/(self|thread-self|\d+)(/|$)")
    assert {p for p in proc_files if not own.match(p)} == set()
