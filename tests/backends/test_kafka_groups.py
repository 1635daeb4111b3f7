"""Consumer groups across OS processes on tansu: members split the partitions, and a
SIGKILLed member's partitions move to the survivor within the session timeout."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

MEMBER = r'''
import asyncio, json, sys, time
from tidings.backends.kafka import from_url
from tidings._records import TopicPartition

def emit(event, partitions=(), **extra):
    line = {"event": event, "partitions": sorted(tp.partition for tp in partitions), **extra}
    print(json.dumps(line), flush=True)

class Listener:
    async def on_assigned(self, partitions): emit("assigned", partitions)
    async def on_revoked(self, partitions): emit("revoked", partitions)
    async def on_lost(self, partitions): emit("lost", partitions)

async def main(url, topic, group):
    transport = from_url(url + "&delay_forwarder=false")
    await transport.start()
    subscription = transport.subscribe(group, [topic], Listener(), client="member")
    emit("ready")
    while True:
        records = await subscription.fetch(100, 0.2)
        last = {}
        for r in records:
            last[TopicPartition(r.topic, r.partition)] = r.offset + 1
        if last:
            await subscription.commit(last)
            emit("handled", offsets=sorted([tp.partition, o] for tp, o in last.items()))

asyncio.run(main(*sys.argv[1:]))
'''


class Member:
    """A group member in its own process; its events arrive on a queue."""

    def __init__(self, url: str, topic: str, group: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", MEMBER, url, topic, group],
            stdout=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.owned: set[int] = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def drain(self) -> None:
        """Apply every event so far to :attr:`owned`."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event["event"] == "assigned":
                self.owned |= set(event["partitions"])
            elif event["event"] in ("revoked", "lost"):
                self.owned -= set(event["partitions"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll ``check`` until true; return how long it took."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - began


def test_members_in_two_processes_split_partitions_and_survive_a_sigkill(
    kafka_url: str,
) -> None:
    topic, group = f"split-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    a, b = Member(kafka_url, topic, group), Member(kafka_url, topic, group)
    try:
        def split() -> bool:
            a.drain()
            b.drain()
            return bool(a.owned and b.owned and a.owned | b.owned == {0, 1, 2, 3})

        wait_for(split, 30, "two members to split four partitions")
        assert not a.owned & b.owned
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait()

        def survivor_owns_all() -> bool:
            b.drain()
            return b.owned == {0, 1, 2, 3}

        took = wait_for(survivor_owns_all, 20, "the survivor to take every partition")
        print(f"rebalance after SIGKILL: {took:.2f} s")
        assert took < 2 * 2 + 4, f"rebalance after SIGKILL took {took:.1f} s"  # session 2 s
    finally:
        a.stop()
        b.stop()
