"""Public-key encryption of whole archives with age (x25519), through ``pyrage``.

The server that writes backups needs only the public *recipients*; the *identity* (private
key) that reads them can live offline. Streams go through a pipe to a worker thread running
``pyrage.encrypt_io`` / ``decrypt_io``, so memory stays flat whatever the archive size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import AicaBackupError, ArchiveError, CryptoError, UsageError
from .fsutil import PRIVATE_FILE, atomic_file, atomic_write_bytes


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:
        raise UsageError(
            "encryption needs the optional extra: pip install 'aica-backup[crypto]'"
        ) from None
    return pyrage


def generate_identity(path: Path) -> str:
    """Write a new identity file (mode 0600, never overwriting); return its public recipient."""
    pyrage = _pyrage()
    if path.exists():
        raise UsageError(f"refusing to overwrite existing identity file {path}")
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = f"# created by aica-backup keygen\n# public key: {recipient}\n{identity}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode(), mode=PRIVATE_FILE)
    return recipient


def parse_recipients(values: Sequence[str]) -> list[Any]:
    """Recipients from ``age1…`` strings or files holding them (one per line, # comments)."""
    pyrage = _pyrage()
    keys: list[str] = []
    for value in values:
        if value.startswith("age1"):
            keys.append(value)
            continue
        try:
            lines = Path(value).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CryptoError(f"cannot read recipients file {value}: {exc.strerror}") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    try:
        return [pyrage.x25519.Recipient.from_str(k) for k in keys]
    except Exception:
        raise CryptoError(
            "invalid age recipient (expected a public key starting with age1)"
        ) from None


def load_identities(path: Path | None) -> list[Any]:
    """Identities (private keys) from an identity file; CryptoError if missing or invalid."""
    if path is None:
        raise CryptoError(
            "this archive is encrypted and no identity was given",
            hint="pass --identity FILE or set AICA_BACKUP_IDENTITY",
        )
    pyrage = _pyrage()
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CryptoError(f"cannot read identity file {path}: {exc.strerror}") from None
    found = [ln.strip() for ln in lines if ln.strip().startswith("AGE-SECRET-KEY-")]
    try:
        identities = [pyrage.x25519.Identity.from_str(k) for k in found]
    except Exception:
        identities = []
    if not identities:
        raise CryptoError(f"no valid age identity in {path}")
    return identities


class _Worker(threading.Thread):
    def __init__(self, target: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self._call = (target, args)
        self.error: BaseException | None = None

    def run(self) -> None:
        target, args = self._call
        try:
            target(*args)
        except BaseException as exc:  # handed to the caller's thread after join()
            self.error = exc


@contextlib.contextmanager
def encrypting_writer(raw: IO[bytes], recipients: Sequence[Any]) -> Iterator[IO[bytes]]:
    """Yield a writable stream whose bytes reach ``raw`` age-encrypted to ``recipients``."""
    pyrage = _pyrage()
    rfd, wfd = os.pipe()
    reader = os.fdopen(rfd, "rb", buffering=1 << 20)
    writer = os.fdopen(wfd, "wb", buffering=1 << 20)
    worker = _Worker(pyrage.encrypt_io, reader, raw, list(recipients))
    worker.start()
    try:
        yield writer
    finally:
        with contextlib.suppress(OSError):
            writer.close()  # EOF for the worker; on error the worker stops with a broken pipe
        worker.join()
        reader.close()
    if worker.error is not None:
        raise CryptoError(f"encryption failed: {worker.error}")


@contextlib.contextmanager
def decrypting_reader(raw: IO[bytes], identities: Sequence[Any]) -> Iterator[IO[bytes]]:
    """Yield a readable stream of the plaintext of the age stream ``raw``.

    A wrong key, a truncated or a tampered stream raises CryptoError at the first read that
    meets it or, at the latest, when the context closes.
    """
    pyrage = _pyrage()
    rfd, wfd = os.pipe()
    reader = os.fdopen(rfd, "rb", buffering=1 << 20)
    writer = os.fdopen(wfd, "wb", buffering=1 << 20)

    def run() -> None:
        try:
            pyrage.decrypt_io(raw, writer, list(identities))
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    worker = _Worker(run)
    worker.start()
    try:
        yield reader
    except BaseException:
        reader.close()  # unblocks a worker still writing
        worker.join()
        # A decryption failure ends the plaintext early, so the reader's complaint (a
        # truncated tar) is only its symptom: report the cause.
        if worker.error is not None and _is_decrypt_error(worker.error):
            raise _decrypt_error(worker.error) from None
        raise
    reader.close()
    worker.join()
    if worker.error is not None:
        raise _decrypt_error(worker.error)


def decrypt_file(src: Path, dest: Path, identities: Sequence[Any]) -> None:
    """Write the plaintext of the age file ``src`` to ``dest`` (0600), atomically: a wrong key,
    a truncated or a tampered file raises CryptoError and leaves ``dest`` as it was."""
    # atomic_file first: it commits only after the reader's exit, where age vouches for the end.
    with (
        atomic_file(dest) as out,
        open(src, "rb") as raw,
        decrypting_reader(raw, identities) as plain,
    ):
        shutil.copyfileobj(plain, out, 1 << 20)


def _is_decrypt_error(exc: BaseException | None) -> bool:
    """Whether age failed on the stream itself (header or payload), not on reading it."""
    return isinstance(exc, _pyrage().DecryptError) or (
        isinstance(exc, OSError) and str(exc) == "decryption error"  # a payload MAC failed
    )


def _decrypt_error(exc: BaseException) -> AicaBackupError:
    """A wrong key is a key problem (exit 11); any other failure of age is the archive's
    damage (exit 6), which verify records, as for a damaged plain archive."""
    text = str(exc)
    if "No matching keys" in text:
        return CryptoError("wrong identity: none of the given keys can decrypt this archive")
    if not _is_decrypt_error(exc):
        return CryptoError(f"cannot decrypt archive: {text}")
    reason = text.splitlines()[0].rstrip(".") if text else "unreadable"
    return ArchiveError(f"encrypted archive is damaged or truncated: {reason}")
