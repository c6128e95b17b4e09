"""S3-compatible object storage through boto3: ``s3://bucket/prefix``.

The endpoint, credentials and region come from the standard AWS sources, resolved by boto3
itself (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/config`` and ``credentials``, ``AWS_DEFAULT_REGION``…); this tool never stores them.

Large files go up as a multipart upload in bounded chunks with bounded concurrency, so memory
stays flat whatever the archive size. S3 checksum extensions (CRC32 trailers and the like)
are turned off: several S3-compatible stores reject them, and every copy is verified anyway by
reading it back and comparing its SHA-256 (:mod:`aica_backup.offsite`).
"""

from __future__ import annotations

import math
import threading
from datetime import UTC
from pathlib import Path
from typing import IO, Any

from .. import interrupt
from ..errors import StorageError, UsageError
from ..notify import safe_url
from .base import AccessError, NotFoundError, ObjectInfo, check_name, is_valid_name

MIB = 1 << 20
DEFAULT_CHUNK = 16 * MIB
MIN_CHUNK = 5 * MIB  # the S3 minimum for every part but the last
MAX_PARTS = 9_000  # S3 allows 10,000 parts; keep a margin
READ_BLOCK = MIB

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_ACCESS = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AllAccessDisabled",
    "403",
}


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise UsageError(
            "S3 targets need the optional extra: pip install 'aica-backup[s3]'"
        ) from None
    return boto3


class S3Storage:
    """Objects are the keys ``PREFIX/NAME`` of one bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        profile: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        concurrency: int = 4,
    ) -> None:
        if chunk_size < MIN_CHUNK:
            raise UsageError(f"S3 chunk size must be at least {MIN_CHUNK // MIB} MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.chunk_size = chunk_size
        self.concurrency = max(1, concurrency)
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_location(cls, location: str, **opts: Any) -> S3Storage:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        rest = location.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket or location == rest:
            raise UsageError(f"S3 location must look like s3://bucket/prefix: {location}")
        return cls(bucket, prefix, **opts)

    # -- plumbing ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """One boto3 client per storage, created on first use (clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                boto3 = _boto3()
                from botocore.config import Config

                session = boto3.session.Session(profile_name=self.profile)
                config = Config(
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"mode": "standard", "max_attempts": 3},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=max(10, 2 * self.concurrency),
                )
                try:
                    self._client = session.client(
                        "s3", endpoint_url=self.endpoint_url, config=config
                    )
                except Exception as exc:
                    raise self._error("connecting", exc) from None
            return self._client

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _endpoint(self) -> str:
        url = getattr(getattr(self._client, "meta", None), "endpoint_url", None)
        return safe_url(url) if url else "the S3 endpoint"

    def _error(self, what: str, exc: BaseException, name: str = "") -> StorageError:
        """Translate a boto3/botocore exception: not found, access (permanent) or transient."""
        where = f"{self.location}/{name}" if name else self.location
        # boto3's transfer manager wraps the service's answer in S3UploadFailedError: look
        # down the chain for it, it tells a wrong key from a network failure.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(getattr(cause, "response", None), dict):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            exc = cause
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            code = str(err.get("Code", ""))
            message = str(err.get("Message", "")) or code
            if code in _NOT_FOUND:
                return NotFoundError(f"{where}: no such object")
            if code in _ACCESS:
                hint = (
                    "create the bucket first"
                    if code == "NoSuchBucket"
                    else (
                        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE and the "
                        "bucket policy"
                    )
                )
                return AccessError(f"{where}: {what} failed: {code}: {message}", hint=hint)
            return StorageError(f"{where}: {what} failed: {code}: {message}")
        kind = type(exc).__name__
        if kind in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
            return AccessError(
                f"{where}: {what} failed: {exc}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        if kind in ("EndpointConnectionError", "ConnectTimeoutError"):
            return StorageError(f"{where}: {what} failed: cannot connect to {self._endpoint()}")
        # S3UploadFailedError and friends only carry text: keep it, it names the cause.
        return StorageError(f"{where}: {what} failed: {exc}")

    def _transfer_config(self, size: int) -> Any:
        from boto3.s3.transfer import TransferConfig

        # Grow the chunk for huge files so the part count stays under S3's limit.
        chunk = max(self.chunk_size, math.ceil(size / MAX_PARTS / MIB) * MIB)
        return TransferConfig(
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            max_concurrency=self.concurrency,
            use_threads=True,
        )

    # -- the interface -----------------------------------------------------------------
    def put(self, name: str, src: Path) -> None:
        key = self._key(name)
        try:
            size = src.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot read {src}: {exc.strerror}") from None
        try:
            self.client.upload_file(
                str(src),
                self.bucket,
                key,
                Config=self._transfer_config(size),
                Callback=_stop_if_interrupted,
            )
        except StorageError:
            raise
        except Exception as exc:
            raise self._error("upload", exc, name) from None

    def get(self, name: str, dest: IO[bytes]) -> None:
        """Stream the object; errors writing ``dest`` (the caller's side) propagate as they are."""
        key = self._key(name)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except StorageError:
            raise
        except Exception as exc:
            raise self._error("download", exc, name) from None
        body = response["Body"]
        expected = int(response.get("ContentLength", -1))
        got = 0
        try:
            while True:
                try:
                    chunk = body.read(READ_BLOCK)
                except Exception as exc:  # the connection, not our disk
                    raise self._error("download", exc, name) from None
                if not chunk:
                    break
                interrupt.check()
                dest.write(chunk)
                got += len(chunk)
        finally:
            body.close()
        if expected >= 0 and got != expected:
            raise StorageError(
                f"{self.location}/{name}: download ended after {got} of {expected} bytes"
            )

    def list(self) -> list[ObjectInfo]:
        start = f"{self.prefix}/" if self.prefix else ""
        out: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, Delimiter="/"
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(start) :]
                    if is_valid_name(name):
                        out.append(
                            ObjectInfo(name, int(obj["Size"]), obj["LastModified"].astimezone(UTC))
                        )
        except StorageError:
            raise
        except Exception as exc:
            raise self._error("listing", exc) from None
        return out

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except StorageError:
            raise
        except Exception as exc:
            error = self._error("delete", exc, name)
            if not isinstance(error, NotFoundError):
                raise error from None

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except StorageError:
            raise
        except Exception as exc:
            error = self._error("stat", exc, name)
            if isinstance(error, NotFoundError):
                return None
            raise error from None
        return ObjectInfo(name, int(head["ContentLength"]), head["LastModified"].astimezone(UTC))


def _stop_if_interrupted(_sent: int) -> None:
    """An upload's progress callback (in the transfer's threads): once the command is
    stopping, fail the upload, which the transfer then aborts (a multipart one included);
    the retry wrapper turns that into the interruption."""
    if interrupt.STOP.is_set():
        raise StorageError("upload stopped: the command was interrupted")
