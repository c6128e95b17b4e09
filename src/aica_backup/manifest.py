"""Manifest v1: what an archive holds, with a SHA-256 for every file.

``manifest.json`` is the archive's last member (the checksums are only known once every
member has streamed through). Parsing treats the manifest as hostile input: every field is
type-checked and every path validated before anything trusts it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from .codec import SUFFIXES
from .errors import ArchiveError
from .layout import COMPONENT_ORDER, Component

FORMAT = "aica-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch: "$" would accept a final "\n"


@dataclass(slots=True)
class Member:
    """One file or folder in the archive. ``sha256`` is empty for folders.

    Not frozen: a backup creates one per file, and a frozen dataclass's ``__init__`` costs
    five times as much. Treat members as read-only all the same.
    """

    path: str
    type: str  # "file" or "dir"
    size: int
    mode: int
    mtime: float
    sha256: str
    component: Component

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
            "mtime": self.mtime,
            "sha256": self.sha256,
            "component": str(self.component),
        }

    def to_json(self) -> str:
        """``to_dict`` as compact JSON, formatted directly (a backup writes 100,000 of these).

        Equal to ``json.dumps(self.to_dict(), separators=(",", ":"))``; the tests check it.
        Only the path needs escaping: type, SHA-256 and component come from fixed sets (the
        writer makes them, the parser refuses anything else).
        """
        mtime = self.mtime
        return _MEMBER_JSON % (
            _json_string(self.path),
            self.type,
            self.size,
            self.mode,
            float.__repr__(mtime) if type(mtime) is float else _JSON.encode(mtime),
            self.sha256,
            self.component,
        )


_MEMBER_JSON = (
    '{"path":%s,"type":"%s","size":%d,"mode":%d,"mtime":%s,"sha256":"%s","component":"%s"}'
)


@dataclass
class ComponentInfo:
    """A component as recorded: where it lived, whether it existed, and its summary facts."""

    path: str
    present: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "present": self.present, **self.details}


@dataclass
class Manifest:
    tool_version: str
    created_at: datetime  # UTC, timezone-aware
    host: str
    app_root: str
    app_name: str
    compression: str
    components: dict[Component, ComponentInfo]
    members: list[Member]
    warnings: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    # uploads this backup could not read, each {"path", "error"}: the archive is incomplete.
    # Optional in the file (written only when some were skipped; older manifests have none).
    skipped: list[dict[str, str]] = field(default_factory=list)

    def member(self, path: str) -> Member | None:
        for m in self.members:
            if m.path == path:
                return m
        return None

    def files(self) -> list[Member]:
        return [m for m in self.members if m.type == "file"]

    def summary(self) -> dict[str, Any]:
        """The small facts ``list`` shows, without the member list."""
        db = self.components.get(Component.DATABASE)
        up = self.components.get(Component.UPLOADS)
        return {
            "created_at": self.created_at.isoformat(),
            "app_name": self.app_name,
            "host": self.host,
            "tool_version": self.tool_version,
            "database": db.to_dict() if db else None,
            "uploads": up.to_dict() if up else None,
            "config_present": bool(self.components.get(Component.CONFIG, _ABSENT).present),
            "members": len(self.members),
            "warnings": list(self.warnings),
            "skipped": len(self.skipped),
        }

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    def json_chunks(self) -> list[bytes]:
        """The manifest's JSON in pieces of a thousand members, never whole in memory
        twice over (100,000 members are ~25 MB): the archive writer streams the pieces.

        Compact, so json's C encoder writes it (with ``indent`` the pure-Python encoder took
        seconds for 100,000 members); ``python -m json.tool`` pretty-prints it for reading.
        """
        head = {
            "format": FORMAT,
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created_at": self.created_at.isoformat(),
            "host": self.host,
            "app_root": self.app_root,
            "app_name": self.app_name,
            "compression": self.compression,
            "components": {str(k): v.to_dict() for k, v in self.components.items()},
        }
        chunks = [_JSON.encode(head)[:-1].encode("ascii") + b',"members":[']
        members = self.members
        for start in range(0, len(members), _MEMBERS_PER_CHUNK):
            part = ",".join([m.to_json() for m in members[start : start + _MEMBERS_PER_CHUNK]])
            chunks.append((b"," if start else b"") + part.encode("ascii"))
        tail = b'],"warnings":' + _JSON.encode(self.warnings).encode("ascii")
        if self.skipped:
            tail += b',"skipped":' + _JSON.encode(self.skipped).encode("ascii")
        chunks.append(tail + b"}\n")
        return chunks


_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_json_string = json.encoder.encode_basestring_ascii
_MEMBERS_PER_CHUNK = 1024
_ABSENT = ComponentInfo(path="", present=False)


def _bad(why: str) -> ArchiveError:
    return ArchiveError(f"manifest.json is invalid: {why}", member=MANIFEST_NAME)


def _get(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    # bool is an int subclass: refuse it wherever a number is expected, tuples of number types
    # included (``kind in (int, float)`` let ``"mtime": true`` through).
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad(f"field {key!r} missing or of the wrong type")
    if isinstance(value, float) and not math.isfinite(value):  # json.loads accepts NaN
        raise _bad(f"field {key!r} is not a finite number")
    return value


def safe_member_path(name: str) -> str | None:
    """Normalised archive path, or None if the name is unsafe (absolute, '..', empty, NUL).

    A backslash is an ordinary file-name character on the POSIX systems this tool restores
    to (users upload such files); refusing it here made every backup of such an upload
    tree unreadable although the backup itself had succeeded.
    """
    if not name or "\0" in name or name.startswith("/"):
        return None
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


# What a restore can create, wherever it runs: NAME_MAX for each name, and whole paths short
# enough to stay under PATH_MAX (4096) below an app root and its staging folder. backup,
# verify and restore all apply :func:`member_path_problem`: what one refuses, all refuse.
NAME_MAX = 255
MAX_PATH_BYTES = 3072
# os.utime takes times as int64 nanoseconds: a later mtime would fail restore, not verify.
MAX_MTIME = (2**63 - 1) // 10**9


def member_path_problem(path: str) -> str | None:
    """Why ``path`` (a safe member path) cannot be restored on Linux, or None."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes ({len(raw)})"
    if len(raw) > NAME_MAX and any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return f"a name in it is longer than {NAME_MAX} bytes"
    return None


def check_app_name(manifest: Manifest, app_name: str) -> None:
    """Raise ArchiveError unless the archive was made for the app called ``app_name``."""
    if manifest.app_name != app_name:
        raise ArchiveError(
            f"archive was made for app {manifest.app_name!r}, this is {app_name!r}",
            hint="check --root, or set app_name in aica-backup.toml",
        )


def _parse_member(raw: Any) -> Member:
    if not isinstance(raw, dict):
        raise _bad("a member entry is not an object")
    path = _get(raw, "path", str)
    if safe_member_path(path) != path:
        raise _bad(f"unsafe member path {path!r}")
    problem = member_path_problem(path)
    if problem is not None:
        raise _bad(f"member {path!r}: {problem}")
    kind = _get(raw, "type", str)
    if kind not in ("file", "dir"):
        raise _bad(f"member {path!r} has unsupported type {kind!r}")
    sha = _get(raw, "sha256", str)
    if not (_SHA256.fullmatch(sha) if kind == "file" else sha == ""):
        raise _bad(f"member {path!r} has no valid sha256 (a folder has none)")
    size = _get(raw, "size", int)
    mode = _get(raw, "mode", int)
    if size < 0 or not 0 <= mode <= 0o7777:
        raise _bad(f"member {path!r} has an invalid size or mode")
    try:
        component = Component(_get(raw, "component", str))
    except ValueError:
        raise _bad(f"member {path!r} names an unknown component") from None
    try:
        mtime = float(_get(raw, "mtime", (int, float)))
    except OverflowError:  # an integer of hundreds of digits
        raise _bad(f"member {path!r} has an invalid mtime") from None
    if abs(mtime) > MAX_MTIME:
        raise _bad(f"member {path!r} has an invalid mtime")
    return Member(
        path=path,
        type=kind,
        size=size,
        mode=mode,
        mtime=mtime,
        sha256=sha,
        component=component,
    )


def _check_consistent(components: dict[Component, ComponentInfo], members: list[Member]) -> None:
    """Every field agrees with every other and with the member list, as a backup writes them.

    A manifest that contradicts itself is refused whole: restore acts on the components'
    ``present`` flags (an uploads tree recorded absent is removed from the live app, the
    archive's own copy thrown away) and verify must not pass what restore would get wrong.
    """
    for comp in COMPONENT_ORDER:
        if comp not in components:
            raise _bad(f"component {str(comp)!r} is not recorded")
    for a, info_a in components.items():
        for b, info_b in components.items():
            if a is not b and _within(info_a.path, info_b.path):
                raise _bad(f"components {str(a)!r} and {str(b)!r} overlap at {info_a.path!r}")
    listed: dict[Component, list[Member]] = {comp: [] for comp in components}
    for m in members:
        listed[m.component].append(m)
        if m.type == "dir" and m.size != 0:
            raise _bad(f"folder {m.path!r} has a size")
    for comp, info in components.items():
        mine = listed[comp]
        if not info.present:
            if mine:
                raise _bad(f"{comp} is recorded absent but {mine[0].path!r} is listed")
            continue
        if comp is Component.UPLOADS:
            if not any(m.path == info.path and m.type == "dir" for m in mine):
                raise _bad(f"uploads are recorded present but their folder {info.path!r} is not")
            files = [m for m in mine if m.type == "file"]
            for key, value in (
                ("file_count", len(files)),
                ("total_bytes", sum(m.size for m in files)),
            ):
                if key in info.details and info.details[key] != value:
                    raise _bad(
                        f"uploads {key} {info.details[key]!r} differs from the {value} listed"
                    )
            continue
        if len(mine) != 1 or mine[0].path != info.path or mine[0].type != "file":
            raise _bad(f"{comp} is recorded present but not listed as one file at {info.path!r}")
        if comp is Component.DATABASE:
            _check_database(info, mine[0])


def _check_database(info: ComponentInfo, member: Member) -> None:
    d = info.details
    page_size, page_count = d.get("page_size"), d.get("page_count")
    sized = isinstance(page_size, int) and isinstance(page_count, int)
    if sized and page_size * page_count != member.size:  # type: ignore[operator]
        raise _bad(
            f"database of {page_count} pages of {page_size} bytes "
            f"is not the {member.size} bytes listed"
        )
    if "integrity" in d and d["integrity"] not in ("ok", "skipped"):
        raise _bad(f"database recorded as failing its check ({d['integrity']!r}) was archived")


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; raise ArchiveError on anything unexpected."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"not JSON ({exc})") from None
    except RecursionError:  # "[[[[…" nested deeper than the stack: hostile, not a crash
        raise _bad("JSON nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad("not an aica-backup manifest")
    version = _get(doc, "format_version", int)
    if version > FORMAT_VERSION:
        raise ArchiveError(
            f"archive format version {version} is newer than this release reads ({FORMAT_VERSION})",
            hint="upgrade aica-backup to restore it",
        )
    try:
        created = datetime.fromisoformat(_get(doc, "created_at", str))
    except ValueError:
        raise _bad("created_at is not a timestamp") from None
    if created.tzinfo is None:
        raise _bad("created_at has no time zone")
    components: dict[Component, ComponentInfo] = {}
    for key, raw in _get(doc, "components", dict).items():
        try:
            comp = Component(key)
        except ValueError:
            raise _bad(f"unknown component {key!r}") from None
        if not isinstance(raw, dict):
            raise _bad(f"component {key!r} is not an object")
        path = _get(raw, "path", str)
        if safe_member_path(path) != path:
            raise _bad(f"component {key!r} has an unsafe path")
        details = {k: v for k, v in raw.items() if k not in ("path", "present")}
        components[comp] = ComponentInfo(path, bool(_get(raw, "present", bool)), details)
    members = [_parse_member(m) for m in _get(doc, "members", list)]
    seen: set[str] = set()
    for m in members:
        if m.path in seen:
            raise _bad(f"member {m.path!r} listed twice")
        seen.add(m.path)
        info = components.get(m.component)
        if info is None or not (m.path == info.path or m.path.startswith(info.path + "/")):
            raise _bad(f"member {m.path!r} lies outside its component")
    _check_consistent(components, members)
    compression = _get(doc, "compression", str)
    if compression not in SUFFIXES:
        raise _bad(f"unknown compression {compression!r}")
    warnings = doc.get("warnings", [])
    skipped = _parse_skipped(doc, components, {m.path for m in members if m.type == "file"})
    return Manifest(
        format_version=version,
        tool_version=_get(doc, "tool_version", str),
        created_at=created,
        host=_get(doc, "host", str),
        app_root=_get(doc, "app_root", str),
        app_name=_get(doc, "app_name", str),
        compression=compression,
        components=components,
        members=members,
        warnings=[str(w) for w in warnings] if isinstance(warnings, list) else [],
        skipped=skipped,
    )


def _parse_skipped(
    doc: dict[str, Any], components: dict[Component, ComponentInfo], files: set[str]
) -> list[dict[str, str]]:
    """The optional ``skipped`` list: uploads left out (a file, or a folder whose contents
    could not be listed), each a safe path inside the uploads component, listed once, and
    not also a file member."""
    raw = doc.get("skipped", [])
    if not isinstance(raw, list):
        raise _bad("field 'skipped' is not a list")
    uploads = components.get(Component.UPLOADS)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise _bad("a skipped entry is not an object")
        path, error = _get(item, "path", str), _get(item, "error", str)
        if safe_member_path(path) != path:
            raise _bad(f"unsafe skipped path {path!r}")
        inside = path == uploads.path or path.startswith(uploads.path + "/") if uploads else False
        if uploads is None or not uploads.present or not inside:
            raise _bad(f"skipped path {path!r} lies outside the uploads")
        if path in seen or path in files:
            raise _bad(f"skipped path {path!r} is listed twice")
        seen.add(path)
        out.append({"path": path, "error": error})
    return out
