"""Shared fixtures. Each support module owns one kind of fixture; see tests/support/."""

pytest_plugins = [
    "tests.support.app",
    "tests.support.backend",
    "tests.support.s3",
    "tests.support.rclone",
]
