"""Adapters of the library to the frameworks an app is written in (each imports its framework;
nothing else in aica_backup imports them)."""
