"""What ``publish_many`` and ``publish_batch`` return: a lazy sequence of Published that
behaves like the list it replaces (memory backend)."""

from __future__ import annotations

import asyncio

import pytest

from tidings import App, Outgoing, Published, PublishedMany, TransportError
from tidings._records import Position


def test_publish_many_returns_every_message_in_order() -> None:
    async def main() -> tuple[PublishedMany, PublishedMany]:
        app = App("lazy", broker="memory://published-many")
        async with app:
            many = await app.publish_many("orders", [{"n": i} for i in range(5)])
            batch = await app.publish_batch([Outgoing("a", {"n": 1}), Outgoing("b", {"n": 2})])
            for published in many:  # each says where its message landed
                (record,) = await app._transport.read(
                    published.topic, published.partition or 0, published.offset or 0, 1)
                assert record.headers["tidings-id"] == published.id
        return many, batch

    many, batch = asyncio.run(main())
    assert len(many) == 5 and isinstance(many[0], Published)
    assert len({p.id for p in many}) == 5
    assert {p.topic for p in many} == {"orders"}
    assert many[-1] == many[4] and many[1:3] == [many[1], many[2]]
    assert many == list(many) and list(many) == many[:]
    assert many != list(many)[:4] and many != "orders"
    assert repr(many) == repr(list(many))
    assert [(p.topic, p.offset) for p in batch] == [("a", 0), ("b", 0)]
    with pytest.raises(IndexError):
        many[5]
    with pytest.raises(TypeError):
        hash(many)


def test_a_transport_that_loses_positions_is_an_error() -> None:
    with pytest.raises(TransportError, match="1 positions for 2 messages"):
        PublishedMany(["a", "b"], "t", [Position("t", 0, 0)])

