"""A handler that finishes while a commit is under way still gets its offset committed:
the tail of an idle partition must not stay uncommitted (it would show as lag forever)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tidings import App, TopicPartition, testing


def test_an_offset_finished_during_a_commit_is_committed_next() -> None:
    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        gate = asyncio.Event()
        handled: list[int] = []

        @app.subscriber("t", concurrency=4)
        async def handle(body: dict[str, int]) -> None:
            if body["n"] == 1:
                await gate.wait()  # finishes only while the commit of offset 0 runs
            handled.append(body["n"])

        async with app:
            subscription = app._consumers[0]._subscription
            assert subscription is not None
            commit = subscription.commit

            async def commit_while_record_1_finishes(offsets: Mapping[TopicPartition, int]
                                                     ) -> None:
                await commit(offsets)
                if offsets.get(TopicPartition("t", 0)) == 1 and not gate.is_set():
                    gate.set()
                    await asyncio.sleep(0.05)  # record 1's handler finishes meanwhile

            subscription.commit = commit_while_record_1_finishes  # type: ignore[method-assign]
            await app.publish("t", {"n": 0}, key="a", partition=0)
            await app.publish("t", {"n": 1}, key="b", partition=0)
            for _ in range(100):
                if len(handled) == 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # idle
            lags = await app.lag()
        assert handled == [0, 1]
        assert [(p.partition, p.committed, p.lag) for p in lags if p.partition == 0] == \
            [(0, 2, 0)]

    asyncio.run(main())
