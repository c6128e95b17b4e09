"""The archive fuzzer: mutants of a real archive made by the tool, against the invariants.

Issue 14.9 found, over 1,584 mutants, archives that ``verify`` passed and ``restore`` could not
restore. Each mutant here is one change to a small real archive: flipped bits (compressed and
in the tar stream), truncations, manifest edits that keep it consistent and edits that do
not, member paths (deep, long, unsafe, under a file), trailing data. For every mutant:

- verify and restore raise only the tool's own errors (no traceback), and finish in time;
- nothing is written outside the verify scratch folder and the restore's app or target;
- a restore that fails changes nothing in the live app it was aimed at;
- verify ok ⇒ restore ok, and the restored tree is what the manifest lists.

Most mutants run in-process (a few hundred in seconds); a sample runs through the real
command line. The invariants are asserted, never today's exact outputs.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aica_backup.archive import scan_file
from aica_backup.backup import BackupOptions, create_archive
from aica_backup.errors import AicaBackupError, ArchiveError, ExitCode
from aica_backup.fsutil import discard_tree, walk_tree
from aica_backup.layout import COMPONENT_ORDER, Component, Layout
from aica_backup.manifest import MAX_MTIME
from aica_backup.restore import RestoreOptions, restore
from aica_backup.verify import verify_archive
from tests.support.app import make_app
from tests.support.fs import listing

NAME = "backup_20240101_030000.tar.gz"
SLOW = 10.0  # seconds one verify or restore of a ~10 KB mutant may take: a hang is a bug
Entry = tuple[tarfile.TarInfo, bytes | None]


@dataclass
class Original:
    """The real archive, taken apart: its tar members (manifest last) and its manifest."""

    data: bytes
    entries: list[Entry]
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    app = make_app(tmp_path_factory.mktemp("fuzz") / "app", rows=20)
    result = create_archive(Layout(root=app.root), BackupOptions(check="none", threads=1))
    data = result.path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = [
            (info, tar.extractfile(info).read() if info.isfile() else None)  # type: ignore[union-attr]
            for info in tar
        ]
    manifest = json.loads(entries[-1][1] or b"")
    return Original(data, entries[:-1], manifest)


# -- building mutants ------------------------------------------------------------------------


def pack(entries: list[Entry], manifest: dict[str, Any] | bytes, tail: bytes = b"") -> bytes:
    """A tar.gz of ``entries`` then the manifest; ``tail`` after the end marker."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size, info.mtime, info.mode = len(body), 1_700_000_000, 0o600
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in [*entries, (info, body)]:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue() + tail, compresslevel=1, mtime=0)


def copy_entries(o: Original) -> list[Entry]:
    return [(copy.copy(info), data) for info, data in o.entries]


def reseal(entries: list[Entry], manifest: dict[str, Any]) -> dict[str, Any]:
    """Make the manifest list exactly ``entries`` (sizes, SHA-256, uploads counts), keeping
    every other field, as a careful forger or a later writer would."""
    old = {m["path"]: m for m in manifest["members"]}
    members = []
    for info, data in entries:
        kept = old.get(info.name, {})
        component = kept.get("component") or _component_of(manifest, info.name)
        members.append(
            {
                "path": info.name,
                "type": "dir" if info.isdir() else "file",
                "size": 0 if info.isdir() else len(data or b""),
                "mode": kept.get("mode", info.mode),
                "mtime": kept.get("mtime", info.mtime),
                "sha256": "" if info.isdir() else hashlib.sha256(data or b"").hexdigest(),
                "component": component,
            }
        )
    manifest = {**manifest, "members": members}
    files = [m for m in members if m["component"] == "uploads" and m["type"] == "file"]
    uploads = manifest["components"]["uploads"]
    uploads["file_count"] = len(files)
    uploads["total_bytes"] = sum(m["size"] for m in files)
    return manifest


def _component_of(manifest: dict[str, Any], path: str) -> str:
    for name, info in manifest["components"].items():
        if path == info["path"] or path.startswith(info["path"] + "/"):
            return str(name)
    return "uploads"


def _file(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    return info, data


def _dir(name: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    return info, None


def _manifest(o: Original) -> dict[str, Any]:
    return json.loads(json.dumps(o.manifest))


Mutant = Callable[[Original, Any], bytes]  # given the original and a random source


def flip_file(o: Original, r: Any) -> bytes:
    data = bytearray(o.data)
    data[r.randrange(len(data))] ^= 1 << r.randrange(8)
    return bytes(data)


def flip_tar(o: Original, r: Any) -> bytes:
    tar = bytearray(gzip.decompress(o.data))
    tar[r.randrange(len(tar))] ^= 1 << r.randrange(8)
    return gzip.compress(bytes(tar), mtime=0)


def truncate_file(o: Original, r: Any) -> bytes:
    return o.data[: r.randrange(len(o.data))]


def truncate_tar(o: Original, r: Any) -> bytes:
    tar = gzip.decompress(o.data)
    return gzip.compress(tar[: r.randrange(len(tar))], mtime=0)


# Manifest edits that keep it true to the members: whatever verify passes, restore must do.
def _consistent_edit(o: Original, r: Any) -> bytes:
    m = _manifest(o)
    entries = copy_entries(o)
    choice = r.randrange(9)
    if choice == 0:
        r.choice(m["members"])["mtime"] = r.choice([0, 1.5, -1, MAX_MTIME, -MAX_MTIME, 2**33])
    elif choice == 1:
        r.choice(m["members"])["mode"] = r.choice([0, 0o7777, 0o4755, 0o400, 0o111])
    elif choice == 2:
        m[r.choice(["host", "app_root", "tool_version"])] = r.choice(["", "x" * 5000, "日本"])
    elif choice == 3:
        m["warnings"] = r.choice([[], ["w"] * 100, "not a list"])
    elif choice == 4:  # an archive without uploads, said so
        entries = [(i, d) for i, d in entries if not i.name.startswith("public")]
        m["components"]["uploads"] = {"path": "public/uploads", "present": False}
    elif choice == 5:  # without its config
        entries = [(i, d) for i, d in entries if i.name != ".env.production"]
        m["components"]["config"]["present"] = False
    elif choice == 6:  # without its database
        entries = [(i, d) for i, d in entries if not i.name.startswith("backend")]
        m["components"]["database"] = {"path": "backend/aica_sys.db", "present": False}
    elif choice == 7:  # members in another order (the database no longer first)
        r.shuffle(entries)
        entries.sort(key=lambda e: e[0].name.count("/"))  # parents before children
    else:
        m["components"]["database"]["extra_field"] = {"nested": [1, 2]}
    return pack(entries, reseal(entries, m))


# Edits that make the manifest contradict itself or its members: never verify ok unless
# restore still gives exactly what the manifest lists.
def _inconsistent_edit(o: Original, r: Any) -> bytes:
    m = _manifest(o)
    comps = m["components"]
    choice = r.randrange(12)
    if choice < 3:
        comp = ["database", "uploads", "config"][choice]
        comps[comp]["present"] = not comps[comp]["present"]
    elif choice == 3:
        comps["uploads"]["file_count"] += r.choice([-1, 1, 1000])
    elif choice == 4:
        comps["uploads"]["total_bytes"] += r.choice([-1, 1])
    elif choice == 5:
        comps["database"]["page_count"] = r.choice([0, 1, 10**6])
    elif choice == 6:
        m["members"].pop(r.randrange(len(m["members"])))
    elif choice == 7:
        m["members"].append(dict(r.choice(m["members"])))
    elif choice == 8:
        comps[r.choice(["config", "database"])]["path"] = r.choice(
            ["public/uploads", "public/uploads/x", "backend", ".env.production"]
        )
    elif choice == 9:
        del comps[r.choice(["database", "uploads", "config"])]
    elif choice == 10:
        r.choice(m["members"])["size"] = r.choice([1, 10**12])
    else:
        m["compression"] = r.choice(["zstd", "lz4", ""])
    return pack(copy_entries(o), m)


# Member paths, renamed in the tar and the manifest alike (consistent), or added.
def _path_mutation(o: Original, r: Any) -> bytes:
    entries = copy_entries(o)
    m = _manifest(o)
    up = "public/uploads"
    choice = r.randrange(10)
    if choice == 0:
        depth = r.choice([10, 985, 1000, 1600, 2000])
        entries.append(_file(f"{up}/" + "d/" * depth + "f", b"deep"))
    elif choice == 1:
        entries.append(_file(f"{up}/" + "n" * r.choice([254, 255, 256, 300]), b"long"))
    elif choice == 2:
        entries += [_file(f"{up}/f", b"file"), _file(f"{up}/f/child", b"child")]
    elif choice == 3:
        entries += [_file(f"{up}/g/child", b"child"), _file(f"{up}/g", b"file")]
    elif choice == 4:
        entries.append(_file(r.choice(["../x", "/etc/x", f"{up}/../../x", "./../x"]), b"x"))
    elif choice == 5:
        entries.append(
            _file(r.choice([f"{up}/a\\b", f"{up}/日本語", f"{up}/ a ", f"{up}/.h"]), b"n")
        )
    elif choice == 6:
        entries.append(_file(f"{up}/" + "\udcff" * 3, b"not utf-8"))
    elif choice == 7:
        entries.append(_dir(f"{up}/empty.txt"))  # a folder where a file is
    elif choice == 8:
        entries.append(_file(r.choice(["outside.txt", "backend/other.db", "public/x"]), b"o"))
    else:
        i = r.randrange(len(entries))
        info, data = entries[i]
        info.name = info.name + "/" if r.random() < 0.5 else "./" + info.name
        entries[i] = (info, data)
    return pack(entries, reseal(entries, m))


def _trailing(o: Original, r: Any) -> bytes:
    tar = gzip.decompress(o.data)
    choice = r.randrange(5)
    if choice == 0:
        return gzip.compress(tar + bytes(r.choice([512, 10240, 1 << 20, 3 << 20])), mtime=0)
    if choice == 1:
        return gzip.compress(tar + b"\x00" * 1024 + b"garbage", mtime=0)
    if choice == 2:
        return o.data + gzip.compress(b"second member", mtime=0)
    if choice == 3:
        return o.data + bytes(r.choice([1, 4096]))
    return o.data + b"trailing garbage"


MUTANTS: dict[str, Mutant] = {
    "flip_file": flip_file,
    "flip_tar": flip_tar,
    "truncate_file": truncate_file,
    "truncate_tar": truncate_tar,
    "consistent_edit": _consistent_edit,
    "inconsistent_edit": _inconsistent_edit,
    "path": _path_mutation,
    "trailing": _trailing,
}


# -- the invariants --------------------------------------------------------------------------


@dataclass
class Sandbox:
    root: Path
    live: Path  # a live app: failed restores aimed at it must leave it as it was

    @property
    def archive(self) -> Path:
        return self.root / "archives" / NAME

    @property
    def scratch(self) -> Path:
        return self.root / "meta"

    def outside(self) -> dict[str, tuple[int, int]]:
        """Everything but the mutant, the live app and the scratch folder."""
        return {
            k: v
            for k, v in listing(self.root).items()
            if not k.startswith(("archives", "live", "meta", "target"))
        }


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("sandbox")
    (root / "archives").mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "precious.txt").write_text("keep")
    box = Sandbox(root, make_app(root / "live", rows=3).root)
    yield box
    discard_tree(root)  # deep mutants: pytest's own clean-up recurses once per level


def _timed(what: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    try:
        return fn()
    finally:
        assert time.monotonic() - started < SLOW, f"{what} took too long"


def check_restored(target: Path, manifest: Any) -> None:
    """The target holds exactly what the manifest lists, component by component."""
    layout = Layout(root=target)
    for comp in COMPONENT_ORDER:
        info = manifest.components[comp]
        live = layout.path(comp)
        if not info.present:
            assert not live.exists(), f"{comp} recorded absent but restored"
            continue
        listed = {}
        for m in manifest.members:
            if m.component is comp:
                rel = m.path[len(info.path) + 1 :] if m.path != info.path else ""
                listed[rel] = m
        for rel, m in listed.items():
            path = live / rel if rel else live
            if m.type == "dir":
                assert path.is_dir() and not path.is_symlink(), path
            else:
                assert path.is_file() and not path.is_symlink(), path
                assert hashlib.sha256(path.read_bytes()).hexdigest() == m.sha256, path
                if 0 <= m.mtime < 2**31:  # beyond, file systems clamp what they store
                    assert os.stat(path).st_mtime == pytest.approx(m.mtime, abs=1e-6)
        if comp is Component.UPLOADS:
            found = {rel for rel, _ in walk_tree(live)}
            implied = {rel.rsplit("/", i)[0] for rel in listed for i in range(rel.count("/") + 1)}
            assert found == implied - {""}, "uploads differ from the manifest"


def run_mutant(box: Sandbox, data: bytes, n: int) -> str:
    """Check every invariant for one mutant; return what happened (for the statistics)."""
    box.archive.write_bytes(data)
    before_outside = box.outside()
    before_live = listing(box.live)
    try:
        report = _timed("verify", lambda: verify_archive(box.archive, box.scratch))
    except AicaBackupError as exc:  # a fault outside the archive: never one of these
        pytest.fail(f"verify raised {type(exc).__name__}: {exc}")
    assert not any(box.scratch.iterdir()), "verify left scratch files"
    assert box.outside() == before_outside, "verify wrote outside its scratch folder"
    for problem in report.get("problems", []):
        assert "\n" not in problem
    target = box.root / "target"
    if report["ok"]:
        try:
            result = _timed(
                "restore", lambda: restore(Layout(root=target), box.archive, RestoreOptions())
            )
        except AicaBackupError as exc:
            pytest.fail(f"verify passed mutant {n} but restore failed: {exc}")
        assert result.changes
        check_restored(target, scan_file(box.archive).manifest)
        assert not (target / ".aica-restore").exists()
        discard_tree(target)
        outcome = "ok"
    else:
        with pytest.raises(ArchiveError) as info:
            _timed("restore", lambda: restore(Layout(root=box.live), box.archive, RestoreOptions()))
        assert "\n" not in str(info.value)
        assert listing(box.live) == before_live, "a failed restore changed the live app"
        outcome = "refused"
    assert box.outside() == before_outside, "something was written outside"
    return outcome


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(sorted(MUTANTS)), r=st.randoms(use_true_random=False))
def test_mutants_keep_the_invariants(
    original: Original, sandbox: Sandbox, kind: str, r: Any
) -> None:
    run_mutant(sandbox, MUTANTS[kind](original, r), 0)


def _uploads_absent(o: Original) -> bytes:
    m = _manifest(o)
    m["components"]["uploads"]["present"] = False
    return pack(copy_entries(o), m)


def _database_absent(o: Original) -> bytes:
    m = _manifest(o)
    m["components"]["database"]["present"] = False
    return pack(copy_entries(o), m)


def _database_missing(o: Original) -> bytes:
    entries = [(i, d) for i, d in copy_entries(o) if not i.name.startswith("backend")]
    return pack(entries, _manifest(o) | {"members": reseal(entries, _manifest(o))["members"]})


def _deep(o: Original) -> bytes:
    entries = [*copy_entries(o), _file("public/uploads/" + "d/" * 2000 + "f", b"x")]
    return pack(entries, reseal(entries, _manifest(o)))


def _file_then_child(o: Original) -> bytes:
    entries = [*copy_entries(o), _file("public/uploads/empty.txt/child", b"x")]
    return pack(entries, reseal(entries, _manifest(o)))


def _name_256(o: Original) -> bytes:
    entries = [*copy_entries(o), _file("public/uploads/" + "n" * 256, b"x")]
    return pack(entries, reseal(entries, _manifest(o)))


def _zeros_after_end(o: Original) -> bytes:
    return gzip.compress(gzip.decompress(o.data) + bytes(8 << 20), mtime=0)


_REPORTED = [
    _uploads_absent,
    _database_absent,
    _database_missing,
    _deep,
    _file_then_child,
    _name_256,
    _zeros_after_end,
]


@pytest.mark.parametrize("make", _REPORTED, ids=[f.__name__ for f in _REPORTED])
def test_the_reported_mutants_are_refused(
    original: Original, sandbox: Sandbox, make: Callable[[Original], bytes]
) -> None:
    """Issue 14.9's cases: each passed verify and then failed (or misled) restore."""
    assert run_mutant(sandbox, make(original), -1) == "refused"


def test_the_mutants_reach_both_outcomes(original: Original, sandbox: Sandbox) -> None:
    """The fuzzer is not vacuous: every family can be built, and over a fixed sample some
    mutants pass (and are restored) while others are refused."""
    import random

    outcomes: dict[str, int] = {}
    for _kind, make in sorted(MUTANTS.items()):
        for seed in range(4):
            outcome = run_mutant(sandbox, make(original, random.Random(seed)), seed)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) >= 3 and outcomes.get("refused", 0) >= 10, outcomes


# -- a sample through the real command line --------------------------------------------------

DOCUMENTED = {int(c) for c in ExitCode}


@pytest.mark.parametrize(
    "make",
    [*_REPORTED, lambda o: _consistent_edit(o, _Seeded(4)), lambda o: flip_file(o, _Seeded(7))],
    ids=[f.__name__ for f in _REPORTED] + ["consistent without uploads", "flipped bit"],
)
def test_a_sample_through_the_command_line(
    original: Original, tmp_path: Path, make: Callable[[Original], bytes]
) -> None:
    app = make_app(tmp_path / "app", rows=3)
    archive = tmp_path / NAME
    archive.write_bytes(make(original))

    def app_state() -> dict[str, tuple[int, int]]:  # backups/ holds the lock and scratch
        return {k: v for k, v in listing(app.root).items() if not k.startswith("backups")}

    before = app_state()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "aica_backup", "--root", str(app.root), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode in DOCUMENTED, proc
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) <= 1, proc.stderr
        return proc

    target = tmp_path / "target"
    try:
        if run("verify", str(archive)).returncode in (0, 1):
            restored = run("restore", str(archive), "--yes", "--target", str(target))
            assert restored.returncode == 0, restored.stderr
            check_restored(target, scan_file(archive).manifest)
        else:
            assert run("restore", str(archive), "--yes").returncode != 0
            assert app_state() == before
    finally:
        discard_tree(tmp_path)


class _Seeded:
    """A fixed random source for the command-line sample."""

    def __init__(self, seed: int) -> None:
        import random

        self._r = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)
