"""``python -m aica_backup``."""

from .cli import main

main()
