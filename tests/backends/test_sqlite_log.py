"""The SQLite log: partitioning, offsets, durability across SIGKILL and processes,
delayed records, retention and the admin calls."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tidings import (
    ConfigurationError,
    MessageTooLargeError,
    TopicPartition,
    TransportError,
    UnknownTopicError,
)
from tidings._records import OutRecord, Record, Start
from tidings.backends.sqlite import SqliteTransport, from_url

CHILD = Path(__file__).with_name("sqlite_child.py")


class Quiet:
    """A rebalance listener that does nothing."""

    async def on_assigned(self, partitions: object) -> None: ...
    async def on_revoked(self, partitions: object) -> None: ...
    async def on_lost(self, partitions: object) -> None: ...


def run(tmp_path: Path, test: Callable[[SqliteTransport], Awaitable[None]],
        query: str = "") -> None:
    async def main() -> None:
        transport = from_url(f"sqlite:///{tmp_path}/bus.db{query}")
        await transport.start()
        try:
            await test(transport)
        finally:
            await transport.close()

    asyncio.run(main())


async def read_all(transport: SqliteTransport, topic: str) -> list[Record]:
    infos = {info.name: info for info in await transport.describe_topics()}
    records: list[Record] = []
    for partition in range(infos[topic].partitions):
        records += await transport.read(topic, partition, 0, 1_000_000)
    return records


def test_offsets_are_dense_and_keys_pick_partitions(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        before = time.time()
        keyed = await t.append([OutRecord("t", b"v%d" % i, key=f"k{i % 7}") for i in range(70)])
        for i, position in enumerate(keyed):
            assert position.partition == zlib.crc32(f"k{i % 7}".encode()) % 4
        per_partition = Counter(p.partition for p in keyed)
        for partition, count in per_partition.items():
            offsets = sorted(p.offset or 0 for p in keyed if p.partition == partition)
            assert offsets == list(range(count))
        unkeyed = await t.append([OutRecord("t", b"x") for _ in range(8)])
        assert Counter(p.partition for p in unkeyed) == dict.fromkeys(range(4), 2)
        pinned = await t.append([OutRecord("t", b"p", key="k1", partition=3)])
        assert pinned[0].partition == 3
        record = (await t.read("t", 3, pinned[0].offset or 0, 1))[0]
        assert (record.value, record.key, dict(record.headers)) == (b"p", "k1", {})
        assert before <= record.timestamp <= time.time()
        with pytest.raises(ConfigurationError, match="no partition 4"):
            await t.append([OutRecord("t", b"x", partition=4)])

    run(tmp_path, test)


def test_concurrent_appends_share_transactions_and_stay_dense(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        await t.ensure_topic("t", 1)
        headers = {"tidings-id": "abc", "trace": "é"}
        results = await asyncio.gather(
            *(t.append([OutRecord("t", b"%d" % i, headers=headers)]) for i in range(500))
        )
        offsets = sorted(r[0].offset or 0 for r in results)
        assert offsets == list(range(500))
        records = await t.read("t", 0, 0, 1000)
        assert [r.offset for r in records] == list(range(500))
        assert records[0].headers == headers
        # A bad caller in the same group commit fails alone.
        good, bad = await asyncio.gather(
            t.append([OutRecord("t", b"ok")]),
            t.append([OutRecord("t", b"no", partition=9)]),
            return_exceptions=True,
        )
        assert isinstance(bad, ConfigurationError)
        assert not isinstance(good, BaseException) and good[0].offset == 500

    run(tmp_path, test)


@pytest.mark.failover
def test_an_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    child = subprocess.Popen([sys.executable, str(CHILD), "produce", url, "t", "100000"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    with child.stdout:
        child.stdout.readline()  # ready
        acknowledged = [child.stdout.readline().split() for _ in range(300)]
        child.send_signal(signal.SIGKILL)
        child.wait()

    async def test(t: SqliteTransport) -> None:
        stored = {(r.partition, r.offset): r.value.decode() for r in await read_all(t, "t")}
        for partition, offset, value in acknowledged:
            assert stored[(int(partition), int(offset))] == value
        for info in await t.describe_topics():  # offsets stayed dense
            assert sum(info.end_offsets.values()) == len(stored)

    run(tmp_path, test)


def test_processes_appending_at_once_get_dense_distinct_offsets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    children = [
        subprocess.Popen([sys.executable, str(CHILD), "produce", url, "t", "300"],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    acknowledged = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        acknowledged += [tuple(line.split()) for line in out.splitlines()[1:]]
    assert len(acknowledged) == len(set((p, o) for p, o, _ in acknowledged)) == 900

    async def test(t: SqliteTransport) -> None:
        records = await read_all(t, "t")
        assert len(records) == 900
        by_partition = Counter(r.partition for r in records)
        for partition, count in by_partition.items():
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == list(range(count))

    run(tmp_path, test)


def test_admin_calls(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        assert await t.ensure_topic("a", 2) == 2
        assert await t.ensure_topic("a", 1) == 2  # fewer asked: fine
        assert await t.ensure_topic("a") == 2
        await t.append([OutRecord("a", b"1", partition=0)])
        await asyncio.sleep(0.05)
        middle = time.time()
        await asyncio.sleep(0.05)
        await t.append([OutRecord("a", b"2", partition=0), OutRecord("a", b"3", partition=1)])
        (info,) = await t.describe_topics()
        assert (info.name, info.partitions) == ("a", 2)
        assert (info.start_offsets, info.end_offsets) == ({0: 0, 1: 0}, {0: 2, 1: 1})
        assert await t.offsets_for_time("a", middle) == {0: 1, 1: 0}
        assert await t.offsets_for_time("a", time.time() + 1) == {0: 2, 1: 1}
        assert [r.value for r in await t.read("a", 0, 1, 10)] == [b"2"]
        for call in (t.read("nope", 0, 0, 1), t.offsets_for_time("nope", 0),
                     t.read("a", 5, 0, 1),
                     t.set_offsets("g", {TopicPartition("nope", 0): 0})):
            with pytest.raises(UnknownTopicError):
                await call
        with pytest.raises(ConfigurationError):
            await t.ensure_topic("b", 0)

    run(tmp_path, test)


def test_groupless_reads_from_beginning_or_from_now(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        await t.append([OutRecord("t", b"old", key="k")])
        everything = t.subscribe(None, ["t"], Quiet())
        recent = t.subscribe(None, ["t"], Quiet(), start=Start.LATEST)
        assert [r.value for r in await everything.fetch(10, 0.5)] == [b"old"]
        assert await recent.fetch(10, 0.05) == []
        await t.append([OutRecord("t", b"new", key="k")])
        assert [r.value for r in await recent.fetch(10, 1.0)] == [b"new"]
        await recent.commit({TopicPartition("t", 0): 5})  # a no-op without a group
        assert await t.describe_groups() == []
        await everything.close()
        await recent.close()
        await recent.close()

    run(tmp_path, test)


def test_a_delayed_record_survives_a_restart_and_fires_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"

    async def main() -> None:
        producer = from_url(url)
        await producer.start()
        (position,) = await producer.append(
            [OutRecord("t", b"later", key="k", deliver_at=time.time() + 0.6)]
        )
        assert (position.partition, position.offset) == (None, None)
        await producer.close()  # the scheduling process is gone before it is due
        first, second = from_url(url), from_url(url)
        await first.start()
        await second.start()
        reader = first.subscribe(None, ["t"], Quiet())
        assert await reader.fetch(10, 0.3) == []  # not before its time
        got = await reader.fetch(10, 3.0)
        assert [r.value for r in got] == [b"later"]
        await asyncio.sleep(1.2)  # both transports had every chance to move it again
        assert len(await read_all(second, "t")) == 1
        await first.close()
        await second.close()

    asyncio.run(main())


def test_retention_by_age(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        await t.ensure_topic("t", 1)
        await t.append([OutRecord("t", b"old%d" % i) for i in range(2500)])
        reader = t.subscribe(None, ["t"], Quiet())
        assert len(await reader.fetch(10, 1.0)) == 10  # reading from offset 0
        await asyncio.sleep(0.4)
        await t.append([OutRecord("t", b"new%d" % i) for i in range(5)])
        await t.apply_retention()
        (info,) = await t.describe_topics()
        assert (info.start_offsets, info.end_offsets) == ({0: 2500}, {0: 2505})
        below = await t.read("t", 0, 0, 2)  # below the start: continues from the start
        assert [r.offset for r in below] == [2500, 2501]
        rest = await reader.fetch(100, 1.0)  # its position (10) was deleted: skips ahead
        assert [r.value for r in rest] == [b"new%d" % i for i in range(5)]
        assert await t.apply_retention() == 0

    run(tmp_path, test, "?retention_hours=0.0001")  # 0.36 s


def test_retention_by_size(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        await t.ensure_topic("t", 2)
        await t.append([OutRecord("t", bytes(100), partition=0) for _ in range(50)])
        await t.append([OutRecord("t", bytes(100), partition=1) for _ in range(5)])
        await t.apply_retention()  # (it also runs at start, maybe concurrently)
        (info,) = await t.describe_topics()
        assert info.start_offsets == {0: 40, 1: 0}
        assert len(await t.read("t", 0, 0, 100)) == 10

    run(tmp_path, test, "?retention_bytes=1000&retention_hours=0")


def test_a_record_beyond_the_size_limit_is_refused_alone(tmp_path: Path) -> None:
    async def test(t: SqliteTransport) -> None:
        t.writer.appender.max_length = 100  # SQLite's real limit is ~1 GB
        with pytest.raises(MessageTooLargeError, match="101 bytes"):
            await t.append([OutRecord("t", b"ok"), OutRecord("t", bytes(101))])
        assert await t.describe_topics() == [] or all(
            sum(info.end_offsets.values()) == 0 for info in await t.describe_topics()
        )

    run(tmp_path, test)


def test_closed_transport_refuses_work(tmp_path: Path) -> None:
    async def main() -> None:
        t = from_url(f"sqlite:///{tmp_path}/bus.db")
        await t.append([OutRecord("t", b"x")])  # starts on first use
        await t.close()
        with pytest.raises(TransportError, match="closed"):
            await t.append([OutRecord("t", b"x")])
        with pytest.raises(TransportError, match="closed"):
            t.subscribe(None, ["t"], Quiet())

    asyncio.run(main())
