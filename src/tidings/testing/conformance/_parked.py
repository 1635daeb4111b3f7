"""Parked keys: non-blocking retries (durable attempt and due time, the partition's
commits go on, the key keeps its order) and dead letters that park their key until
re-driven or purged. They need a log to read back (``replay``): elsewhere refused."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from ... import App, Message, RetryPolicy
from ..._parklog import park_topic
from ..._records import OutRecord
from ...ports import Capability
from .. import crash
from ._backend import Backend
from ._failures import two_keys_on_one_partition
from ._requires import requires
from ._retry_member import build
from ._util import Names, eventually, wait_letters


def _policy(backoff: float, attempts: int = 5) -> RetryPolicy:
    """Non-blocking: each failed attempt waits ``backoff`` seconds, parked."""
    return RetryPolicy(max_attempts=attempts, backoff=backoff, multiplier=1.0, jitter=0,
                       blocking=False)


async def _lag(app: App, topic: str) -> int:
    return sum(p.lag for p in await app.lag() if p.topic == topic)


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY, Capability.REPLAY)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_non_blocking_retry_lets_the_partition_commit_and_keeps_its_key_in_order(
        backend: Backend, names: Names, concurrency: int) -> None:
    """Spring's retry topics without their loss of order: while ``slow`` 0 waits for its
    retry, the partition's other keys are handled and committed (its lag reaches 0),
    and ``slow``'s later records (fetched before the failure and after) wait behind
    it, in order."""
    topic = names("nonblocking")
    # (key, seq): attempts that fail
    failures: dict[tuple[str | None, int], int] = {("slow", 0): 2, ("slow", 2): 1}

    async def main() -> None:
        app, handled, publish = two_keys_on_one_partition(
            backend, topic, concurrency, _policy(2.0), failures)
        async with app:
            started = time.monotonic()
            await publish(range(3))
            await eventually(lambda: ("fast", 2) in handled, what="the other key went on")
            await publish(range(3, 5))  # fetched while "slow" 0 waits for its retry
            await eventually(lambda: ("fast", 4) in handled, what="the other key went on")
            lag = -1  # the whole partition committed (slow's records parked) before...
            while lag and ("slow", 0) not in handled and time.monotonic() - started < 30:
                lag = await _lag(app, topic)
                await asyncio.sleep(0.05)
            # ... slow 0 succeeded (at its third attempt, 2 backoffs of 2 s later)
            assert ("slow", 0) not in handled, "the partition's commits waited for the retry"
            assert lag == 0, "the partition's commits did not reach its end"
            await eventually(lambda: len(handled) == 10, 20, what="every record handled")
        assert [seq for key, seq in handled if key == "slow"] == [0, 1, 2, 3, 4]
        assert [seq for key, seq in handled if key == "fast"] == [0, 1, 2, 3, 4]

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)
def test_a_crash_during_a_retry_backoff_resumes_at_the_stored_time_and_attempt(
        backend: Backend, names: Names) -> None:
    """SIGKILL while a message waits for its retry: the next member runs it at the time
    and attempt number the first one stored, not at once and not from attempt 1."""
    topic, group = names("backoff"), names("retriers")
    backoff = 3.0
    outfile = backend.tmp / "attempts.jsonl"
    args = (backend.url, topic, group, str(outfile), "2", str(backoff))

    def attempts() -> list[dict[str, Any]]:
        text = outfile.read_text() if outfile.exists() else ""
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    async def start() -> subprocess.Popen[bytes] | App:
        if not backend.multiprocess:
            app = build(*args[:4], 2, backoff)
            await app.start()
            return app
        command = [sys.executable, "-m", "tidings.testing.conformance._retry_member", *args]
        with open(backend.tmp / "members.log", "ab") as log:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        proc.stdout.close()
        assert line.strip() == b"ready", line
        return proc

    async def kill(member: subprocess.Popen[bytes] | App) -> None:
        if isinstance(member, App):
            crash(member)
        else:
            member.kill()
            await asyncio.to_thread(member.wait)

    async def main() -> None:
        admin = backend.app("admin")
        async with admin:
            await admin.transport.ensure_topic(topic, 1)
            first = await start()
            await admin.publish(topic, {"n": 1}, key="k")
            await eventually(lambda: len(attempts()) == 1, 30, "attempt 1")
            # parked (and the original committed) before the crash
            await eventually_async(lambda: _parked_count(admin, group), 15)
            await kill(first)
            second = await start()
            try:
                await eventually(lambda: len(attempts()) >= 3, 40, "attempts 2 and 3")
                await asyncio.sleep(0.5)
            finally:
                await kill(second) if isinstance(second, App) else _stop(second)
        seen = attempts()
        assert [a["attempt"] for a in seen] == [1, 2, 3], seen
        assert seen[1]["at"] - seen[0]["at"] >= backoff * 0.95, "retried at once after the crash"
        # (the upper bound leaves room for a crashed Kafka member's session to expire)
        assert seen[1]["at"] - seen[0]["at"] < backoff + 60, "the stored time was not kept"
        if backend.multiprocess:
            assert seen[0]["pid"] != seen[1]["pid"]

    asyncio.run(main())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


async def _parked_count(app: App, group: str) -> int:
    from ..._parklog import read_parked

    return len(await read_parked(app.transport, group))


async def eventually_async(check: Any, timeout: float) -> None:
    """Wait until the coroutine ``check()`` gives something true."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        await asyncio.sleep(0.05)


def _park_key_app(backend: Backend, topic: str, state: dict[str, bool],
                  handled: list[tuple[str | None, int]], concurrency: int = 1,
                  retry: RetryPolicy | None = None) -> App:
    app = backend.app("svc")

    # One partition: a re-drive appends by key, so the key's partition must be its own.
    @app.subscriber(topic, retry=retry or RetryPolicy.never(), dead_letter="park-key",
                    partitions=1, concurrency=concurrency)
    async def handle(payload: dict[str, Any], message: Message) -> None:
        if payload["seq"] == 0 and message.key == "bad" and not state["fixed"]:
            raise RuntimeError("bug")
        handled.append((message.key, payload["seq"]))

    return app


async def _publish_bad_and_good(app: App, topic: str) -> None:
    for seq in range(3):
        await app.publish(topic, {"seq": seq}, key="bad")
        await app.publish(topic, {"seq": seq}, key="good")


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY, Capability.REPLAY)
@pytest.mark.parametrize(("concurrency", "retry"), [
    (1, RetryPolicy.never()),
    (4, RetryPolicy(max_attempts=2, backoff=0.2, jitter=0)),  # blocking, then dead
    (4, RetryPolicy(max_attempts=2, backoff=0.2, jitter=0, blocking=False)),
], ids=["never", "blocking", "non-blocking"])
def test_park_key_holds_the_key_behind_its_dead_letter_until_it_is_redriven(
        backend: Backend, names: Names, concurrency: int, retry: RetryPolicy) -> None:
    """``dead_letter="park-key"``: the key's later messages wait behind its dead letter
    (the other keys go on); once re-driven, it runs first, then they follow in order."""
    topic = names("parkkey")

    async def main() -> None:
        state = {"fixed": False}
        handled: list[tuple[str | None, int]] = []
        app = _park_key_app(backend, topic, state, handled, concurrency, retry)
        async with app:
            await _publish_bad_and_good(app, topic)
            await wait_letters(app, topic, 1)
            await eventually(lambda: ("good", 2) in handled, what="the other key went on")
            await asyncio.sleep(0.5)
            assert [h for h in handled if h[0] == "bad"] == [], "bad 1 overtook its dead letter"
            await app.publish(topic, {"seq": 3}, key="bad")
            await asyncio.sleep(0.3)
            assert [h for h in handled if h[0] == "bad"] == []
            state["fixed"] = True
            assert await app.dead_letters(topic).redrive() == 1
            await eventually(lambda: len([h for h in handled if h[0] == "bad"]) == 4,
                             what="the re-driven message and the ones behind it")
            assert await _parked_count(app, app.name) == 0
        assert [seq for key, seq in handled if key == "bad"] == [0, 1, 2, 3]

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY, Capability.REPLAY)
def test_park_key_releases_the_key_when_its_dead_letter_is_purged(
        backend: Backend, names: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    """A purged dead letter lets its key's parked messages go on, in order."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.2)
    topic = names("purgekey")

    async def main() -> None:
        handled: list[tuple[str | None, int]] = []
        app = _park_key_app(backend, topic, {"fixed": False}, handled)
        async with app:
            await _publish_bad_and_good(app, topic)
            await wait_letters(app, topic, 1)
            await eventually(lambda: ("good", 2) in handled, what="the other key went on")
            await asyncio.sleep(0.5)
            assert [h for h in handled if h[0] == "bad"] == []
            assert await app.dead_letters(topic).purge() == 1
            await eventually(lambda: len([h for h in handled if h[0] == "bad"]) == 2,
                             what="the parked messages after the purge")
        assert [seq for key, seq in handled if key == "bad"] == [1, 2]

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)
def test_a_parked_key_whose_dead_letter_is_gone_is_released_with_a_warning(
        backend: Backend, names: Names, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Bad input: the park log names a dead letter that the dead-letter topic does not
    hold (deleted by hand): the key is released with a warning, never stuck."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.2)
    topic = names("gone")

    async def main() -> None:
        handled: list[tuple[str | None, int]] = []
        app = _park_key_app(backend, topic, {"fixed": False}, handled)
        # The key's dead letter was the topic's first message (offset 0).
        dead = {"tidings-park-id": f"{topic}/0/0", "tidings-park-attempt": "1",
                "tidings-park-due": "0"}
        parked = {**dead, "tidings-park-event": "park", "tidings-park-topic": topic,
                  "tidings-park-partition": "0", "tidings-park-offset": "0",
                  "tidings-park-key": "lost", "tidings-park-timestamp": "0"}
        admin = backend.app("admin")
        async with admin:
            await admin.transport.ensure_topic(topic, 1)
            # Its original, at offset 0: already parked, so not run again.
            await admin.publish(topic, {"seq": 0}, key="lost")
            await admin.transport.append([
                OutRecord(park_topic(app.name), b'{"seq":0}', key="lost", headers=parked,
                          partition=0),
                OutRecord(park_topic(app.name), b"", key="lost", partition=0,
                          headers={**dead, "tidings-park-event": "dead"}),
            ])
        with caplog.at_level(logging.WARNING, "tidings.consumer"):
            async with app:
                await app.publish(topic, {"seq": 1}, key="lost")
                await eventually(lambda: ("lost", 1) in handled, what="the key released")
        assert handled == [("lost", 1)]
        assert any("gone from" in r.getMessage() for r in caplog.records)

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.REPLAY)
def test_a_parked_retry_moves_with_its_partition_to_another_member(
        backend: Backend, names: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that leaves while a message waits for its retry hands its partitions
    over; the member that gets them runs the message once, at the stored attempt and
    time (not at once, not from attempt 1), with its payload: the other member read the
    park log meanwhile and left the value there, so it reads it back (``transport.read``
    at the event's offset). Both members join before the message is published, so the
    backoff is not spent waiting for a rebalance."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.2)
    monkeypatch.setattr("tidings._parking.CATCH_UP_INTERVAL", 0.0)
    topic = names("handover")
    backoff = 5.0

    payloads: list[dict[str, Any]] = []

    async def main() -> None:
        attempts: list[tuple[str, int, float]] = []

        def member(name: str) -> App:
            app = backend.app("svc")

            @app.subscriber(topic, retry=_policy(backoff), partitions=1)
            async def handle(payload: dict[str, Any], message: Message) -> None:
                attempts.append((name, message.attempt, time.time()))
                payloads.append(payload)
                if message.attempt == 1:
                    raise ConnectionError("first attempt fails")

            return app

        members = {"first": member("first"), "second": member("second")}
        async with members["first"], members["second"]:
            await members["first"].publish(topic, {"n": 1, "pad": "x" * 2000}, key="k")
            await eventually(lambda: len(attempts) == 1, 20, "attempt 1")
            owner = members[attempts[0][0]]
            await eventually_async(lambda: _parked_count(owner, owner.name), 15)
            await asyncio.sleep(1.0)  # the other member reads the park log meanwhile
            await owner.stop()  # leaves: its partition goes to the other member
            await eventually(lambda: len(attempts) == 2, 30, "attempt 2")
            await asyncio.sleep(0.5)
        assert [attempt for _, attempt, _ in attempts] == [1, 2], attempts
        assert attempts[0][0] != attempts[1][0], attempts
        assert attempts[1][2] - attempts[0][2] >= backoff * 0.95
        # The other member left the message's value in the park log; it read it back.
        assert payloads == [{"n": 1, "pad": "x" * 2000}] * 2

    asyncio.run(main())
