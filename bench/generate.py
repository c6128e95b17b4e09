"""Deterministic benchmark data set: an AICA-SyS app root with a database, uploads and config.

    python bench/generate.py --scale 1.0 --out bench/data/scale-1

makes ``OUT/backend/aica_sys.db`` (≈ 400 MB × scale, WAL mode, users / articles / comments /
events / sessions with their indexes), ``OUT/public/uploads/`` (≈ 400 MB × scale in ≈ 1,500 ×
scale nested files: 70 % of the bytes incompressible like images, 30 % text / JSON / CSV) and
``OUT/.env.production`` (mode 0600). Everything comes from seeded RNGs: the same ``--scale``,
``--seed`` and options give the same rows and byte-identical upload files.

Variants:

* ``--small-files N``: the same upload bytes spread over N small files (metadata-heavy trees);
* ``--db-scale S``: a database of another scale than the uploads (e.g. tiny, for upload tests);
* ``--archives N``: after generating, make N small archives in ``OUT/backups`` for ``list``
  timings (one real ``aica-backup backup``, copied under N distinct archive names).

``OUT/bench-dataset.json`` records the parameters (and is not part of any backup); a second
run with the same parameters leaves an existing data set alone, ``--force`` rebuilds it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

STAMP_NAME = "bench-dataset.json"
DB_REL = "backend/aica_sys.db"
UPLOADS_REL = "public/uploads"
CONFIG_REL = ".env.production"
FORMAT = 2  # bump when the generated content changes

MB = 1_000_000
DB_BYTES = 400 * MB  # at scale 1.0
UPLOAD_BYTES = 400 * MB
UPLOAD_FILES = 1500
BINARY_SHARE = 0.70  # of upload bytes (and files): incompressible, like images
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SPAN_S = 600 * 86400  # rows and files spread over ~20 months
EPOCH_S = int(EPOCH.timestamp())

# Rows per 1.0 of database scale; the mix lands near DB_BYTES.
ROWS = {"users": 16_000, "notes": 29_000, "comments": 300_000, "events": 500_000,
        "sessions": 40_000}
# The reference backend's schema version (backend/database.py SCHEMA_VERSION): its init_db
# refuses a newer one, and the load test starts that backend on a copy of this database.
SCHEMA_VERSION = 1

# A superset of the reference backend's schema (backend/database.py: users, notes, uploads,
# events with the same columns and index names, so its idempotent init_db is a no-op here),
# plus the tables a grown app has beside them: comments and sessions.
SCHEMA = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    display_name  TEXT,
    password_hash TEXT,
    role          TEXT NOT NULL DEFAULT 'member',
    bio           TEXT,
    settings      TEXT NOT NULL DEFAULT '{}',
    last_login_at TEXT
);
CREATE TABLE notes (
    id          INTEGER PRIMARY KEY,
    title       TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL,
    author_id   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT,
    tags        TEXT NOT NULL DEFAULT '[]',
    status      TEXT NOT NULL DEFAULT 'published',
    view_count  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE uploads (
    id            INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    path          TEXT NOT NULL UNIQUE,
    size          INTEGER NOT NULL CHECK (size >= 0),
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
    content_type  TEXT,
    uploader_id   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject_id  INTEGER,
    detail      TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE comments (
    id          INTEGER PRIMARY KEY,
    note_id     INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
    author_id   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE sessions (
    token       TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_agent  TEXT NOT NULL,
    ip          TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) WITHOUT ROWID;
"""
INDEXES = """
CREATE INDEX notes_created_at ON notes(created_at);
CREATE INDEX notes_author ON notes(author_id);
CREATE INDEX notes_status_created ON notes(status, created_at);
CREATE INDEX uploads_sha256 ON uploads(sha256);
CREATE INDEX uploads_created_at ON uploads(created_at);
CREATE INDEX events_kind_created ON events(kind, created_at);
CREATE INDEX events_subject ON events(subject_id);
CREATE INDEX comments_note ON comments(note_id, created_at);
CREATE INDEX comments_author ON comments(author_id);
CREATE INDEX sessions_user ON sessions(user_id);
"""



def _words(text: str) -> list[str]:
    return text.split()


SYLLABLES = _words(
    "ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho ma mi mu me "
    "mo ya yu yo ra ri ru re ro wa n ga gi gu ge go za ji zu ze zo da de do ba bi bu be bo pa pi "
    "pu pe po an en in on un ar er or ir al el il ol ul st tr pl br cr th sh ch"
)
JA_WORDS = _words(
    "データ バックアップ 復旧 システム 利用者 記事 コメント 設定 管理 運用 確認 更新 保存 "
    "サーバー 研究 教育 学習 分析 報告 会議 予定 資料 写真 画像 動画 質問 回答 連絡 "
    "東京 大阪 今日 明日 新しい 重要な 簡単に すぐに です ます した して いる ある"
)
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "curl/8.5.0",
]
EVENT_KINDS = ["page_view"] * 12 + ["api_call"] * 6 + ["login", "logout", "upload",
                                                       "comment", "search", "error"]
API_PATHS = ["/api/articles", "/api/articles/{}", "/api/users/{}", "/api/comments",
             "/api/search", "/api/uploads", "/api/notes", "/health"]


# -- text ------------------------------------------------------------------------------------
class Text:
    """Pseudo-natural text: a Zipf-weighted vocabulary and a large pool of sentences.

    The pool (~2 MB) is larger than gzip's 32 KB window, so compressors see word-level
    redundancy (≈ 3× with gzip), not whole repeated blocks.
    """

    def __init__(self, rng: random.Random, pool: int = 20_000) -> None:
        words: list[str] = []
        for _ in range(6000):
            n = rng.choice((1, 2, 2, 3, 3, 3, 4))
            words.append("".join(rng.choice(SYLLABLES) for _ in range(n)))
        words += JA_WORDS
        cum = list(itertools.accumulate(1.0 / (i + 1) ** 0.9 for i in range(len(words))))
        rng.shuffle(words)
        self.words = words
        self.sentences: list[str] = []
        for _ in range(pool):
            n = max(3, int(rng.gauss(13, 5)))
            ws = rng.choices(words, cum_weights=cum, k=n)
            if rng.random() < 0.15:
                ws.insert(rng.randrange(len(ws)), str(rng.randrange(10_000)))
            s = " ".join(ws)
            self.sentences.append(s[0].upper() + s[1:] + rng.choice(".....?!"))

    def sentences_of(self, rng: random.Random, nbytes: int) -> str:
        """About ``nbytes`` of paragraphs (sentences average ~85 bytes)."""
        k = max(1, nbytes // 85)
        chosen = rng.choices(self.sentences, k=k)
        paras = []
        i = 0
        while i < k:
            step = rng.randint(3, 8)
            paras.append(" ".join(chosen[i : i + step]))
            i += step
        return "\n\n".join(paras)

    def title(self, rng: random.Random) -> str:
        return " ".join(rng.choices(self.words, k=rng.randint(3, 8))).title()


def _iso(rng: random.Random) -> str:
    """A timestamp in the backend's format (``2024-05-01T12:34:56.789Z``)."""
    t = int(rng.random() * SPAN_S * 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(EPOCH_S + t // 1000))
    return f"{stamp}.{t % 1000:03d}Z"


def _int(rng: random.Random, lo: int, hi: int) -> int:
    """rng.randint without its overhead (the generator calls it millions of times)."""
    return lo + int(rng.random() * (hi - lo + 1))


# -- uploads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadFile:
    rel: str  # relative to the uploads folder, as the backend stores it: YYYY/MM/<uuid>-<name>
    uuid: str
    original_name: str
    size: int
    ext: str
    created_at: str
    uploader: int


IMAGE_HEADERS = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x01\x00H\x00H\x00\x00",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00\x00\x00\x03\x00\x08\x06"
           b"\x00\x00\x00",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                 "pdf": "application/pdf", "zip": "application/zip", "json": "application/json",
                 "csv": "text/csv", "txt": "text/plain", "md": "text/markdown"}
BINARY_EXTS = ["jpg"] * 5 + ["png"] * 3 + ["webp", "pdf", "zip"]
TEXT_EXTS = ["json"] * 4 + ["csv", "csv", "txt", "md"]
STEMS = {"jpg": ["IMG_{}", "photo_{}", "DSC{}"], "png": ["screenshot_{}", "diagram-{}", "avatar{}"],
         "webp": ["banner_{}"], "pdf": ["report-{}", "handout_{}"], "zip": ["materials_{}"],
         "json": ["export_{}", "results-{}"], "csv": ["grades_{}", "attendance-{}"],
         "txt": ["memo_{}"], "md": ["notes-{}"]}


def plan_uploads(scale: float, seed: int, small_files: int | None) -> list[UploadFile]:
    """Every upload file, sizes summing to the target bytes (70 % of them incompressible)."""
    rng = random.Random(f"{seed}/plan")
    total = round(UPLOAD_BYTES * scale)
    count = small_files if small_files else max(4, round(UPLOAD_FILES * scale))
    sigma = 0.6 if small_files else 1.2  # log-normal sizes: many small, a few large
    kinds = [rng.random() < BINARY_SHARE for _ in range(count)]
    kinds[0], kinds[-1] = True, False  # at least one of each
    raw = [rng.lognormvariate(0.0, sigma) for _ in range(count)]
    sizes = [0] * count
    for want_binary, share in ((True, BINARY_SHARE), (False, 1 - BINARY_SHARE)):
        idx = [i for i in range(count) if kinds[i] == want_binary]
        weight = sum(raw[i] for i in idx)
        for i in idx:
            sizes[i] = max(64, int(raw[i] / weight * total * share))
    plan: list[UploadFile] = []
    for i in range(count):
        ext = rng.choice(BINARY_EXTS if kinds[i] else TEXT_EXTS)
        created = _iso(rng)
        file_id = f"{rng.getrandbits(128):032x}"
        name = rng.choice(STEMS[ext]).format(_int(rng, 1, 9999)) + "." + ext
        rel = f"{created[:4]}/{created[5:7]}/{file_id}-{name}"
        plan.append(UploadFile(rel, file_id, name, sizes[i], ext, created, _int(rng, 1, 16_000)))
    return plan


def _text_file(rng: random.Random, text: Text, ext: str, size: int, index: int) -> bytes:
    parts: list[str] = []
    have = 0
    if ext == "json":
        parts.append("[\n")
        row = 0
        while have < size:
            row += 1
            s = (f'  {{"id": {index * 100_000 + row}, "user": {_int(rng, 1, 16_000)}, '
                 f'"score": {rng.random():.4f}, "at": "{_iso(rng)}", '
                 f'"tags": {json.dumps(rng.sample(text.words[:300], 3), ensure_ascii=False)}, '
                 f'"note": {json.dumps(rng.choice(text.sentences), ensure_ascii=False)}}},\n')
            parts.append(s)
            have += len(s)
    elif ext == "csv":
        parts.append("id,user_id,created_at,amount,status,comment\n")
        row = 0
        while have < size:
            row += 1
            status = rng.choice(("paid", "pending", "refunded"))
            s = (f"{row},{_int(rng, 1, 16_000)},{_iso(rng)},{_int(rng, 100, 99_999)},"
                 f'{status},"{rng.choice(text.sentences)}"\n')
            parts.append(s)
            have += len(s)
    else:
        parts.append(f"# {text.title(rng)}\n\n")
        while have < size:
            s = text.sentences_of(rng, size - have + 100) + "\n\n"
            parts.append(s)
            have += len(s)
    return "".join(parts).encode()[:size]


def build_uploads(root: Path, plan: list[UploadFile], seed: int, text: Text) -> dict[str, str]:
    """Write every planned file under ``root``; return the SHA-256 of each (by ``rel``)."""
    made: set[str] = set()
    digests: dict[str, str] = {}
    root.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(plan):
        rng = random.Random(f"{seed}/upload/{i}")
        folder = f.rel.rsplit("/", 1)[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        if f.ext in IMAGE_HEADERS:
            head = IMAGE_HEADERS[f.ext]
            data = (head + rng.randbytes(max(0, f.size - len(head))))[: f.size]
        else:
            data = _text_file(rng, text, f.ext, f.size, i)
        with open(root / f.rel, "wb") as fh:
            fh.write(data)
        digests[f.rel] = hashlib.sha256(data).hexdigest()
        mtime = EPOCH_S + int(rng.random() * SPAN_S)
        os.utime(root / f.rel, (mtime, mtime))
    return digests


# -- database --------------------------------------------------------------------------------
Row = tuple[object, ...]


def _batches(rows: Iterator[Row], size: int = 20_000) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_database(path: Path, scale: float, seed: int, text: Text,
                   uploads: list[UploadFile], digests: dict[str, str]) -> dict[str, int]:
    """Create the database at ``path``; return the row count of every table."""
    rng = random.Random(f"{seed}/db")
    n = {k: max(1, round(v * scale)) for k, v in ROWS.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Fast bulk load: no journal, no fsync; WAL mode is switched on at the end.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")

        def users() -> Iterator[Row]:
            for i in range(1, n["users"] + 1):
                name = text.title(rng)[:40]
                settings = (f'{{"theme":"{rng.choice(("light", "dark", "system"))}",'
                            f'"lang":"{rng.choice(("ja", "ja", "en"))}",'
                            f'"notify":{{"email":{rng.choice(("true", "false"))},"digest":"'
                            f'{rng.choice(("daily", "weekly", "never"))}"}},"tz":"Asia/Tokyo"}}')
                yield (i, f"user{i}", f"user{i}.{_int(rng, 0, 999_999)}@example.jp", _iso(rng),
                       name, "$2b$12$" + rng.randbytes(31).hex()[:53],
                       rng.choice(("member",) * 20 + ("editor", "admin")),
                       text.sentences_of(rng, _int(rng, 0, 400)) or None, settings,
                       _iso(rng) if rng.random() < 0.8 else None)

        def notes() -> Iterator[Row]:
            for i in range(1, n["notes"] + 1):
                size = int(min(60_000, rng.lognormvariate(math.log(3000), 0.8)))
                created = _iso(rng)
                tags = json.dumps(rng.sample(text.words[:200], _int(rng, 0, 5)), ensure_ascii=False)
                yield (i, text.title(rng), text.sentences_of(rng, size), _int(rng, 1, n["users"]),
                       created, max(created, _iso(rng)) if rng.random() < 0.3 else None, tags,
                       rng.choice(("published",) * 8 + ("draft", "archived")),
                       int(rng.paretovariate(1.2) * 10))

        def uploads_rows() -> Iterator[Row]:
            for i, f in enumerate(uploads, 1):
                yield (i, f.uuid, f.original_name, f.rel, f.size, digests[f.rel],
                       CONTENT_TYPES[f.ext], f.uploader if f.uploader <= n["users"] else None,
                       f.created_at)

        def events() -> Iterator[Row]:
            for i in range(1, n["events"] + 1):
                kind = rng.choice(EVENT_KINDS)
                path_ = rng.choice(API_PATHS).format(_int(rng, 1, n["notes"]))
                detail = (f'{{"path":"{path_}","method":"{rng.choice(("GET", "GET", "POST"))}",'
                          f'"status":{rng.choice((200, 200, 200, 200, 201, 304, 404, 500))},'
                          f'"ms":{rng.expovariate(1 / 40):.1f},"bytes":{_int(rng, 200, 90_000)},'
                          f'"ip":"10.{_int(rng, 0, 255)}.{_int(rng, 0, 255)}.{_int(rng, 0, 255)}",'
                          f'"request_id":"{rng.getrandbits(64):016x}",'
                          f'"ua":"{rng.choice(USER_AGENTS)}"}}')
                yield (i, kind, _int(rng, 1, n["users"]) if rng.random() < 0.9 else None, detail,
                       _iso(rng))

        def comments() -> Iterator[Row]:
            for i in range(1, n["comments"] + 1):
                yield (i, _int(rng, 1, n["notes"]), _int(rng, 1, n["users"]),
                       text.sentences_of(rng, int(rng.lognormvariate(math.log(160), 0.6))),
                       _iso(rng))

        def sessions() -> Iterator[Row]:
            for i in range(n["sessions"]):
                created = _iso(rng)
                yield (f"{i:06x}" + rng.randbytes(29).hex(), _int(rng, 1, n["users"]),
                       rng.choice(USER_AGENTS), f"10.{_int(rng, 0, 255)}.{_int(rng, 0, 255)}.1",
                       created, created.replace("2024", "2026", 1).replace("2025", "2027", 1))

        inserts = {
            "users": (users, 10),
            "notes": (notes, 9),
            "uploads": (uploads_rows, 9),
            "events": (events, 5),
            "comments": (comments, 5),
            "sessions": (sessions, 6),
        }
        for table, (rows, ncols) in inserts.items():
            sql = f"INSERT INTO {table} VALUES ({', '.join('?' * ncols)})"  # noqa: S608 - fixed names
            for batch in _batches(rows()):
                conn.executemany(sql, batch)
        conn.execute("COMMIT")
        conn.executescript(INDEXES)
        conn.execute("ANALYZE")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("PRAGMA journal_mode=WAL")
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                  for t in inserts}
    finally:
        conn.close()
    return counts


def write_config(path: Path, seed: int) -> None:
    rng = random.Random(f"{seed}/env")
    path.write_text(
        "# AICA-SyS production settings (benchmark data, not real secrets)\n"
        "DATABASE_URL=sqlite:///./aica_sys.db\n"
        f"SECRET_KEY={rng.randbytes(32).hex()}\n"
        f"JWT_SECRET={rng.randbytes(32).hex()}\n"
        "ALLOWED_ORIGINS=https://aica-sys.example.jp\n"
        "UPLOAD_DIR=../public/uploads\n"
        f"SMTP_PASSWORD={rng.randbytes(12).hex()}\n"
    )
    path.chmod(0o600)


# -- archives for `list` ---------------------------------------------------------------------
def make_archives(app: Path, count: int, aica: list[str]) -> float:
    """``count`` small archives in ``app/backups``: one real backup, copied under past names.

    The copies carry no index entry: the first ``list`` indexes them (reading each once),
    later ones read only the index. Returns the seconds the indexing ``list`` took.
    """
    backups = app / "backups"
    if backups.exists():
        shutil.rmtree(backups)
    subprocess.run([*aica, "--root", str(app), "backup", "--no-prune", "--json"],
                   check=True, capture_output=True)
    [first] = [p for p in backups.iterdir() if p.name.startswith("backup_")]
    suffix = first.name[len("backup_YYYYMMDD_HHMMSS"):]
    start = datetime(2025, 1, 1, 3, 0, 0)  # noqa: DTZ001 - archive names are local time
    for i in range(count - 1):
        when = start + timedelta(days=i, seconds=i % 60)
        dest = backups / f"backup_{when:%Y%m%d_%H%M%S}{suffix}"
        shutil.copy2(first, dest)
        dest.chmod(0o600)
    t0 = time.perf_counter()
    subprocess.run([*aica, "--root", str(app), "list", "--json"], check=True, capture_output=True)
    return time.perf_counter() - t0


# -- driver ----------------------------------------------------------------------------------
def params_of(args: argparse.Namespace) -> dict[str, object]:
    return {
        "format": FORMAT,
        "scale": args.scale,
        "db_scale": args.db_scale if args.db_scale is not None else args.scale,
        "seed": args.seed,
        "small_files": args.small_files,
    }


def generate(
    out: Path,
    scale: float,
    seed: int = 1,
    *,
    db_scale: float | None = None,
    small_files: int | None = None,
    force: bool = False,
    replace_other: bool = False,
    quiet: bool = False,
) -> dict[str, object]:
    """Build the data set in ``out`` unless one with these parameters is there; return its stamp.

    A folder holding another data set (other parameters, older generator) is an error, unless
    ``replace_other`` (the runner, which owns ``bench/data/``) or ``force``.
    """
    params = params_of(argparse.Namespace(scale=scale, db_scale=db_scale, seed=seed,
                                          small_files=small_files))
    stamp_path = out / STAMP_NAME
    if out.exists() and not force:
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            stamp = {}
        if stamp.get("params") == params:
            if not quiet:
                print(f"{out}: already generated with these parameters (use --force to rebuild)")
            return dict(stamp)
        if not replace_other:
            raise SystemExit(f"{out} exists and holds another data set; use --force to replace it")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    text = Text(random.Random(f"{seed}/text"))
    plan = plan_uploads(scale, seed, small_files)
    digests = build_uploads(tmp / UPLOADS_REL, plan, seed, text)
    t_up = time.perf_counter() - t0
    rows = build_database(tmp / DB_REL, float(params["db_scale"]), seed, text,  # type: ignore[arg-type]
                          plan, digests)
    write_config(tmp / CONFIG_REL, seed)
    tree = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(digests.items())).encode())
    uploads = {"files": len(plan), "bytes": sum(f.size for f in plan),  # exact: files are cut
               "tree_sha256": tree.hexdigest()}
    stamp = {
        "params": params,
        "rows": rows,
        "database_bytes": (tmp / DB_REL).stat().st_size,
        "uploads": uploads,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {"uploads": round(t_up, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    stamp_path_tmp = tmp / STAMP_NAME
    stamp_path_tmp.write_text(json.dumps(stamp, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)
    if not quiet:
        print(f"{out}: database {stamp['database_bytes'] / MB:.0f} MB {rows}, "
              f"uploads {uploads['files']:,} files {uploads['bytes'] / MB:.0f} MB, "
              f"{stamp['seconds']['total']} s")
    return stamp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="1.0 ≈ 400 MB db + 400 MB uploads")
    p.add_argument("--out", type=Path, required=True, help="app root to create")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--db-scale", type=float, default=None, help="database scale (default: --scale)")
    p.add_argument("--small-files", type=int, default=None, metavar="N",
                   help="the same upload bytes in N small files")
    p.add_argument("--archives", type=int, default=None, metavar="N",
                   help="then make N small archives in OUT/backups (for list timings)")
    p.add_argument("--aica", default=str(Path(sys.executable).with_name("aica-backup")),
                   help="the aica-backup command (for --archives), split like a shell would")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT already matches")
    args = p.parse_args(argv)
    generate(args.out, args.scale, args.seed, db_scale=args.db_scale,
             small_files=args.small_files, force=args.force)
    if args.archives:
        secs = make_archives(args.out, args.archives, shlex.split(args.aica))
        print(f"{args.out}/backups: {args.archives} archives; first list (indexing) {secs:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
