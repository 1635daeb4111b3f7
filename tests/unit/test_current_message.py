"""The message being handled, as code running inside a handler sees it: a handler that
takes no Message leaves the envelope unbuilt until someone asks (memory backend)."""

from __future__ import annotations

import asyncio

from tidings import App, Message, RetryPolicy
from tidings._message import current_message


def test_a_handler_without_a_message_parameter_still_has_its_current_message() -> None:
    async def main() -> None:
        app = App("current", broker="memory://current-message")
        seen: list[tuple[Message | None, tuple[str, str] | None]] = []
        same: list[bool] = []  # one envelope per delivery, however often asked for
        done = asyncio.Event()

        @app.subscriber("orders", retry=RetryPolicy(max_attempts=3, backoff=0.01))
        async def handle(payload: dict[str, int]) -> None:
            seen.append((current_message.get(), current_message.ids()))
            same.append(current_message.get() is seen[-1][0])
            if len(seen) == 1:
                raise RuntimeError("fail the first delivery once")
            done.set()

        async with app:
            published = await app.publish("orders", {"n": 1}, key="k")
            await asyncio.wait_for(done.wait(), 10)
        assert current_message.get() is None and current_message.ids() is None
        (first, first_ids), (second, _) = seen
        assert first is not None and second is not None
        assert (first.id, first.topic, first.key, first.offset) == (
            published.id, "orders", "k", published.offset)
        assert first.correlation_id == published.id and first.causation_id is None
        assert first_ids == (published.id, published.id)
        assert first.body == b'{"n":1}'
        assert (first.attempt, second.attempt) == (1, 2)
        assert same == [True, True]

    asyncio.run(main())
