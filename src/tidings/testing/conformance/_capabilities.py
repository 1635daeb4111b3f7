"""What a backend declares matches what it implements; each capability it declares is
honoured, and each one it does not is refused, by name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from ..._records import TopicPartition
from ...ports import Capability, SupportsLookup, SupportsTransactions
from ._backend import Backend
from ._requires import REFUSED, assert_refused


def test_declared_capabilities_match_the_implementation(backend: Backend) -> None:
    transport = backend.app("svc").transport
    capabilities = transport.capabilities
    assert (Capability.EXACTLY_ONCE in capabilities) == isinstance(transport, SupportsTransactions)
    assert (Capability.LOOKUP in capabilities) == isinstance(transport, SupportsLookup)
    assert transport.system and transport.system != "unknown", "name the messaging system"


@pytest.mark.parametrize("capability", [c for c in Capability if c in REFUSED])
def test_a_capability_is_accepted_if_declared_else_refused(
        backend: Backend, names: Callable[[str], str], capability: Capability) -> None:
    if capability not in backend.capabilities:
        assert_refused(backend, capability)
        return

    async def main() -> None:
        app = backend.app("svc")
        topic = names("accepted")

        async def handle(payload: dict[str, Any]) -> None: ...

        if capability is Capability.PRIORITY:
            app.worker(topic)(handle)
        else:
            options: dict[Capability, dict[str, Any]] = {
                Capability.ORDER_PER_KEY: {"concurrency": 4},
                Capability.EXACTLY_ONCE: {"exactly_once": True}}
            app.subscriber(topic, **options.get(capability, {}))(handle)
        async with app:
            if capability is Capability.DELAY:
                await app.publish(topic, {}, delay=30)
            if capability is Capability.REPLAY:
                await app.publish(topic, {})
                offsets = await app.transport.offsets_for_time(topic, time.time() - 60)
                await app.transport.set_offsets(names("other"), {
                    TopicPartition(topic, p): o for p, o in offsets.items()})

    asyncio.run(main())
