"""Fixtures for backend tests (filled in by its owner)."""
