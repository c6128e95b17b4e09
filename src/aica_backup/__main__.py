"""``python -m aica_backup`` and the ``aica-backup`` script.

Ctrl-C and SIGTERM are handled from here, before the command line is imported: that import
is most of a command's start-up, and a signal during it printed Python's traceback.
"""

from __future__ import annotations

import sys

from . import interrupt


def main() -> None:
    """Entry point; never returns. The handlers stay for the process's life: a signal while
    it exits, after the command is done, changes nothing."""
    interrupt.handling_signals().__enter__()
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:  # before the command line could report it itself
        sys.stderr.write("aica-backup: interrupted: nothing changed\n")
        sys.exit(interrupt.exit_code())
    finally:
        interrupt.settle()


if __name__ == "__main__":
    main()
