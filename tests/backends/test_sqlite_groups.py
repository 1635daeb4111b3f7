"""Consumer groups over SQLite: leases, fencing, rebalancing, in-process and across
real OS processes (SIGKILL, SIGSTOP, orderly join and leave)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from tidings import FencedError, TopicPartition
from tidings._assignment import desired_assignment
from tidings._records import OutRecord, Record, Start
from tidings.backends.sqlite import SqliteTransport, from_url
from tidings.ports import Subscription

CHILD = Path(__file__).with_name("sqlite_child.py")
FAST = "?session_timeout=1&partitions=4"


class Recorder:
    """A rebalance listener that records what happened to it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[int]]] = []

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("assigned", sorted(p.partition for p in partitions)))

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("revoked", sorted(p.partition for p in partitions)))

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        self.events.append(("lost", sorted(p.partition for p in partitions)))


async def transports(tmp_path: Path, count: int) -> list[SqliteTransport]:
    started = [from_url(f"sqlite:///{tmp_path}/bus.db{FAST}") for _ in range(count)]
    for transport in started:
        await transport.start()
    return started


async def settle(*subscriptions: Subscription, seconds: float = 1.0) -> None:
    """Let members fetch (and so rebalance) for a while, all at once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.gather(*(s.fetch(100, 0.02) for s in subscriptions))


def test_members_split_partitions_as_the_assignment_says(tmp_path: Path) -> None:
    async def main() -> None:
        ta, tb = await transports(tmp_path, 2)
        await ta.ensure_topic("t", 4)
        a = ta.subscribe("g", ["t"], Recorder(), client="a")
        b = tb.subscribe("g", ["t"], Recorder(), client="b")
        await settle(a, b)
        ids = {a: a.member.member_id, b: b.member.member_id}  # type: ignore[attr-defined]
        want = desired_assignment({i: {"t"} for i in ids.values()}, {"t": 4})
        assert a.assignment() == want[ids[a]] and b.assignment() == want[ids[b]]
        (group,) = await ta.describe_groups()
        assert {m.member_id: set(m.assignment) for m in group.members} == want
        assert {m.client for m in group.members} == {"a", "b"}
        await a.close()
        await settle(b, seconds=0.3)  # a left: b takes over at once
        assert len(b.assignment()) == 4
        for t in (ta, tb):
            await t.close()

    asyncio.run(main())


def test_commits_are_fenced_to_the_owner(tmp_path: Path) -> None:
    async def main() -> None:
        ta, tb = await transports(tmp_path, 2)
        await ta.ensure_topic("t", 1)
        a = ta.subscribe("g", ["t"], Recorder())
        await settle(a, seconds=0.2)
        tp = TopicPartition("t", 0)
        assert a.assignment() == {tp}
        b = tb.subscribe("g", ["t"], Recorder())
        await b.fetch(10, 0.05)
        assert b.assignment() == set()
        with pytest.raises(FencedError):
            await b.commit({tp: 7})
        await a.commit({tp: 3})
        (group,) = await ta.describe_groups()
        assert group.committed == {tp: 3}
        for s in (a, b):
            await s.close()
        for t in (ta, tb):
            await t.close()

    asyncio.run(main())


def test_a_crashed_member_loses_its_lease_and_its_commits_are_fenced(tmp_path: Path) -> None:
    async def main() -> None:
        ta, tb = await transports(tmp_path, 2)
        await ta.append([OutRecord("t", b"%d" % i, partition=i % 4) for i in range(40)])
        a = ta.subscribe("g", ["t"], Recorder())
        got = await a.fetch(100, 1.0)
        await a.commit({TopicPartition("t", p): 5 for p in range(4)})
        a.abandon()  # type: ignore[attr-defined]  # no heartbeat, no leave: like a crash
        b_events = Recorder()
        b = tb.subscribe("g", ["t"], b_events)
        started = time.monotonic()
        again = []
        while len(b.assignment()) < 4:
            again += await b.fetch(100, 0.05)
        assert 0.6 < time.monotonic() - started < 3.0, "taken over after the session timeout"
        again += await b.fetch(100, 0.2)
        assert len(got) == 40 and sorted(r.offset for r in again) == sorted([*range(5, 10)] * 4)
        with pytest.raises(FencedError):
            await a.commit({TopicPartition("t", 0): 10})
        await b.close()
        for t in (ta, tb):
            await t.close()

    asyncio.run(main())


def test_latest_is_pinned_when_first_claimed(tmp_path: Path) -> None:
    async def main() -> None:
        ta, tb = await transports(tmp_path, 2)
        await ta.ensure_topic("t", 1)
        await ta.append([OutRecord("t", b"before")])
        a = ta.subscribe("g", ["t"], Recorder(), start=Start.LATEST)
        assert await a.fetch(10, 0.1) == []
        await ta.append([OutRecord("t", b"after")])
        a.abandon()  # type: ignore[attr-defined]  # crashed before committing anything
        b = tb.subscribe("g", ["t"], Recorder(), start=Start.LATEST)
        got: list[Record] = []
        while not got:
            got = await b.fetch(10, 0.1)
        assert [r.value for r in got] == [b"after"]
        await b.close()
        for t in (ta, tb):
            await t.close()

    asyncio.run(main())


def test_set_offsets_moves_a_live_member(tmp_path: Path) -> None:
    async def main() -> None:
        (t,) = await transports(tmp_path, 1)
        await t.append([OutRecord("t", b"%d" % i, partition=0) for i in range(10)])
        events = Recorder()
        a = t.subscribe("g", ["t"], events)
        first = await a.fetch(100, 1.0)
        await a.commit({TopicPartition("t", 0): 10})
        assert len(first) == 10
        await t.set_offsets("g", {TopicPartition("t", 0): 4})
        replayed = await a.fetch(100, 2.0)
        assert [r.offset for r in replayed] == list(range(4, 10))
        assert ("lost", [0]) in events.events and events.events[-1] == ("assigned", [0])
        await a.close()
        assert events.events[-1] == ("revoked", [0, 1, 2, 3])
        await t.close()

    asyncio.run(main())


class SlowRevoker(Recorder):
    """Takes its time to finish work when asked to give partitions up."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked_at = 0.0

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        await asyncio.sleep(0.3)
        self.revoked_at = time.monotonic()
        await super().on_revoked(partitions)


class Stamper(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.assigned_at = 0.0

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.assigned_at = time.monotonic()
        await super().on_assigned(partitions)


def test_a_busy_member_keeps_its_leases_and_hands_over_only_after_revoking(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        ta, tb = await transports(tmp_path, 2)
        await ta.ensure_topic("t", 2)
        slow, joiner = SlowRevoker(), Stamper()
        a = ta.subscribe("g", ["t"], slow)
        await a.fetch(10, 0.1)
        assert len(a.assignment()) == 2
        b = tb.subscribe("g", ["t"], joiner)
        await settle(b, seconds=2.5)  # a does not fetch for 2.5 session timeouts...
        assert b.assignment() == set(), "...but its heartbeats keep its partitions"
        await settle(a, b, seconds=1.0)  # a rebalances inside fetch
        assert len(a.assignment()) == len(b.assignment()) == 1
        assert joiner.assigned_at >= slow.revoked_at > 0, "claimed only after the revoke"
        await a.close()
        await b.close()
        (group,) = await ta.describe_groups()
        assert group.members == () and set(group.committed) == {
            TopicPartition("t", 0), TopicPartition("t", 1)}
        for t in (ta, tb):
            await t.close()

    asyncio.run(main())


# -- real processes -----------------------------------------------------------------


class Child:
    """A raw-transport group member in its own process (see sqlite_child.py)."""

    def __init__(self, url: str, topic: str, group: str, outfile: Path, sleep: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "member", url, topic, group, str(outfile), str(sleep)],
            stdout=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []
        assert self.readline() == {"ready": True}

    def readline(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the member exited"
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def wait_for(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            while (found := self.readline()).get("event") != event:
                pass
            return found

        return await asyncio.wait_for(asyncio.to_thread(read), timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await self.wait_for("closed")
        await asyncio.to_thread(self.proc.wait, 10)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def handled(outfile: Path) -> list[tuple[int, int]]:
    if not outfile.exists():
        return []
    text = outfile.read_text()  # whole lines only: a member may be writing one now
    lines = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return [(line["p"], line["o"]) for line in lines]


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_sigkilled_member_partitions_move_and_only_uncommitted_work_repeats(
    tmp_path: Path,
) -> None:
    url, out = f"sqlite:///{tmp_path}/bus.db{FAST}", tmp_path / "handled.jsonl"

    async def main() -> None:
        (t,) = await transports(tmp_path, 1)
        await t.ensure_topic("t", 6)
        members = [Child(url, "t", "g", out, sleep=0.002) for _ in range(3)]
        try:
            for member in members:
                await member.wait_for("assigned")
            await asyncio.sleep(1.0)
            await t.append([OutRecord("t", b"%d" % i, key=f"k{i}") for i in range(1500)])
            await until(lambda: len(handled(out)) >= 300, 20, "some work done")
            victim = members.pop(0)
            victim.signal(signal.SIGKILL)
            await asyncio.to_thread(victim.proc.wait)
            victim.close()
            (group,) = await t.describe_groups()
            committed_at_kill = dict(group.committed)
            await until(lambda: len(set(handled(out))) == 1500, 30, "all 1500 handled")
            for member in members:
                await member.stop()
        finally:
            for member in members:
                member.close()
        counts = Counter(handled(out))
        assert len(counts) == 1500
        repeated = [(p, o) for (p, o), n in counts.items() if n > 1]
        for p, o in repeated:  # only work the victim had not committed
            assert o >= committed_at_kill[TopicPartition("t", p)], (p, o)
        assert len(repeated) < 1500 // 2
        await t.close()

    asyncio.run(main())


def test_orderly_join_and_leave_repeat_nothing(tmp_path: Path) -> None:
    url, out = f"sqlite:///{tmp_path}/bus.db{FAST}", tmp_path / "handled.jsonl"

    async def main() -> None:
        (t,) = await transports(tmp_path, 1)
        await t.ensure_topic("t", 4)
        first = Child(url, "t", "g", out, sleep=0.001)
        await first.wait_for("assigned")

        async def produce() -> None:
            for i in range(0, 1200, 20):
                await t.append([OutRecord("t", b"%d" % n, key=f"k{n}") for n in range(i, i + 20)])
                await asyncio.sleep(0.02)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.3)
        second = Child(url, "t", "g", out, sleep=0.001)  # joins mid-stream
        await second.wait_for("assigned")
        await first.wait_for("revoked")
        await asyncio.sleep(0.3)
        await first.stop()  # leaves mid-stream
        await producer
        await until(lambda: len(set(handled(out))) == 1200, 20, "all 1200 handled")
        await second.stop()
        counts = Counter(handled(out))
        assert len(counts) == 1200
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:10]
        assert not any(e.get("event") in ("lost", "fenced") for e in first.events + second.events)
        await t.close()

    asyncio.run(main())


def freeze_outside_a_transaction(child: Child, db: Path) -> None:
    """SIGSTOP the child, but not while it holds SQLite's write lock (that would stall
    every writer until SIGCONT, which is not what this test is about)."""
    probe = sqlite3.connect(db, timeout=0.2, isolation_level=None)
    try:
        for _ in range(20):
            child.signal(signal.SIGSTOP)  # alive, but silent past its session timeout
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:
                child.signal(signal.SIGCONT)
                time.sleep(0.01)
        raise AssertionError("the child never let go of the write lock")
    finally:
        probe.close()


def test_a_stopped_member_loses_its_partitions_and_is_told(tmp_path: Path) -> None:
    url, out = f"sqlite:///{tmp_path}/bus.db{FAST}", tmp_path / "handled.jsonl"

    async def main() -> None:
        (t,) = await transports(tmp_path, 1)
        await t.ensure_topic("t", 2)
        frozen = Child(url, "t", "g", out, sleep=0.0)
        await frozen.wait_for("assigned")
        freeze_outside_a_transaction(frozen, tmp_path / "bus.db")
        events = Recorder()
        taker = t.subscribe("g", ["t"], events)
        await t.append([OutRecord("t", b"x", partition=p) for p in (0, 1)])
        got: list[Record] = []
        while len(got) < 2:
            got += await taker.fetch(10, 0.1)
        assert taker.assignment() == {TopicPartition("t", 0), TopicPartition("t", 1)}
        frozen.signal(signal.SIGCONT)
        lost = await frozen.wait_for("lost")
        assert lost["partitions"] == [0, 1]
        await settle(taker, seconds=0.8)  # it rejoined: the partitions are split again
        assert len(taker.assignment()) == 1
        await taker.close()
        await frozen.stop()
        await t.close()

    asyncio.run(main())


def test_a_record_reaches_another_process_within_milliseconds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"

    async def measure(t: SqliteTransport, topic: str) -> tuple[float, float]:
        await t.ensure_topic(topic)
        reader = t.subscribe("g", [topic], Recorder(), start=Start.LATEST)
        await reader.fetch(1, 0.1)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), "stamp", url, topic, "300", "300")
        delays: list[float] = []
        while len(delays) < 300:
            records = await reader.fetch(100, 5.0)
            now = time.time()
            delays += [now - float(r.value) for r in records]
        assert await child.wait() == 0
        await reader.close()
        delays.sort()
        p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
        print(f"cross-process wake: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
        return p50, p99

    async def main() -> None:
        (t,) = await transports(tmp_path, 1)
        p50, p99 = await measure(t, "lat")
        if p99 >= 0.05:  # a noisy neighbour on a 2-core box: judge the better of two runs
            p50, p99 = min((p50, p99), await measure(t, "lat2"), key=lambda r: r[1])
        assert p99 < 0.05, (p50, p99)
        await t.close()

    asyncio.run(main())
