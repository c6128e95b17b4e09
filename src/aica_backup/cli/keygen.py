"""``aica-backup keygen``: a new age identity (private key) and its public recipient."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..crypto import generate_identity
from .common import JSON_OPTION, emit_json, out

DEFAULT_IDENTITY = Path("aica-backup-identity.txt")


def command(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the identity (default: ./aica-backup-identity.txt in the "
            "current folder). Never overwritten.",
            dir_okay=False,
        ),
    ] = DEFAULT_IDENTITY,
    json_out: bool = JSON_OPTION,
) -> None:
    r"""Create an encryption key pair: identity file (mode 0600) and public recipient.

    The server that makes backups needs only the recipient, in aica-backup.toml:

    \[encryption] recipients = \["age1…"]

    Keep the identity file OFF the server, with a copy offline: lose it, lose the backups.

    restore and verify read it from --identity, AICA_BACKUP_IDENTITY or \[encryption] identity.
    """
    recipient = generate_identity(output)
    if json_out:
        emit_json({"identity": str(output.absolute()), "recipient": recipient})
        return
    out.print(f"Identity (private key) written to {output} (mode 0600).", markup=False)
    out.print(f"Public recipient: {recipient}", markup=False)
    out.print(
        f'Put it in aica-backup.toml as [encryption] recipients = ["{recipient}"]; move '
        f"{output.name} off this server and keep a copy offline (no identity, no restore).",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("keygen")(command)
