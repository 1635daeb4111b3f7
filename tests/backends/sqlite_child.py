"""Child processes for the SQLite backend tests: producers and raw-transport group members.

Usage::

    python sqlite_child.py produce URL TOPIC COUNT
        Append COUNT records one call at a time; after each append returns, print
        ``partition offset value`` (flushed), so the parent knows what was acknowledged.

    python sqlite_child.py member URL TOPIC GROUP OUTFILE [SLEEP]
        A group member on the transport port itself (no App). Every handled record is
        appended to OUTFILE as a JSON line (one O_APPEND write, so a SIGKILL loses no
        reported line); offsets are committed after each fetched batch. Rebalance events
        and fenced commits are printed to stdout as JSON lines. SIGTERM: leave cleanly.

    python sqlite_child.py stamp URL TOPIC COUNT RATE
        Append COUNT records at RATE per second, each carrying ``repr(time.time())`` at append.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Collection

from tidings import FencedError, TopicPartition
from tidings._backends import load_transport
from tidings._records import OutRecord
from tidings.ports import Subscription, Transport


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def produce(url: str, topic: str, count: int) -> None:
    transport = load_transport(url)
    await transport.start()
    say(ready=True)
    for i in range(count):
        value = f"v{i}".encode()
        (position,) = await transport.append([OutRecord(topic, value, key=f"k{i}")])
        print(position.partition, position.offset, value.decode(), flush=True)
    await transport.close()


class Member:
    """Handles records synchronously inside its fetch loop, so on_revoked finds no work
    in flight: it only has to commit what was handled."""

    def __init__(self, transport: Transport, outfile: str, sleep: float) -> None:
        self.transport = transport
        self.fd = os.open(outfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.sleep = sleep
        self.done: dict[TopicPartition, int] = {}
        self.subscription: Subscription | None = None

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        say(event="assigned", partitions=sorted(p.partition for p in partitions))

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        say(event="revoked", partitions=sorted(p.partition for p in partitions))
        await self.commit({tp: self.done[tp] for tp in partitions if tp in self.done})
        for tp in partitions:
            self.done.pop(tp, None)

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        say(event="lost", partitions=sorted(p.partition for p in partitions))
        for tp in partitions:
            self.done.pop(tp, None)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.subscription is not None
        try:
            await self.subscription.commit(offsets)
        except FencedError as exc:
            say(event="fenced", error=str(exc))

    async def run(self, group: str, topic: str, stop: asyncio.Event) -> None:
        sub = self.subscription = self.transport.subscribe(group, [topic], self, client="child")
        say(ready=True)
        while not stop.is_set():
            records = await sub.fetch(100, 0.05)
            batch: dict[TopicPartition, int] = {}
            for record in records:
                if self.sleep:
                    await asyncio.sleep(self.sleep)
                line = {"p": record.partition, "o": record.offset, "v": record.value.decode(),
                        "pid": os.getpid()}
                os.write(self.fd, (json.dumps(line) + "\n").encode())
                batch[TopicPartition(record.topic, record.partition)] = record.offset + 1
            if batch:
                self.done.update(batch)
                await self.commit(batch)
        await sub.close()
        say(event="closed")


async def member(url: str, topic: str, group: str, outfile: str, sleep: float) -> None:
    transport = load_transport(url)
    await transport.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Member(transport, outfile, sleep).run(group, topic, stop)
    await transport.close()


async def stamp(url: str, topic: str, count: int, rate: float) -> None:
    transport = load_transport(url)
    await transport.start()
    await transport.ensure_topic(topic)
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await transport.append([OutRecord(topic, repr(time.time()).encode(), key=str(i))])
    await transport.close()


def main(argv: list[str]) -> None:
    mode, url, topic, *rest = argv
    if mode == "produce":
        asyncio.run(produce(url, topic, int(rest[0])))
    elif mode == "member":
        sleep = float(rest[2]) if len(rest) > 2 else 0.0
        asyncio.run(member(url, topic, rest[0], rest[1], sleep))
    elif mode == "stamp":
        asyncio.run(stamp(url, topic, int(rest[0]), float(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
