"""The packaged conformance suite (tidings.testing.conformance) on the built-in backends;
``tidings_url`` in tests/conftest.py gives each test its broker, once per backend."""

from __future__ import annotations

from tidings.testing.conformance import conformance_tests

globals().update(conformance_tests())
