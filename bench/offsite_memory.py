"""Peak memory while encrypting and uploading a large archive offsite (memory must stay flat).

    python bench/offsite_memory.py --location s3://bucket/prefix [--size-mb 1024] [--work DIR]

The endpoint and keys come from the AWS_* variables (or rclone's, for rclone: locations). A
file of random bytes named like an archive is written in ``--work`` (streamed, never held in
memory), encrypted to a fresh age recipient into a temp file, uploaded (multipart), read back
and hashed, and its marker written: the same ``offsite.sync`` a backup run uses. Prints one
JSON object: bytes, seconds, and this process's peak RSS before and after (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyrage

from aica_backup import offsite
from aica_backup.catalog import sha256_file
from aica_backup.storage import RetryingStorage, open_storage

MIB = 1 << 20


def peak_rss_mib() -> float:
    """This process's peak resident memory, in MiB.

    Linux's VmHWM belongs to this address space; ``ru_maxrss`` would also carry the parent's
    peak across fork and exec (a pytest parent's, say), hiding what this process used.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--location", required=True)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the remote copy in place")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="offsite-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).astimezone().strftime("%Y%m%d_%H%M%S")
    src = work / f"backup_{stamp}.tar.gz"
    with open(src, "wb") as fh:
        for _ in range(args.size_mb):
            fh.write(os.urandom(MIB))
    archive = offsite.LocalArchive(src.name, src, sha256_file(src), src.stat().st_size)
    recipient = pyrage.x25519.Identity.generate().to_public()
    storage = RetryingStorage(open_storage(args.location), retries=1)

    before = peak_rss_mib()
    started = time.monotonic()
    (report,) = offsite.sync(
        [offsite.Target(args.location, storage)],
        [archive],
        work_dir=work,
        recipients=[recipient],
    )
    seconds = time.monotonic() - started
    after = peak_rss_mib()
    copies = {c.name: c for c in offsite.list_copies(storage)}
    remote = offsite.target_name(src.name, sealed=True)
    result = {
        "ok": report.ok and copies.get(remote) is not None and copies[remote].complete,
        "error": report.error,
        "bytes": archive.size,
        "encrypted_bytes": copies[remote].size if remote in copies else None,
        "seconds": round(seconds, 1),
        "peak_rss_mib_before_push": round(before, 1),
        "peak_rss_mib": round(after, 1),
        "temp_files_left": sorted(p.name for p in work.iterdir() if p.name.startswith(".tmp-")),
    }
    src.unlink()
    if not args.keep:
        storage.delete(offsite.marker_name(remote))
        storage.delete(remote)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
