"""The middleware seam on every backend: every handler call and every append goes
through it, a middleware that raises counts as its handler (or its publish) raising,
and true lag: an idle group's lag is 0, N waiting messages are lag N."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from ... import (
    AppendCall,
    AppendNext,
    CallNext,
    ConfigurationError,
    HandlerCall,
    Middleware,
    Position,
    RetryPolicy,
)
from ...ports import Capability
from ._backend import Backend
from ._requires import requires
from ._util import Names, eventually, wait_letters, watch_letters

FAST = RetryPolicy(max_attempts=2, backoff=0.02, jitter=0)


class Recorder(Middleware):
    """Records what it wraps: (kind, topic) of each handler call and each append."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.appends: list[tuple[str, tuple[str, ...]]] = []
        self.outcomes: list[tuple[str, float | None, bool]] = []

    async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
        self.calls.append((call.kind, call.topic, len(call.messages)))
        try:
            return await call_next(call)
        except Exception:
            self.outcomes.append((call.topic, call.retry_in, call.dead_lettered))
            raise

    async def append(self, call: AppendCall, call_next: AppendNext) -> Sequence[Position]:
        self.appends.append((call.kind, tuple(r.topic for r in call.records)))
        return await call_next(call)


@requires(Capability.GROUPS, Capability.PRIORITY)
def test_every_handler_call_and_every_append_goes_through_the_middleware(
        backend: Backend, names: Names) -> None:
    topic, batch, queue, ask, bad = (names(n) for n in ("pub", "batch", "q", "ask", "bad"))

    async def main() -> None:
        recorder = Recorder()
        app = backend.app("svc", middleware=[recorder])
        done: list[str] = []

        @app.subscriber(topic)
        async def on_event(body: dict[str, int]) -> None:
            done.append("subscriber")

        @app.subscriber(batch, batch=True)
        async def on_batch(bodies: list[dict[str, int]]) -> None:
            done.extend("batch" for _ in bodies)

        @app.worker(queue)
        async def work(body: dict[str, int]) -> None:
            done.append("worker")

        @app.responder(ask)
        async def answer(body: dict[str, int]) -> dict[str, int]:
            return {"n": body["n"] + 1}

        @app.subscriber(bad, retry=FAST)
        async def fail(body: dict[str, int]) -> None:
            raise ValueError("always")

        @app.cron("* * * * * *", name=names("tick"))
        async def tick() -> None:
            done.append("cron")

        async with app:
            await app.publish(topic, {"n": 1})
            await app.publish_many(batch, [{"n": 1}, {"n": 2}])
            await app.enqueue(queue, {"n": 1}, priority=5)
            assert await app.request(ask, {"n": 1}, timeout=10) == {"n": 2}
            await app.publish(bad, {"n": 1})
            await eventually(lambda: {"subscriber", "batch", "worker", "cron"} <= set(done))
            letters = await wait_letters(app, bad, 1)
            await app.dead_letters(bad).redrive(letters)
            await eventually(lambda: recorder.outcomes.count((bad, None, True)) == 2)
        kinds = {kind for kind, _, _ in recorder.calls}
        assert kinds == {"subscriber", "batch", "worker", "responder", "cron"}
        assert sum(n for kind, _, n in recorder.calls if kind == "batch") == 2
        assert recorder.outcomes[:2] == [(bad, 0.02, False), (bad, None, True)]
        appended = {(kind, topics[0]) for kind, topics in recorder.appends}
        assert {("publish", topic), ("publish", batch), ("request", ask),
                ("reply", "tidings.replies"), ("publish", bad), ("dead-letter", f"{bad}.dlq"),
                ("redrive", bad)} <= appended

    asyncio.run(main())


class Raising(Middleware):
    def __init__(self) -> None:
        self.raise_on_handle = True

    async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
        if self.raise_on_handle:
            raise RuntimeError("middleware failed")
        return await call_next(call)

    async def append(self, call: AppendCall, call_next: AppendNext) -> Sequence[Position]:
        if any(r.topic == "refused" for r in call.records):
            raise RuntimeError("append refused")
        return await call_next(call)


@requires(Capability.GROUPS)
def test_a_raising_middleware_counts_as_its_handler_or_publish_raising(
        backend: Backend, names: Names) -> None:
    topic = names("mw-raise")

    async def main() -> None:
        app = backend.app("svc", middleware=[Raising()], retry=FAST)
        called: list[int] = []

        @app.subscriber(topic)
        async def handle(body: dict[str, int]) -> None:
            called.append(1)

        async with app, watch_letters(app, topic) as watch:
            await app.publish(topic, {"n": 1})
            letters = await watch.wait(1)
            with pytest.raises(RuntimeError, match="append refused"):
                await app.publish("refused", {"n": 1})
        assert called == []
        assert letters[0].error_type.endswith("RuntimeError")
        assert letters[0].attempts == 2  # retried once, then dead-lettered

    asyncio.run(main())


def test_a_middleware_of_the_wrong_shape_is_refused_with_the_expected_one(backend: Backend) -> None:
    app = backend.app("svc")

    class Sync(Middleware):
        def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
            return call_next(call)

    for wrong in (lambda call, call_next: None, Recorder, Sync()):
        with pytest.raises(ConfigurationError, match="call_next"):
            app.add_middleware(wrong)  # type: ignore[arg-type]


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)
def test_an_idle_group_has_lag_0_and_waiting_messages_are_lag(
        backend: Backend, names: Names) -> None:
    topic = names("lag")

    async def main() -> None:
        app = backend.app("svc")
        group = app.name
        handled: list[int] = []

        @app.subscriber(topic, concurrency=32)
        async def handle(body: dict[str, int]) -> None:
            await asyncio.sleep(0.001 * (body["n"] % 5))
            handled.append(body["n"])

        async with app:
            for n in range(60):
                await app.publish(topic, {"n": n}, key=f"k{n % 7}")
            await eventually(lambda: len(handled) == 60)
            await asyncio.sleep(2.0)  # idle: the tail of every partition is committed
            lags = await app.lag()
            assert lags and {p.lag for p in lags} == {0}, lags
            health = await app.health(max_lag=0)
            assert health.ready and health.connected, health
        waiting = backend.app("producer")
        async with waiting:
            for n in range(5):
                await waiting.publish(topic, {"n": n})
            lags = [p for p in await waiting.lag(all_groups=True) if p.group == group]
        assert sum(p.lag for p in lags) == 5, lags

    asyncio.run(main())
