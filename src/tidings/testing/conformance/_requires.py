"""Tests of a capability run where the transport declares it; elsewhere they assert
the refusal instead (never a silent skip): Watermill's ``Features``, enforced."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from ..._errors import ConfigurationError
from ..._retry import RetryPolicy
from ...ports import Capability
from ._backend import Backend

__all__ = ["REFUSED", "assert_refused", "requires"]

F = TypeVar("F", bound=Callable[..., None])


def requires(*needed: Capability) -> Callable[[F], F]:
    """Run the decorated test if the backend declares every one of ``needed``; else
    assert that the backend refuses each missing one (at start or at the call)."""

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def run(**fixtures: Any) -> None:
            backend: Backend = fixtures["backend"]
            missing = [c for c in needed if c not in backend.capabilities]
            for capability in missing:
                assert_refused(backend, capability)
            if not missing:
                test(**fixtures)

        return run  # type: ignore[return-value]

    return decorate


async def _refused_at_start(backend: Backend, option: str, **kwargs: Any) -> None:
    app = backend.app("svc")
    worker = kwargs.pop("worker", False)
    topic = f"refused-{uuid.uuid4().hex[:8]}"

    async def handle(payload: dict[str, Any]) -> None: ...

    if worker:
        app.worker(topic)(handle)
    else:
        app.subscriber(topic, **kwargs)(handle)
    with pytest.raises(ConfigurationError) as caught:
        await app.start()
    message = str(caught.value)
    assert app.transport.system in message and option in message, message


async def _refused_delay(backend: Backend) -> None:
    app = backend.app("svc")
    async with app:
        with pytest.raises(ConfigurationError, match="'delay'"):
            await app.publish(f"refused-{uuid.uuid4().hex[:8]}", {}, delay=0.5)


async def _refused_replay(backend: Backend) -> None:
    from ..._records import TopicPartition

    app = backend.app("svc")
    async with app:
        topic = f"refused-{uuid.uuid4().hex[:8]}"
        with pytest.raises(ConfigurationError, match="replay"):
            await app.transport.offsets_for_time(topic, time.time())
        with pytest.raises(ConfigurationError, match="replay"):
            await app.transport.set_offsets("svc", {TopicPartition(topic, 0): 0})
    # Parked keys live in a log a member reads back (see tidings._parking).
    await _refused_at_start(backend, "blocking=False", retry=RetryPolicy(blocking=False))
    await _refused_at_start(backend, "park-key", dead_letter="park-key")


#: How a backend refuses each capability it does not declare.
REFUSED: dict[Capability, Callable[[Backend], Any]] = {
    Capability.GROUPS: lambda b: _refused_at_start(b, "'groups'"),
    Capability.ORDER_PER_KEY: lambda b: _refused_at_start(b, "'order_per_key'", concurrency=4),
    Capability.PRIORITY: lambda b: _refused_at_start(b, "'priority'", worker=True),
    Capability.EXACTLY_ONCE: lambda b: _refused_at_start(b, "exactly_once", exactly_once=True),
    Capability.DELAY: _refused_delay,
    Capability.REPLAY: _refused_replay,
}


def assert_refused(backend: Backend, capability: Capability) -> None:
    """Assert that ``backend`` refuses what needs ``capability``, by name."""
    refusal = REFUSED.get(capability)
    assert refusal is not None, f"no refusal is defined for {capability!r}"
    asyncio.run(refusal(backend))
