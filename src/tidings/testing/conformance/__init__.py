"""The transport conformance suite, for any backend: point it at a URL and run pytest.

What every transport must do is written once, here, as pytest tests (Watermill's
``TestPubSub(t, features, constructor)``, eventsourcing's shipped recorder tests). A
backend's own test module takes them all with a URL factory::

    # tests/test_conformance.py of the tidings-nats package
    from tidings.testing.conformance import conformance_tests

    globals().update(conformance_tests(url_factory=lambda name: f"nats://localhost/{name}"))

``url_factory`` gets a name unique to each test (for a database file, a vhost, a prefix;
the tests also name their topics and groups uniquely). Where a URL needs other fixtures
(a server a session fixture starts, ``tmp_path``, parameters), leave ``url_factory`` out
and define a fixture ``tidings_url`` returning the URL for one test instead.

Each test runs if the transport declares what it needs (``Transport.capabilities``);
for a capability it does not declare, the test asserts the refusal (a
:class:`~tidings.ConfigurationError` naming it, at start or at the call) instead. Group
members are OS processes (``python -m tidings.testing._member``, crashed with SIGKILL)
where the transport is ``shared_between_processes``. The port's own
contract (fencing, revoke before reassign) is tested on the transport directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import (
    _batch,
    _capabilities,
    _delay_priority_reply,
    _exactly_once,
    _failures,
    _groups,
    _middleware,
    _parked,
    _port,
    _pubsub,
)
from ._backend import Backend, Member
from ._requires import requires
from ._util import eventually, wait_letters

__all__ = ["Backend", "Member", "conformance_tests", "eventually", "requires", "wait_letters"]

_MODULES = (_pubsub, _groups, _failures, _batch, _delay_priority_reply, _exactly_once,
            _middleware, _capabilities, _port, _parked)


@pytest.fixture
def backend(tidings_url: str, tmp_path: Path) -> Iterator[Backend]:
    """The backend under test, on the URL ``tidings_url`` gives for this test."""
    under_test = Backend(tidings_url, tmp_path)
    yield under_test
    under_test.kill_members()


@pytest.fixture
def names() -> Callable[[str], str]:
    """Unique topic and group names, so tests never see each other's data on a shared broker."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"


def conformance_tests(url_factory: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Every conformance test and the fixtures they use, for a test module's globals.

    With ``url_factory``, a ``tidings_url`` fixture calls it with a name unique to each
    test; without, the module (or a ``conftest.py``) defines ``tidings_url`` itself.
    """
    found: dict[str, Any] = {"backend": backend, "names": names}
    for module in _MODULES:
        found.update({k: v for k, v in vars(module).items() if k.startswith("test_")})
    if url_factory is not None:
        factory = url_factory

        @pytest.fixture
        def tidings_url() -> str:
            return factory(f"t{uuid.uuid4().hex[:12]}")

        found["tidings_url"] = tidings_url
    return found
