"""Configuration: defaults, file < environment < flags, and every problem reported at once."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from aica_backup.config import CONFIG_FILENAME, ENV_CONTROL, ENV_KEYS, load_settings
from aica_backup.errors import ConfigError, ExitCode
from aica_backup.retention import Policy
from tests.support.app import SECRET, App


def write_config(root: Path, text: str) -> Path:
    path = root / CONFIG_FILENAME
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(root: Path, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(root, **kw)  # type: ignore[arg-type]
    assert info.value.exit_code == ExitCode.USAGE
    return info.value.problems


def test_defaults_reproduce_the_guides_layout(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env={})
    layout = s.layout()
    assert layout.database_path == tmp_path / "backend" / "aica_sys.db"
    assert layout.uploads_path == tmp_path / "public" / "uploads"
    assert layout.config_path == tmp_path / ".env.production"
    assert layout.backups_dir == tmp_path / "backups"
    assert layout.database_optional is False
    assert s.retention.policy() == Policy(keep_last=7)
    assert s.backup.check == "quick" and s.restore.check == "integrity"
    assert s.backup.compression == "gzip"
    assert s.log_path == tmp_path / "backups" / ".aica-backup" / "aica-backup.log"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[retention]\nkeep_last = 5\nkeep_daily = 3\n[backup]\ncheck = "quick"\n',
    )
    key = ("retention", "keep_last")
    env = {"AICA_BACKUP_RETENTION_KEEP_LAST": "6"}

    s = load_settings(tmp_path, env={})
    assert (s.retention.keep_last, s.retention.keep_daily, s.backup.check) == (5, 3, "quick")
    s = load_settings(tmp_path, env=env)
    assert (s.retention.keep_last, s.retention.keep_daily) == (6, 3)
    s = load_settings(tmp_path, env=env, overrides={key: 4})
    assert (s.retention.keep_last, s.retention.keep_daily) == (4, 3)
    s = load_settings(tmp_path, env=env, overrides={key: None})  # a flag not given
    assert s.retention.keep_last == 6


def test_explicit_config_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc" / "aica.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text('app_name = "from-etc"\n')
    write_config(tmp_path, 'app_name = "from-root"\n')
    assert load_settings(tmp_path, env={}).app_name == "from-root"
    assert load_settings(tmp_path, config_file=elsewhere, env={}).app_name == "from-etc"
    missing = problems_of(tmp_path, config_file=tmp_path / "nope.toml", env={})
    assert len(missing) == 1 and "cannot read" in missing[0]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[retention]\nkeep_last = "many"\nkeep_within = "forever"\n[backup]\ncolour = "red"\n',
    )
    problems = problems_of(
        tmp_path,
        env={"AICA_BACKUP_BACKUP_THREADS": "lots", "AICA_BACKUP_NOT_A_KEY": "1"},
    )
    assert len(problems) == 4, problems  # an unknown variable only warns (test below)
    by_key = {p.split(":")[0]: p for p in problems}
    assert "integer" in by_key["retention.keep_last"]
    assert "not a duration" in by_key["retention.keep_within"]
    assert "unknown key" in by_key["backup.colour"]
    assert "integer" in by_key["backup.threads (from AICA_BACKUP_BACKUP_THREADS)"]
    # and all of it in one message, on one line
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env={"AICA_BACKUP_BACKUP_THREADS": "lots"})
    assert "\n" not in str(info.value)
    assert "retention.keep_last" in str(info.value) and "backup.threads" in str(info.value)


def test_flag_source_is_named(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, env={}, overrides={("backup", "check"): "thorough"})
    assert problem.startswith("backup.check (from --check):")


def test_toml_syntax_error_and_env_problems_together(tmp_path: Path) -> None:
    write_config(tmp_path, "[backup\nlevel = 1\n")
    problems = problems_of(tmp_path, env={"AICA_BACKUP_X": "1", "AICA_BACKUP_BACKUP_LEVEL": "x"})
    assert len(problems) == 2
    assert "not valid TOML" in problems[0] and "line 1" in problems[0]
    assert problems[1].startswith("backup.level (from AICA_BACKUP_BACKUP_LEVEL)")


def test_an_unknown_variable_warns_and_the_backup_runs(app: App) -> None:
    """Issue 14, item 15: a stray AICA_BACKUP_* variable in cron's environment stopped every
    command (exit 3), the 03:00 backup included. Now: one warning on stderr, and the run."""
    env = {**os.environ, "AICA_BACKUP_RETENTION_KEEP_LST": "30"}
    proc = app.run("backup", env=env)
    assert len(app.archives()) == 1
    assert "AICA_BACKUP_RETENTION_KEEP_LST: unknown variable, ignored" in proc.stderr
    assert "did you mean AICA_BACKUP_RETENTION_KEEP_LAST?" in proc.stderr
    s = load_settings(app.root, env={"AICA_BACKUP_NOPE": "1"})
    assert s.notes and s.notes[0].startswith("AICA_BACKUP_NOPE: unknown variable, ignored")


def test_control_variables_are_not_unknown(tmp_path: Path) -> None:
    env = {name: "1" for name in ENV_CONTROL}
    env["AICA_BACKUP_ROOT"] = str(tmp_path)
    load_settings(tmp_path, env=env)


def test_unrelated_variables_are_ignored(tmp_path: Path) -> None:
    load_settings(tmp_path, env={"AICA_BACKUPS": "x", "PATH": "/bin", "HOME": "/root"})


def test_env_values_are_typed(tmp_path: Path) -> None:
    s = load_settings(
        tmp_path,
        env={
            "AICA_BACKUP_OFFSITE_TARGETS": "s3:bucket/aica, rclone:remote:backups ,",
            "AICA_BACKUP_ENCRYPTION_RECIPIENTS": "age1abc,age1def",
            "AICA_BACKUP_IDENTITY": "keys/id.txt",
            "AICA_BACKUP_BACKUP_DATABASE_OPTIONAL": "true",
            "AICA_BACKUP_BACKUP_LOCK_WAIT": "2.5",
            "AICA_BACKUP_RETENTION_KEEP_WITHIN": "7d",
            "AICA_BACKUP_APP_NAME": "アイカ",
        },
    )
    assert s.offsite.targets == ["s3:bucket/aica", "rclone:remote:backups"]
    assert s.encryption.recipients == ["age1abc", "age1def"]
    assert s.identity_path == tmp_path / "keys" / "id.txt"
    assert s.backup.database_optional is True and s.layout().database_optional is True
    assert s.backup.lock_wait == 2.5
    assert s.retention.policy().keep_within is not None
    assert s.app_name == "アイカ"


def test_every_section_key_has_a_variable() -> None:
    assert ENV_KEYS["AICA_BACKUP_PATHS_DATABASE"] == ("paths", "database")
    assert ENV_KEYS["AICA_BACKUP_RETENTION_KEEP_LAST"] == ("retention", "keep_last")
    assert ENV_KEYS["AICA_BACKUP_APP_NAME"] == ("app_name",)
    assert "AICA_BACKUP_ROOT" not in ENV_KEYS  # a control variable, not a key
    assert "AICA_BACKUP_OFFSITE_RETENTION" not in ENV_KEYS  # a nested table: file only


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("database", "../outside.db", "'..'"),
        ("database", "/var/lib/aica.db", "relative"),
        ("uploads", "public/../../uploads", "'..'"),
        ("config", "", "non-empty"),
        ("config", " .env", "non-empty"),
        ("config", "conf\\\\.env", "backslashes"),
        ("uploads", "manifest.json", "reserved"),
    ],
)
def test_invalid_component_paths_rejected(tmp_path: Path, key: str, value: str, why: str) -> None:
    write_config(tmp_path, f'[paths]\n{key} = "{value}"\n')
    [problem] = problems_of(tmp_path, env={})
    assert problem.startswith(f"paths.{key}:") and why in problem


@pytest.mark.parametrize(
    ("database", "uploads"),
    [
        ("public/uploads/aica.db", "public/uploads"),  # database inside uploads
        ("data", "data/uploads"),  # uploads inside the database path
        ("public/uploads", "public/uploads"),  # the same path
    ],
)
def test_overlapping_component_paths_rejected(tmp_path: Path, database: str, uploads: str) -> None:
    write_config(tmp_path, f'[paths]\ndatabase = "{database}"\nuploads = "{uploads}"\n')
    [problem] = problems_of(tmp_path, env={})
    assert "overlap" in problem and "database" in problem and "uploads" in problem


@pytest.mark.parametrize(
    ("backups", "why"),
    [
        ("public/uploads/backups", "backups ({root}/public/uploads/backups) lies inside uploads"),
        ("public/uploads", "lies inside uploads"),
        ("{root}/public/uploads/../uploads/b", "lies inside uploads"),
        ("public", "uploads ({root}/public/uploads) lies inside backups"),
        (".", "lies inside backups"),
        ("backend", "database ({root}/backend/aica_sys.db) lies inside backups"),
    ],
)
def test_backups_folder_must_not_overlap_a_component(
    tmp_path: Path, backups: str, why: str
) -> None:
    """Backups inside uploads would nest every archive in the next; a component inside the
    backups folder would be made private (0700) with it."""
    write_config(tmp_path, f'[paths]\nbackups = "{backups.format(root=tmp_path)}"\n')
    [problem] = problems_of(tmp_path, env={})
    assert why.format(root=tmp_path) in problem


def test_siblings_with_a_common_prefix_do_not_overlap(tmp_path: Path) -> None:
    write_config(tmp_path, '[paths]\ndatabase = "data.db"\nuploads = "data.db-uploads"\n')
    load_settings(tmp_path, env={})


def test_backups_folder_may_be_absolute_or_relative(tmp_path: Path) -> None:
    write_config(tmp_path, '[paths]\nbackups = "/srv/backups"\n')
    assert load_settings(tmp_path, env={}).layout().backups_dir == Path("/srv/backups")
    write_config(tmp_path, '[paths]\nbackups = "var/backups"\n')
    assert load_settings(tmp_path, env={}).layout().backups_dir == tmp_path / "var" / "backups"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[retention]\nkeep_last = 0\n", "at least one keep_* rule"),
        ("[backup]\nlevel = 9\n", "levels are 0-3"),
        ("[backup]\ncompression = 'xz'\n", "backup.compression"),
        ("[retention]\nkeep_last = -1\n", "retention.keep_last"),
        ("[backup]\ndatabase_optional = 'sometimes'\n", "backup.database_optional"),
        ("paths = 3\n", "paths:"),
        ("[colours]\nred = 1\n", "colours: unknown key"),
    ],
)
def test_semantic_problems(tmp_path: Path, text: str, fragment: str) -> None:
    write_config(tmp_path, text)
    problems = problems_of(tmp_path, env={})
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[offsite.retention]\nkeep_last = 0\n", "offsite.retention: at least one keep_*"),
        ("[offsite.retention]\nkeep_daily = 3\nbogus = 1\n", "offsite.retention.bogus: unknown"),
        ("[offsite]\nretention = 3\n", "offsite.retention: must be a table"),
        ("[offsite]\ntargets = ['a', 3]\n", "offsite.targets: must be a list of strings"),
        ("[restore]\nhealth_timeout = 0\n", "restore.health_timeout: must be greater than 0"),
        ("[backup]\nthreads = 300\n", "backup.threads: must be at most 256"),
        ("[backup]\nthreads = true\n", "backup.threads: must be an integer"),
        ("[backup]\nlevel = 2.5\n", "backup.level: must be an integer"),
        ("[backup]\nlock_wait = 'soon'\n", "backup.lock_wait: must be a number"),
        ("[backup]\nverify = 1\n", "backup.verify: must be a boolean"),
        ("app_name = 5\n", "app_name: must be a string"),
    ],
)
def test_each_key_is_typed_and_bounded(tmp_path: Path, text: str, expected: str) -> None:
    write_config(tmp_path, text)
    [problem] = problems_of(tmp_path, env={})
    assert problem.startswith(expected), problem


def test_whole_numbers_written_as_floats_are_integers(tmp_path: Path) -> None:
    write_config(tmp_path, "[log]\nmax_bytes = 1e6\n[backup]\nthreads = 4.0\n")
    s = load_settings(tmp_path, env={})
    assert (s.log.max_bytes, s.backup.threads) == (1_000_000, 4)
    assert isinstance(s.log.max_bytes, int)


def test_env_strings_are_parsed_by_their_key(tmp_path: Path) -> None:
    s = load_settings(
        tmp_path,
        env={
            "AICA_BACKUP_BACKUP_VERIFY": "yes",
            "AICA_BACKUP_BACKUP_IDLE_PRIORITY": "0",
            "AICA_BACKUP_BACKUP_LEVEL": " 2 ",
            "AICA_BACKUP_NOTIFY_TIMEOUT": "1e1",
            "AICA_BACKUP_BACKUP_THREADS": "4.0",
            "AICA_BACKUP_BACKUP_DATABASE_OPTIONAL": "y",
        },
    )
    assert (s.backup.verify, s.backup.idle_priority, s.backup.level) == (True, False, 2)
    assert s.notify.timeout == 10.0
    assert (s.backup.threads, s.backup.database_optional) == (4, True)
    problems = problems_of(
        tmp_path,
        env={"AICA_BACKUP_BACKUP_VERIFY": "maybe", "AICA_BACKUP_HEALTH_MAX_AGE_HOURS": "nan"},
    )
    assert problems == [
        "backup.verify (from AICA_BACKUP_BACKUP_VERIFY): must be a boolean (true or false)",
        "health.max_age_hours (from AICA_BACKUP_HEALTH_MAX_AGE_HOURS): must be greater than 0",
    ]


def test_a_bad_file_table_is_not_hidden_by_an_env_variable(tmp_path: Path) -> None:
    write_config(tmp_path, "paths = 3\n")
    problems = problems_of(tmp_path, env={"AICA_BACKUP_PATHS_DATABASE": "x.db"})
    assert any(p.startswith("paths:") for p in problems), problems


# --------------------------------------------------------------------------------------------
# The real command line.


def test_cli_bad_config_exits_3_with_one_line(app: App) -> None:
    write_config(app.root, '[retention]\nkeep_last = "many"\n[backup]\ncolour = "red"\n')
    env = {**os.environ, "AICA_BACKUP_BACKUP_THREADS": "lots"}
    proc = app.run("backup", check=False, env=env)
    assert proc.returncode == ExitCode.USAGE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aica-backup: error: invalid configuration:")
    for key in ("retention.keep_last", "backup.colour", "AICA_BACKUP_BACKUP_THREADS"):
        assert key in lines[0]
    assert proc.stdout == ""
    assert not app.backups.exists() or not app.archives()
    assert SECRET not in proc.stderr


def test_cli_bad_config_with_json(app: App) -> None:
    write_config(app.root, "[backup]\nlevel = 9\n")
    proc = app.run("list", "--json", check=False)
    assert proc.returncode == ExitCode.USAGE
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["exit_code"] == 3 and report["kind"] == "ConfigError"
    assert "levels are 0-3" in report["error"]


def _manifest_check(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return str(json.load(member)["components"]["database"]["check"])


def test_cli_precedence_end_to_end(app: App) -> None:
    """File says integrity, the environment says quick, the flag says none."""
    write_config(app.root, '[backup]\ncheck = "integrity"\n')
    env = {**os.environ, "AICA_BACKUP_BACKUP_CHECK": "quick"}
    app.run("backup", "--check", "none", env=env)
    app.run("backup", env=env)
    app.run("backup")
    checks = [_manifest_check(a) for a in app.archives()]
    assert checks == ["none", "quick_check", "integrity_check"]
