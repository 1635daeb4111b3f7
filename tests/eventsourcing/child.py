"""A projection process for the SIGKILL test.

Usage: python child.py DB_URL [STALL_AT]. Runs the event-count projection to the
store's head, printing one JSON line per committed batch. With STALL_AT, the handler
stops for good at that position, in the middle of a batch whose earlier writes are
flushed but not committed, and prints ``{"event": "stalled"}`` so the test can SIGKILL
it there.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parent))

from domain import ItemAdded, OrderCancelled, OrderPlaced, count, events, make_engine

from tidings.eventsourcing import Projection, Recorded
from tidings.eventsourcing.sqlalchemy import EventStore, Projections


def say(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def main(url: str, stall_at: int | None) -> None:
    counter = Projection("event-counts")

    @counter.on(OrderPlaced, ItemAdded, OrderCancelled)
    async def stalling(recorded: Recorded[Any], session: AsyncSession) -> None:
        await count(recorded, session)
        if stall_at is not None and recorded.position >= stall_at:
            await session.flush()
            say("stalled", position=recorded.position)
            await asyncio.sleep(3600)

    engine = make_engine(url)
    projections = Projections(EventStore(engine, events), counter, batch=100)
    try:
        done = await projections.catch_up(
            "event-counts", progress=lambda done, total: say("batch", done=done, total=total))
        say("done", events=done)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))
