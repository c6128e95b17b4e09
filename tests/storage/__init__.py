"""Tests of the offsite storage backends (one conformance suite for all of them)."""
