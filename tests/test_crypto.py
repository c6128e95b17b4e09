"""Public-key encryption with age: keygen, streamed round trips, wrong keys, two recipients.

What must hold: an encrypted archive is useless without the identity (``tar`` cannot read it,
the secret config is not in its bytes), opens with any of its recipients' identities, and a
wrong or missing key fails with a clear CryptoError, leaving no partial plaintext behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyrage
import pytest

from aica_backup.archive import check_against_manifest, open_tar_stream, scan_file
from aica_backup.backup import BackupOptions, create_archive
from aica_backup.crypto import (
    decrypting_reader,
    encrypting_writer,
    generate_identity,
    load_identities,
    parse_recipients,
)
from aica_backup.errors import AicaBackupError, ArchiveError, CryptoError, UsageError
from aica_backup.fsutil import atomic_file
from aica_backup.layout import Layout
from aica_backup.offsite import LocalArchive, encrypted

from .support.app import SECRET, App


def new_identity(folder: Path, name: str) -> tuple[Path, str]:
    path = folder / name
    return path, generate_identity(path)


def encrypt_bytes(data: bytes, recipients: list[Any]) -> bytes:
    out = io.BytesIO()
    with encrypting_writer(out, recipients) as sink:
        for i in range(0, len(data), 100_000):  # several writes: a stream, not one buffer
            sink.write(data[i : i + 100_000])
    return out.getvalue()


def decrypt_bytes(data: bytes, identities: list[Any]) -> bytes:
    with decrypting_reader(io.BytesIO(data), identities) as plain:
        return plain.read()


def encrypted_archive(app: App, recipients: list[str]) -> Path:
    options = BackupOptions(recipients=parse_recipients(recipients))
    return create_archive(Layout(root=app.root), options).path


# -- keygen --------------------------------------------------------------------------------


def test_keygen_writes_a_private_identity_and_prints_the_recipient(
    app: App, tmp_path: Path
) -> None:
    identity = tmp_path / "keys" / "aica.key"
    proc = app.run("keygen", "--output", str(identity))
    assert identity.stat().st_mode & 0o777 == 0o600
    text = identity.read_text()
    (secret,) = [ln for ln in text.splitlines() if ln.startswith("AGE-SECRET-KEY-")]
    recipient = str(pyrage.x25519.Identity.from_str(secret).to_public())
    assert f"Public recipient: {recipient}" in proc.stdout
    assert f'recipients = ["{recipient}"]' in proc.stdout  # how to configure it
    assert secret not in proc.stdout + proc.stderr  # the private key is never printed
    # Never overwritten: a second keygen must not destroy the only key to old backups.
    again = app.run("keygen", "--output", str(identity), check=False)
    assert again.returncode == 3 and "refusing to overwrite" in again.stderr
    assert identity.read_text() == text


def test_keygen_default_path_and_json(app: App, tmp_path: Path) -> None:
    work = tmp_path / "laptop"
    work.mkdir()
    proc = app.run("keygen", "--json", cwd=work)
    data = json.loads(proc.stdout)
    assert Path(data["identity"]) == work / "aica-backup-identity.txt"
    assert data["recipient"].startswith("age1")
    assert load_identities(work / "aica-backup-identity.txt")


# -- streams -------------------------------------------------------------------------------


def test_stream_round_trip_is_exact(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    data = os.urandom(3_000_000)
    sealed = encrypt_bytes(data, [identity.to_public()])
    assert sealed.startswith(b"age-encryption.org/v1")
    assert data[:1000] not in sealed
    assert decrypt_bytes(sealed, [identity]) == data


def test_two_recipients_open_with_either_identity(tmp_path: Path) -> None:
    alice, bob, eve = (pyrage.x25519.Identity.generate() for _ in range(3))
    data = b"database and secrets " * 1000
    sealed = encrypt_bytes(data, [alice.to_public(), bob.to_public()])
    assert decrypt_bytes(sealed, [alice]) == data
    assert decrypt_bytes(sealed, [bob]) == data
    with pytest.raises(CryptoError, match="wrong identity"):
        decrypt_bytes(sealed, [eve])


def test_tampered_ciphertext_fails_cleanly() -> None:
    identity = pyrage.x25519.Identity.generate()
    sealed = bytearray(encrypt_bytes(os.urandom(200_000), [identity.to_public()]))
    sealed[len(sealed) // 2] ^= 0x01
    # Damage, not a key problem: the archive's fault (exit 6), which verify records.
    with pytest.raises(ArchiveError):
        decrypt_bytes(bytes(sealed), [identity])
    with pytest.raises(ArchiveError):
        decrypt_bytes(bytes(sealed[: len(sealed) // 3]), [identity])  # truncated
    with pytest.raises(CryptoError):  # a wrong key stays a key problem (exit 11)
        decrypt_bytes(bytes(sealed), [pyrage.x25519.Identity.generate()])


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_damaged_encrypted_archive_fails_verification(
    app: App, tmp_path: Path, where: str
) -> None:
    """A flipped byte in an ``.age`` archive's header ("Unknown age format.\nHave you tried
    upgrading…", two lines) or payload was a key error (exit 11): verify --all recorded
    nothing, so retention went on counting the damaged archive as a good backup."""
    identity, recipient = new_identity(tmp_path, "id.txt")
    (app.root / "aica-backup.toml").write_text(
        f'[encryption]\nrecipients = ["{recipient}"]\nencrypt = "all"\n'
    )
    app.run("backup")
    [archive] = app.archives()
    data = bytearray(archive.read_bytes())
    # In the header: the "-grease" stanza's tag (age adds one, of random length), after the
    # recipient's stanza, whose damage could only say "no matching key".
    header = data.find(b"-grease")
    header = header if header >= 0 else data.index(b"\n--- ") + 6  # else: the header's MAC
    data[header if where == "header" else len(data) // 2] ^= 0x40
    archive.write_bytes(bytes(data))
    proc = app.run("verify", "--all", "--identity", str(identity), check=False)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"FAILED  {archive.name}  encrypted archive is damaged"), proc
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    assert "FAILED" in app.run("list").stdout  # recorded: retention no longer counts it


# -- whole archives ------------------------------------------------------------------------


def test_encrypted_archive_round_trips(app: App, tmp_path: Path) -> None:
    key, recipient = new_identity(tmp_path, "id.txt")
    path = encrypted_archive(app, [recipient])
    assert path.name.endswith(".tar.gz.age")
    assert path.stat().st_mode & 0o777 == 0o600
    result = scan_file(path, load_identities(key))
    check_against_manifest(result)
    assert result.manifest.app_name == "aica-sys"
    assert any(m.endswith(".env.production") for m in result.files)


def test_encrypted_archive_is_unreadable_without_the_key(app: App, tmp_path: Path) -> None:
    _, recipient = new_identity(tmp_path, "id.txt")
    path = encrypted_archive(app, [recipient])
    tar = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True)
    assert tar.returncode != 0
    assert SECRET.encode() not in path.read_bytes()
    with pytest.raises(CryptoError, match="no identity"):
        scan_file(path)


def test_wrong_identity_fails_cleanly_with_nothing_written(app: App, tmp_path: Path) -> None:
    _, recipient = new_identity(tmp_path, "right.txt")
    wrong_key, _ = new_identity(tmp_path, "wrong.txt")
    path = encrypted_archive(app, [recipient])
    with pytest.raises(CryptoError, match="wrong identity"):
        scan_file(path, load_identities(wrong_key))
    # Decrypting to a file the safe way: the decryption closes (and raises) inside the atomic
    # write, so a wrong key leaves neither a file nor a temp file.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with (
        pytest.raises(CryptoError),
        atomic_file(out_dir / "backup.tar") as fh,
        open_tar_stream(path, load_identities(wrong_key)) as stream,
    ):
        shutil.copyfileobj(stream, fh)
    assert list(out_dir.iterdir()) == []


def test_two_recipient_archive_opens_with_either(app: App, tmp_path: Path) -> None:
    key_a, rec_a = new_identity(tmp_path, "a.txt")
    key_b, rec_b = new_identity(tmp_path, "b.txt")
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the ops team\n{rec_b}\n")
    path = encrypted_archive(app, [rec_a, str(recipients_file)])
    for key in (key_a, key_b):
        check_against_manifest(scan_file(path, load_identities(key)))


def test_offsite_encryption_streams_a_plain_archive(app: App, tmp_path: Path) -> None:
    key, recipient = new_identity(tmp_path, "id.txt")
    plain = create_archive(Layout(root=app.root))
    work = tmp_path / "work"
    work.mkdir()
    local = LocalArchive(plain.name, plain.path, plain.sha256, plain.size)
    with encrypted(local, parse_recipients([recipient]), work) as sealed:
        assert sealed.name == plain.name + ".age"
        assert sealed.path.parent == work and sealed.path.name.startswith(".tmp-")
        assert sealed.path.stat().st_mode & 0o777 == 0o600
        data = sealed.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sealed.sha256 and len(data) == sealed.size
        with decrypting_reader(io.BytesIO(data), load_identities(key)) as stream:
            assert hashlib.sha256(stream.read()).hexdigest() == plain.sha256
    assert list(work.iterdir()) == []  # the temp copy is gone


def test_key_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="cannot read identity file"):
        load_identities(tmp_path / "missing.txt")
    junk = tmp_path / "junk.txt"
    junk.write_text("not a key\n")
    with pytest.raises(CryptoError, match="no valid age identity"):
        load_identities(junk)
    with pytest.raises(CryptoError, match="invalid age recipient"):
        parse_recipients(["age1notarealkey"])
    with pytest.raises(UsageError, match="refusing to overwrite"):
        generate_identity(junk)
    assert issubclass(CryptoError, AicaBackupError)
