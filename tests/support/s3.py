"""Fixtures for s3 tests (filled in by its owner)."""
