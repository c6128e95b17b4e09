"""Fixtures for rclone tests (filled in by its owner)."""
