"""A member of a consumer group on ``amqp://``, run as its own process by the failover
tests: ``python amqp_member.py URL GROUP TOPIC``. It prints ``ready`` once assigned, then
``H <n> <key>`` for every record it handles (flushed, so a SIGKILL loses no line)."""

from __future__ import annotations

import asyncio
import sys

from tidings import App


async def main(url: str, group: str, topic: str) -> None:
    app = App(group, broker=url)

    @app.subscriber(topic, concurrency=4)
    async def handle(payload: dict[str, int]) -> None:
        sys.stdout.write(f"H {payload['n']} {payload['k']}\n")
        sys.stdout.flush()

    async with app:
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
