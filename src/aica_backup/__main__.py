"""``python -m aica_backup`` and the ``aica-backup`` script.

Ctrl-C and SIGTERM are handled from here, before the command line is imported: that import
is most of a command's start-up, and a signal during it printed Python's traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from . import interrupt


def main() -> None:
    """Entry point; never returns. The handlers stay for the process's life: a signal while
    it exits, after the command is done, changes nothing."""
    interrupt.install()
    code: int | str | None
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:  # before the command line could report it itself
        sys.stderr.write("aica-backup: interrupted: nothing changed\n")
        code = interrupt.exit_code()
    except SystemExit as exc:
        code = exc.code
    finally:
        interrupt.settle()
    if interrupt.received() is None or not isinstance(code, int):
        # Python's exit puts the default handlers back (signal's finalization) while it still
        # unloads modules for tens of ms: a SIGTERM then killed the done command (-15, not its
        # code). Held back from here, a late signal dies with the process, unraised.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        sys.exit(code)
    # Stopped, and cleaned up: exit with the code now. CPython makes a process whose Ctrl-C
    # interrupted an exec() of a string (dataclasses make their methods so, while the tool is
    # imported) kill itself by SIGINT as it exits (-2, not 130), however it was handled.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
