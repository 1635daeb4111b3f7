"""Failover of the embedded bus (``sqlite://``): the process holding SQLite's write lock
is SIGKILLed in the middle of big batches while another process reads.

The writer (this module run as ``python test_embedded_crash.py write URL TOPIC FIRST``)
appends batches of ``BATCH`` records, one ``append`` call each, and says each batch once
the call returned. The reader (``... read URL TOPIC``) reads the partition to its end
over and over and says each batch it sees, or ``torn`` if it ever sees part of one. A
batch is one SQLite transaction, so a reader sees all of it or none, and a returned
append survives the kill. (A power cut is another matter: with ``synchronous=NORMAL``
the last commits may be lost; see docs/broker-outages.md.)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tidings._backends import load_transport
from tidings._records import OutRecord

pytestmark = [pytest.mark.failover, pytest.mark.timeout(120)]

BATCH = 2000
PAD = b"x" * 200
ROUNDS = 4


def _say(**data: object) -> None:
    print(json.dumps(data), flush=True)


def _value(batch: int, index: int) -> bytes:
    return f"{batch}:{index}:{BATCH}:".encode() + PAD


async def _write(url: str, topic: str, first: int) -> None:
    transport = load_transport(url)
    await transport.start()
    _say(ready=True)
    batch = first
    while True:
        await transport.append([OutRecord(topic, _value(batch, i), partition=0)
                                for i in range(BATCH)])
        _say(acked=batch)
        batch += 1


def _torn(values: list[bytes]) -> str:
    """Why ``values`` (records read from a batch boundary to the end) is not a run of
    whole batches, or ""."""
    index = 0
    while index < len(values):
        batch, first, size = (int(part) for part in values[index].split(b":")[:3])
        if first != 0:
            return f"batch {batch} starts at record {first}"
        whole = values[index:index + size]
        expected = [_value(batch, i) for i in range(size)]
        if whole != expected:
            return f"batch {batch}: {len(whole)} of {size} records visible"
        index += size
    return ""


async def _read(url: str, topic: str) -> None:
    transport = load_transport(url)
    await transport.start()
    _say(ready=True)
    offset = 0  # always at a batch boundary
    while True:
        values = [r.value for r in await transport.read(topic, 0, offset, 1_000_000)]
        why = _torn(values)
        if why:
            _say(torn=why, offset=offset)
        index = 0
        while index + BATCH <= len(values) and not _torn(values[index:index + BATCH]):
            _say(seen=int(values[index].split(b":")[0]))
            index += BATCH
        offset += index
        await asyncio.sleep(0.001)


def _spawn(role: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, __file__, role, *args],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = json.loads(process.stdout.readline() or "{}")
    assert line.get("ready"), f"the {role} did not start"
    return process


def _available(process: subprocess.Popen[str], timeout: float) -> list[dict[str, object]]:
    """The lines ``process`` printed within ``timeout`` seconds (all complete lines in
    one read; fewer than asked for if it exits or stays silent)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    if not select.select([fd], [], [], max(timeout, 0))[0]:
        return []
    chunk = os.read(fd, 1 << 20).decode()
    if not chunk:
        raise AssertionError(f"the reader exited ({process.wait()})")
    _partial[fd] = _partial.get(fd, "") + chunk
    *complete, _partial[fd] = _partial[fd].split("\n")
    return [json.loads(line) for line in complete if line.startswith("{")]


_partial: dict[int, str] = {}


def _lines(process: subprocess.Popen[str]) -> list[dict[str, object]]:
    assert process.stdout is not None
    return [json.loads(line) for line in process.stdout if line.startswith("{")]


def test_a_writer_killed_mid_batch_loses_no_acknowledged_batch_and_no_reader_sees_half(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    topic = f"batches-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        transport = load_transport(url)
        await transport.start()
        await transport.ensure_topic(topic, 1)
        await transport.close()

    asyncio.run(create())
    reader = _spawn("read", url, topic)
    acked: list[int] = []
    try:
        for round_ in range(ROUNDS):
            writer = _spawn("write", url, topic, str(round_ * 1_000_000))
            assert writer.stdout is not None
            for _ in range(3):  # three whole batches, then a kill anywhere in the next
                acked.append(json.loads(writer.stdout.readline())["acked"])
            time.sleep(random.uniform(0, 0.05))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            acked += [int(line["acked"]) for line in _lines(writer)]  # type: ignore[call-overload]
            writer.stdout.close()

        async def stored() -> list[bytes]:
            transport = load_transport(url)
            await transport.start()
            try:
                return [r.value for r in await transport.read(topic, 0, 0, 10_000_000)]
            finally:
                await transport.close()

        values = asyncio.run(stored())
        batches = {int(values[i].split(b":")[0]) for i in range(0, len(values), BATCH)}
        seen: set[int] = set()
        torn: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while seen < batches and time.monotonic() < deadline:  # the reader catches up
            for line in _available(reader, deadline - time.monotonic()):
                if "torn" in line:
                    torn.append(line)
                elif "seen" in line:
                    seen.add(int(line["seen"]))  # type: ignore[call-overload]
    finally:
        reader.kill()
        reader.wait()
        if reader.stdout is not None:
            reader.stdout.close()

    unacknowledged = sorted(batches - set(acked))
    print(f"\nembedded bus, writer SIGKILLed {ROUNDS} times mid-run: {len(acked)} batches "
          f"of {BATCH} acknowledged, {len(batches)} stored ({len(unacknowledged)} "
          f"committed but killed before the caller heard), reader saw {len(seen)}, "
          f"torn {len(torn)}")
    assert _torn(values) == ""  # every stored batch is whole
    assert set(acked) <= batches, f"acknowledged batches lost: {sorted(set(acked) - batches)}"
    assert torn == []
    assert seen == batches


if __name__ == "__main__":
    role, url, topic, *rest = sys.argv[1:]
    if role == "write":
        asyncio.run(_write(url, topic, int(rest[0])))
    else:
        asyncio.run(_read(url, topic))
