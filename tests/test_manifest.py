"""Manifest v1: round trip of what the writer records, and refusal of hostile manifests."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aica_backup.errors import ArchiveError, ExitCode
from aica_backup.layout import Component
from aica_backup.manifest import (
    FORMAT_VERSION,
    ComponentInfo,
    Manifest,
    Member,
    parse_manifest,
    safe_member_path,
)
from tests.support.strategies import upload_name

DB = "backend/aica_sys.db"
UPLOADS = "public/uploads"
CONFIG = ".env.production"
SHA = "ab" * 32
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)

segment = upload_name(12)


DB_MEMBER = Member(DB, "file", 12288, 0o644, 1_700_000_000.5, SHA, Component.DATABASE)
UPLOADS_DIR = Member(UPLOADS, "dir", 0, 0o755, 1_700_000_000.0, "", Component.UPLOADS)


def _manifest(members: list[Member], created: datetime | None = None) -> Manifest:
    """A consistent manifest: the database and the uploads folder, then ``members``."""
    members = [DB_MEMBER, UPLOADS_DIR, *(m for m in members if m.path not in (DB, UPLOADS))]
    files = [m for m in members if m.component is Component.UPLOADS and m.type == "file"]
    uploads = {"file_count": len(files), "total_bytes": sum(m.size for m in files)}
    return Manifest(
        tool_version="1.0.0",
        created_at=created or datetime(2024, 10, 10, 3, 0, 0, 123456, tzinfo=UTC),
        host="web-1",
        app_root="/srv/aica-sys",
        app_name="aica-sys",
        compression="gzip",
        components={
            Component.DATABASE: ComponentInfo(
                DB,
                True,
                {
                    "sqlite_version": "3.45.1",
                    "page_size": 4096,
                    "page_count": 3,
                    "user_version": 7,
                    "journal_mode": "wal",
                    "integrity": "ok",
                },
            ),
            Component.UPLOADS: ComponentInfo(UPLOADS, True, uploads),
            Component.CONFIG: ComponentInfo(CONFIG, False),
        },
        members=members,
        warnings=["public/uploads/x: vanished during backup, not archived"],
    )


def _valid_doc() -> dict[str, Any]:
    members = [Member(f"{UPLOADS}/a.txt", "file", 5, 0o644, 1_700_000_001, SHA, Component.UPLOADS)]
    doc: dict[str, Any] = json.loads(_manifest(members).to_json())
    return doc


def _parse(doc: Any) -> Manifest:
    return parse_manifest(json.dumps(doc).encode())


@st.composite
def member_lists(draw: st.DrawFn) -> list[Member]:
    paths = draw(st.lists(st.lists(segment, min_size=1, max_size=3), max_size=15))
    members: list[Member] = []
    seen: set[str] = set()
    for parts in paths:
        path = "/".join([UPLOADS, *parts])
        if path in seen:
            continue
        seen.add(path)
        is_dir = draw(st.booleans())
        members.append(
            Member(
                path=path,
                type="dir" if is_dir else "file",
                size=0 if is_dir else draw(st.integers(0, 2**53)),
                mode=draw(st.integers(0, 0o7777)),
                mtime=draw(
                    st.one_of(
                        st.integers(0, 2**33).map(float),
                        st.floats(0, 2**33, allow_nan=False, allow_infinity=False),
                    )
                ),
                sha256="" if is_dir else draw(HEX64),
                component=Component.UPLOADS,
            )
        )
    return members


@settings(max_examples=60, deadline=None)
@given(member_lists(), st.integers(-12 * 60, 14 * 60))
def test_round_trip(members: list[Member], offset_minutes: int) -> None:
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    original = _manifest(members, created)
    data = original.to_json()
    data.decode("ascii")  # ensure_ascii: the manifest survives any terminal or log viewer
    parsed = parse_manifest(data)
    assert parsed == original
    assert parsed.created_at.utcoffset() == created.utcoffset()
    assert parse_manifest(parsed.to_json()) == parsed


@settings(max_examples=60, deadline=None)
@given(member_lists())
def test_member_json_is_what_json_dumps_writes(members: list[Member]) -> None:
    for m in members:
        assert m.to_json() == json.dumps(m.to_dict(), separators=(",", ":"))
    # the pieces the archive writer streams make one document, whatever the member count
    many = members * 700
    doc = json.loads(b"".join(_manifest(many).json_chunks()))
    assert doc["members"][2:] == [m.to_dict() for m in many]


def test_japanese_names_round_trip_and_summary() -> None:
    members = [Member(f"{UPLOADS}/報告書 2024.txt", "file", 5, 0o644, 1.0, SHA, Component.UPLOADS)]
    parsed = parse_manifest(_manifest(members).to_json())
    assert parsed.members[2].path == f"{UPLOADS}/報告書 2024.txt"
    assert parsed.member(f"{UPLOADS}/報告書 2024.txt") is not None
    assert parsed.files() == [parsed.members[0], parsed.members[2]]
    summary = parsed.summary()
    assert summary["database"]["page_size"] == 4096
    assert summary["uploads"]["file_count"] == 1
    assert summary["config_present"] is False
    assert summary["members"] == 3


def test_valid_doc_parses() -> None:
    m = _parse(_valid_doc())
    assert m.format_version == FORMAT_VERSION
    assert m.created_at.tzinfo is not None
    assert [x.path for x in m.members] == [DB, UPLOADS, f"{UPLOADS}/a.txt"]


def _set_member(index: int, key: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["members"][index][key] = value

    return change


def _set(key: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc[key] = value

    return change


def _delete(key: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        del doc[key]

    return change


def _duplicate_member(doc: dict[str, Any]) -> None:
    doc["members"].append(copy.deepcopy(doc["members"][2]))


def _component_path(comp: str, path: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["components"][comp]["path"] = path

    return change


def _component(comp: str, key: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["components"][comp][key] = value

    return change


HOSTILE: dict[str, tuple[Any, str]] = {
    "parent path": (_set_member(2, "path", f"{UPLOADS}/../../etc/passwd"), "unsafe member path"),
    "leading ..": (_set_member(2, "path", "../x"), "unsafe member path"),
    "absolute": (_set_member(2, "path", "/etc/passwd"), "unsafe member path"),
    "dot segment": (_set_member(2, "path", f"{UPLOADS}/./a.txt"), "unsafe member path"),
    "empty path": (_set_member(2, "path", ""), "unsafe member path"),
    "NUL in path": (_set_member(2, "path", f"{UPLOADS}/a\0b"), "unsafe member path"),
    "trailing slash": (_set_member(2, "path", f"{UPLOADS}/a.txt/"), "unsafe member path"),
    "duplicate member": (_duplicate_member, "listed twice"),
    "outside its component": (_set_member(2, "path", "public/other/a.txt"), "outside"),
    "prefix is not a parent": (_set_member(2, "path", f"{UPLOADS}x/a.txt"), "outside"),
    "database member in uploads": (_set_member(0, "component", "uploads"), "outside"),
    "unknown component": (_set_member(2, "component", "secrets"), "unknown component"),
    "unsafe component path": (_component_path("uploads", "../public"), "unsafe path"),
    "symlink member type": (_set_member(2, "type", "symlink"), "unsupported type"),
    "size as string": (_set_member(2, "size", "5"), "'size'"),
    "size as bool": (_set_member(2, "size", True), "'size'"),
    "size negative": (_set_member(2, "size", -1), "invalid size"),
    "size float": (_set_member(2, "size", 5.0), "'size'"),
    "mode as bool": (_set_member(2, "mode", False), "'mode'"),
    "mode too large": (_set_member(2, "mode", 0o10000), "invalid size or mode"),
    "mtime as bool": (_set_member(2, "mtime", True), "'mtime'"),
    "mtime NaN": (_set_member(2, "mtime", float("nan")), "finite"),
    "mtime infinite": (_set_member(2, "mtime", float("inf")), "finite"),
    "mtime missing": (_set_member(2, "mtime", None), "'mtime'"),
    "sha256 short": (_set_member(2, "sha256", "abc"), "sha256"),
    "sha256 upper case": (_set_member(2, "sha256", "AB" * 32), "sha256"),
    "sha256 with a newline": (_set_member(2, "sha256", "ab" * 32 + "\n"), "sha256"),
    "folder with a sha256": (_set_member(1, "sha256", '"}'), "sha256"),
    "mtime beyond float": (_set_member(2, "mtime", 10**400), "invalid mtime"),
    "member not an object": (lambda d: d["members"].append(["x"]), "not an object"),
    "members not a list": (_set("members", {}), "'members'"),
    "components not an object": (_set("components", []), "'components'"),
    "format version as bool": (_set("format_version", True), "'format_version'"),
    "format version as string": (_set("format_version", "1"), "'format_version'"),
    "no format marker": (_delete("format"), "not an aica-backup manifest"),
    "other format": (_set("format", "borg"), "not an aica-backup manifest"),
    "created_at not a time": (_set("created_at", "yesterday"), "not a timestamp"),
    "created_at without zone": (_set("created_at", "2024-10-10T03:00:00"), "no time zone"),
    "created_at as number": (_set("created_at", 1_700_000_000), "'created_at'"),
    "host missing": (_delete("host"), "'host'"),
    "app_root as list": (_set("app_root", ["/srv"]), "'app_root'"),
    # Issue 14.9: a manifest that contradicts itself or its members (verify passed these,
    # and restore acted on the wrong field: the live uploads deleted, the archive's dropped)
    "uploads absent, members listed": (
        _component("uploads", "present", False),
        "uploads is recorded absent but 'public/uploads' is listed",
    ),
    "database absent, member listed": (
        _component("database", "present", False),
        "database is recorded absent",
    ),
    "database present, no member": (
        lambda d: d["members"].pop(0),
        "database is recorded present but not listed",
    ),
    "config present, no member": (_component("config", "present", True), "config is recorded"),
    "uploads present, no folder": (lambda d: d["members"].pop(1), "their folder"),
    "file count wrong": (_component("uploads", "file_count", 2), "file_count 2 differs"),
    "total bytes wrong": (_component("uploads", "total_bytes", 6), "total_bytes 6 differs"),
    "page count wrong": (_component("database", "page_count", 4), "is not the 12288 bytes"),
    "failing database archived": (_component("database", "integrity", "bad page"), "failing"),
    "components overlap": (_component_path("config", f"{UPLOADS}/.env"), "overlap"),
    "same path twice": (_component_path("config", DB), "overlap"),
    "component missing": (lambda d: d["components"].pop("config"), "'config' is not recorded"),
    "folder with a size": (_set_member(1, "size", 5), "has a size"),
    "unknown compression": (_set("compression", "lz4"), "unknown compression"),
}


@pytest.mark.parametrize("change", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_manifest_refused(change: str) -> None:
    mutate, expected = HOSTILE[change]
    doc = _valid_doc()
    mutate(doc)
    with pytest.raises(ArchiveError) as info:
        _parse(doc)
    assert expected in str(info.value)
    assert info.value.exit_code == ExitCode.ARCHIVE
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b"null", b'"aica-backup"', b"\xff\xfe", b"{" * 10],
    ids=["empty", "text", "list", "null", "string", "bad utf-8", "unbalanced"],
)
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(ArchiveError, match=r"manifest\.json is invalid"):
        parse_manifest(data)


def test_deeply_nested_json_is_an_archive_error() -> None:
    with pytest.raises(ArchiveError):
        parse_manifest(b"[" * 100_000 + b"]" * 100_000)


def test_newer_format_version_names_both_versions() -> None:
    doc = _valid_doc()
    doc["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ArchiveError) as info:
        _parse(doc)
    message = str(info.value)
    assert f"version {FORMAT_VERSION + 1}" in message
    assert f"({FORMAT_VERSION})" in message
    assert info.value.hint is not None and "upgrade" in info.value.hint


def test_unknown_extra_fields_are_tolerated() -> None:
    """A later 1.x writer may add fields; a v1 reader must still restore the archive."""
    doc = _valid_doc()
    doc["encryption"] = {"recipients": 2}
    doc["members"][2]["xattrs"] = {}
    assert _parse(doc).members[2].path == f"{UPLOADS}/a.txt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b", "a/b"),
        ("./a/./b", "a/b"),
        ("a//b", "a/b"),
        ("a\\b", "a\\b"),  # an ordinary character in a POSIX file name
        ("報告書.txt", "報告書.txt"),
        ("../a", None),
        ("a/../../b", None),
        ("/etc/passwd", None),
        ("", None),
        (".", None),
        ("a/\0", None),
    ],
)
def test_safe_member_path(name: str, expected: str | None) -> None:
    assert safe_member_path(name) == expected


# -- the optional list of skipped uploads (issue 14, item 7) --------------------------------


def test_skipped_uploads_round_trip_and_count_in_the_summary() -> None:
    doc = _valid_doc()
    assert "skipped" not in doc  # a complete backup's manifest is as before
    assert _parse(doc).skipped == []
    skipped = [
        {"path": f"{UPLOADS}/locked", "error": "Permission denied"},
        {"path": f"{UPLOADS}/秘密.png", "error": "Permission denied"},
    ]
    doc["skipped"] = skipped
    m = _parse(doc)
    assert m.skipped == skipped and m.summary()["skipped"] == 2
    assert json.loads(m.to_json())["skipped"] == skipped


@pytest.mark.parametrize(
    "skipped",
    [
        {"path": f"{UPLOADS}/x", "error": "e"},  # not a list
        [{"path": f"{UPLOADS}/x"}],  # no error
        [{"path": "backend/aica_sys.db", "error": "e"}],  # outside the uploads
        [{"path": f"{UPLOADS}/../../etc/passwd", "error": "e"}],  # unsafe
        [{"path": f"{UPLOADS}/a.txt", "error": "e"}],  # also a member
        [{"path": f"{UPLOADS}/x", "error": "e"}] * 2,  # twice
    ],
    ids=["not a list", "no error", "outside", "unsafe", "a member", "twice"],
)
def test_a_skipped_list_that_disagrees_is_refused(skipped: Any) -> None:
    doc = _valid_doc()
    doc["skipped"] = skipped
    with pytest.raises(ArchiveError) as info:
        _parse(doc)
    assert info.value.exit_code == ExitCode.ARCHIVE
