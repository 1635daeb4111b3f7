"""What a backend declares matches what it implements; what it lacks is refused, by name."""

from __future__ import annotations

import asyncio

import pytest

from tidings import ConfigurationError
from tidings.ports import Capability, SupportsLookup, SupportsTransactions


def test_declared_capabilities_match_the_implementation(backend) -> None:
    transport = backend.app("svc").transport
    capabilities = transport.capabilities
    assert (Capability.EXACTLY_ONCE in capabilities) == isinstance(transport, SupportsTransactions)
    assert (Capability.LOOKUP in capabilities) == isinstance(transport, SupportsLookup)
    assert transport.shared_between_processes == backend.multiprocess
    assert {Capability.GROUPS, Capability.ORDER_PER_KEY, Capability.REPLAY,
            Capability.DELAY, Capability.PRIORITY} <= capabilities


def test_a_missing_capability_is_refused_at_start(backend, names) -> None:
    async def main() -> None:
        app = backend.app("svc")

        @app.subscriber(names("orders"), exactly_once=True)
        async def handle(payload: dict) -> None: ...

        if Capability.EXACTLY_ONCE in app.transport.capabilities:
            return  # honoured: tests/conformance/test_exactly_once.py runs it
        with pytest.raises(ConfigurationError) as caught:
            await app.start()
        assert app.transport.system in str(caught.value)
        assert "'exactly_once'" in str(caught.value)

    asyncio.run(main())
