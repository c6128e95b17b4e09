"""The ``aica-backup`` command. One module per command; this one wires them and maps errors.

The library raises :class:`~aica_backup.errors.AicaBackupError`; only :func:`main` turns an
error into one line on stderr and the exit code its class carries.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__, interrupt
from ..errors import AicaBackupError, ExitCode
from ..fsutil import storage_error
from .common import Globals, emit_json, err

# Each command's module (under aica_backup.cli), in the order ``--help`` lists them. A module
# is imported only when its command runs (or help lists it): a command starts without paying
# for every other command's imports (0.2 s of a 0.3 s start-up before).
COMMANDS = {
    "backup": "backup",
    "list": "listing",
    "prune": "prune",
    "pin": "pin",
    "unpin": "pin",
    "restore": "restore",
    "recover": "recover",
    "verify": "verify",
    "doctor": "doctor",
    "offsite": "offsite",
    "keygen": "keygen",
    "schedule": "schedule",
    "init": "init",
    "demo": "demo",
}


@functools.cache
def command_group(module: str) -> Any:
    """The Click group of what ``aica_backup.cli.<module>`` registers, built once per process."""
    sub = typer.Typer()
    importlib.import_module(f"{__name__}.{module}").register(sub)
    return typer.main.get_group(sub)


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM in a command, carried past Typer to :func:`main`."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__("interrupted")
        self.interrupt = interrupt


class _LazyGroup(TyperGroup):
    """The root group: knows the command names, imports a command's module when it is asked
    for. (Any: Typer's own Click is private, typer._click.)"""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        return command_group(COMMANDS[cmd_name]).commands.get(cmd_name)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Typer would make it a silent exit 130
            raise _Interrupted(exc) from None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as exc:  # "No such command": suggest from the table
            message = getattr(exc, "message", None)
            matches = get_close_matches(args[0], COMMANDS) if args else []
            if matches and isinstance(message, str) and "Did you mean" not in message:
                exc.message = (
                    f"{message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
                )
            raise


app = typer.Typer(
    name="aica-backup",
    help="Backup and recovery for the AICA-SyS app: database, uploads and config.",
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"aica-backup {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            "-C",
            envvar="AICA_BACKUP_ROOT",
            help="Application root (holds backend/, public/uploads/, .env.production).",
            file_okay=False,
        ),
    ] = Path(),
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config-file",
            envvar="AICA_BACKUP_CONFIG_FILE",
            help="Configuration file (default: aica-backup.toml in the app root).",
            dir_okay=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Backup and recovery for the AICA-SyS app: database, uploads and config."""
    ctx.obj = Globals(root=root.absolute(), config_file=config_file)
    if ctx.invoked_subcommand not in (None, "demo", "keygen", "schedule", "init"):
        from .recover import finish_interrupted_runs

        finish_interrupted_runs(ctx, recover_journal=ctx.invoked_subcommand != "recover")


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the script enters by :mod:`aica_backup.__main__`, which handles
    signals first); never returns."""
    json_mode = "--json" in (argv if argv is not None else sys.argv[1:])
    with interrupt.handling_signals():
        code = _run(argv, json_mode)
    sys.exit(code)


def _run(argv: list[str] | None, json_mode: bool) -> int:
    """Run the command; return the exit code, having printed the one line a failure gets."""
    try:
        rv = app(args=argv, prog_name="aica-backup", standalone_mode=False)
    except _Interrupted as exc:
        return _interrupted(exc.interrupt)
    except KeyboardInterrupt as exc:  # while the command line is parsed
        return _interrupted(exc)
    except AicaBackupError as exc:
        if interrupt.received() is not None:  # what the interruption made fail
            return _interrupted(exc)
        _report(exc, json_mode)
        return int(exc.exit_code)
    except typer.Abort as exc:  # Ctrl-C at a prompt
        return _interrupted(exc)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.TyperException as exc:  # bad flag or argument: Typer's own usage errors
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"aica-backup: error: {exc}", markup=False)
        return ExitCode.USAGE
    except OSError as exc:  # a file-system error no layer below anticipated
        if interrupt.received() is not None:
            return _interrupted(exc)
        _report(storage_error("file system error", exc), json_mode)
        return ExitCode.STORAGE
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("AICA_BACKUP_DEBUG"):
            raise
        err.print(
            f"aica-backup: internal error: {type(exc).__name__}: {exc} "
            "(set AICA_BACKUP_DEBUG=1 for details)",
            markup=False,
        )
        return ExitCode.ERROR
    if rv == ExitCode.INTERRUPTED and interrupt.received() is not None:
        return _interrupted(KeyboardInterrupt())  # Typer's own exit 130 (parsing, a prompt)
    return rv if isinstance(rv, int) else 0


def _interrupted(exc: BaseException) -> int:
    """One line for an interrupted command: what it kept, or that nothing changed; exit 130
    for Ctrl-C, 143 for SIGTERM."""
    kept = "; ".join(interrupt.kept())
    err.print(f"aica-backup: interrupted: {kept or 'nothing changed'}", markup=False)
    if isinstance(exc, interrupt.Terminated):
        return ExitCode.TERMINATED
    return interrupt.exit_code()


def _report(exc: AicaBackupError, json_mode: bool) -> None:
    if json_mode:
        emit_json(
            {
                "ok": False,
                "error": exc.message,
                "hint": exc.hint,
                "exit_code": int(exc.exit_code),
                "kind": type(exc).__name__,
            }
        )
    hint = f" ({exc.hint})" if exc.hint else ""
    err.print(f"aica-backup: error: {exc.message}{hint}", markup=False)
    if os.environ.get("AICA_BACKUP_DEBUG"):
        raise exc
