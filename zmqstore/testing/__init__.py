"""Helpers for tests and benchmarks that run real datastore-node processes."""
