"""Small helpers for async tests (they ship with the conformance suite)."""

from tidings.testing.conformance import eventually, wait_letters

__all__ = ["eventually", "wait_letters"]
