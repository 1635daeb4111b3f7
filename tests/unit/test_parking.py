"""Parked keys: declarations refused when they cannot work, the park log's events
applied idempotently (a member re-reads its own) and in order, and refreshed so that
retention of the park log forgets nothing (on the memory backend)."""

from __future__ import annotations

import asyncio

import pytest

from tidings import App, ConfigurationError, Message, RetryPolicy
from tidings._dlqscan import DeadLetterScan
from tidings._parklog import Parked, ParkIndex, entry_id, event_partition, park_topic, read_log
from tidings._parklog import event_record as _event
from tidings._records import OutRecord, Record, TopicPartition
from tidings.testing import memory_url


async def _noop(payload: dict[str, int]) -> None: ...


async def _batch(payloads: list[dict[str, int]]) -> None: ...


def test_the_default_policy_blocks_and_dead_letters_skip() -> None:
    assert RetryPolicy().blocking is True
    app = App("svc", broker=memory_url())
    app.subscriber("t")(_noop)
    spec = app._subscribers[0].consumer_spec(app)
    assert not spec.park and not spec.park_dead


@pytest.mark.parametrize(("options", "message"), [
    ({"dead_letter": "park"}, "'skip' or 'park-key'"),
    ({"dead_letter": "park-key", "batch": True}, "cannot park keys"),
    ({"retry": RetryPolicy(blocking=False), "exactly_once": True}, "cannot park keys"),
])
def test_what_cannot_park_is_refused_when_declared(options: dict[str, object],
                                                    message: str) -> None:
    app = App("svc", broker=memory_url())
    with pytest.raises(ConfigurationError, match=message):
        app.subscriber("t", **options)(_batch if options.get("batch") else _noop)  # type: ignore[arg-type]


def _record(offset: int, key: str | None = "k") -> Record:
    return Record("t", 0, offset, key, b"{}", {"h": "v"}, 1.0)


def _as_read(out: object, offset: int) -> Record:
    """An appended event as a reader gets it back."""
    return Record("tidings.parked.g", 0, offset, out.key, out.value,  # type: ignore[attr-defined]
                  dict(out.headers), 2.0)  # type: ignore[attr-defined]


def test_events_apply_in_order_and_twice_change_nothing() -> None:
    head = Parked("t/0/1", _record(1), 2, 50.0)
    follower = Parked("t/0/3", _record(3), 1, 0.0)
    events = [_event("g", "park", head, full=True), _event("g", "park", follower, full=True)]
    head.attempt, head.due = 3, 80.0
    events.append(_event("g", "attempt", head))
    index = ParkIndex()
    for _ in range(2):  # a member reads its own events back: idempotent
        for n, out in enumerate(events):
            index.apply(_as_read(out, n))
    lane = index.lanes[TopicPartition("t", 0)]["k"]
    assert [(e.id, e.attempt, e.due) for e in lane] == [("t/0/1", 3, 80.0), ("t/0/3", 1, 0.0)]
    assert lane[0].record == _record(1)  # the original record, its headers unprefixed
    index.apply(_as_read(_event("g", "done", head), 9))
    index.apply(_as_read(events[0], 0))  # a finished entry's old park event: ignored
    assert [e.id for e in index.lanes[TopicPartition("t", 0)]["k"]] == ["t/0/3"]
    index.apply(_as_read(_event("g", "done", follower), 10))
    assert index.lanes[TopicPartition("t", 0)] == {}  # an empty lane goes: the key is free


def test_a_message_without_a_key_is_a_lane_of_its_own() -> None:
    a, b = Parked("t/0/1", _record(1, None), 2, 0.0), Parked("t/0/2", _record(2, None), 2, 0.0)
    assert a.lane != b.lane


def test_a_lane_keeps_offset_order_whatever_order_its_events_are_read_in() -> None:
    index = ParkIndex()
    for offset in (5, 2, 9):  # refreshed events can come after later ones
        entry = Parked(f"t/0/{offset}", _record(offset), 1, 0.0)
        index.apply(_as_read(_event("g", "park", entry, full=True), offset))
    assert [e.id for e in index.lanes[TopicPartition("t", 0)]["k"]] == \
        ["t/0/2", "t/0/5", "t/0/9"]


def test_parked_state_is_written_again_so_retention_of_the_park_log_forgets_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A parked message waits as long as it must, longer than the park log's retention:
    its whole state is written again once a day, so the newest events alone tell it."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.05)
    monkeypatch.setattr("tidings._parking.REFRESH_INTERVAL", 0.0)

    async def main() -> None:
        app = App("svc", broker=memory_url())

        @app.subscriber("t", retry=RetryPolicy(backoff=600, max_backoff=600, blocking=False))
        async def handle(payload: dict[str, int], message: Message) -> None:
            raise ConnectionError("down")

        async with app:
            monkeypatch.setattr("tidings._parking.REFRESH_AGE", 3600.0)
            for n in range(3):
                await app.publish("t", {"n": n}, key="k")
            _, end = await _read_until(app, 0, 3)
            monkeypatch.setattr("tidings._parking.REFRESH_AGE", 0.0)  # a day went by
            # What retention would leave: only the events written since.
            newest, _ = await _read_until(app, end, 3)
        [lanes] = newest.lanes.values()
        assert [(e.record.value, e.attempt) for e in lanes["k"]] == \
            [(b'{"n":0}', 2), (b'{"n":1}', 1), (b'{"n":2}', 1)]
        assert lanes["k"][0].due > 0

    asyncio.run(main())


async def _read_until(app: App, start: int, count: int) -> tuple[ParkIndex, int]:
    """The park log of ``app`` read from ``start`` once it tells ``count`` entries, and
    the offset after what was read."""
    for _ in range(200):
        index = ParkIndex()
        end = await read_log(app.transport, park_topic("svc"), start, index.apply)
        if len(index.entries) >= count:
            return index, end
        await asyncio.sleep(0.05)
    raise AssertionError(f"the park log never told {count} entries")


def test_finished_entries_are_forgotten_once_a_later_read_reached_the_logs_end() -> None:
    """An entry finished before a read of the park log began has all its events before
    that read's end: once the read is done, nothing behind it can bring the entry back."""
    index = ParkIndex()
    a, b = Parked("t/0/1", _record(1), 1, 0.0), Parked("t/0/2", _record(2), 1, 0.0)
    index.add(a)
    index.add(b)
    index.finish(a.id)  # before the read began
    generation = index.begin_read()
    index.finish(b.id)  # during it: its "done" may lie past the read's end
    index.read_done(generation)
    assert set(index.finished) == {"t/0/2"}
    index.apply(_as_read(_event("g", "park", b, full=True), 7))  # still refused
    assert "t/0/2" not in index.entries
    index.read_done(index.begin_read())
    assert index.finished == {}


def test_a_member_forgets_the_entries_it_finished_and_runs_none_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running member whose partitions never change reads the park log now and
    then: its finished entries are forgotten (memory stays bounded), and no message
    runs again."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.05)
    monkeypatch.setattr("tidings._parking.CATCH_UP_INTERVAL", 0.0)

    async def main() -> None:
        app = App("svc", broker=memory_url())
        runs: dict[int, int] = {}

        @app.subscriber("t", retry=RetryPolicy(backoff=0.01, blocking=False))
        async def handle(payload: dict[str, int], message: Message) -> None:
            runs[payload["n"]] = runs.get(payload["n"], 0) + 1
            if runs[payload["n"]] == 1:
                raise ConnectionError("down")  # parked, then retried once

        async with app:
            for n in range(30):
                await app.publish("t", {"n": n}, key=f"k{n % 3}")
            [consumer] = app._consumers
            parking = consumer.parking
            assert parking is not None
            for _ in range(400):
                if len(runs) == 30 and min(runs.values()) == 2 and not parking._index.entries:
                    break
                await asyncio.sleep(0.05)
            for _ in range(400):  # the periodic read forgets them
                if not parking._index.finished:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # more periodic reads: nothing comes back
            assert parking._index.entries == {} and parking._index.finished == {}
        assert runs == dict.fromkeys(range(30), 2)

    asyncio.run(main())


def test_an_event_tells_the_partition_of_its_message() -> None:
    entry = Parked("orders.v2/3/17", Record("orders.v2", 3, 17, "k", b"{}", {}, 1.0), 1, 0.0)
    for kind in ("park", "attempt", "dead", "done"):
        event = _as_read(_event("g", kind, entry, full=kind == "park"), 0)
        assert event_partition(event) == TopicPartition("orders.v2", 3)
    assert event_partition(Record("p", 0, 0, None, b"", {}, 1.0)) is None


def test_the_dead_letter_check_forgets_what_no_longer_waits() -> None:
    """What the check keeps per dead head (since when its re-drive is awaited) and per
    topic (what it read of the dead-letter topic) goes once no head waits there."""
    async def main() -> None:
        app = App("svc", broker=memory_url())
        app.subscriber("t", dead_letter="park-key")(_noop)
        async with app:
            [consumer] = app._consumers
            parking = consumer.parking
            assert parking is not None
            parking._redriven_since["t/0/1"] = 1.0  # a head released since
            parking._scans["t"] = DeadLetterScan("t")
            await parking.check_dead()
            assert parking._redriven_since == {} and parking._scans == {}

    asyncio.run(main())


def test_members_keep_the_values_of_parked_messages_only_for_their_own_partitions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member reads the whole park log, but holds the values (and headers) of the
    parked messages of the partitions it owns only; the others stay in the log, by
    their offset there. A member that gets a partition reads them back before its
    lanes run, and each message then runs with its own payload."""
    monkeypatch.setattr("tidings._parking.CHECK_INTERVAL", 0.05)
    monkeypatch.setattr("tidings._parking.CATCH_UP_INTERVAL", 0.0)
    pad = "x" * 5000

    async def main() -> None:
        url = memory_url()
        failing = True
        handled: dict[int, dict[str, object]] = {}
        members = []
        for _ in range(2):
            app = App("svc", broker=url)

            @app.subscriber("t", partitions=4,
                            retry=RetryPolicy(max_attempts=1000, backoff=0.2, blocking=False))
            async def handle(payload: dict[str, object], message: Message) -> None:
                if failing:
                    raise ConnectionError("down")  # parked, retried every 0.2 s
                handled[int(payload["n"])] = {**payload, "header": message.headers["h"]}  # type: ignore[call-overload]

            members.append(app)
        first, second = members
        async with first, second:
            for _ in range(200):
                if all(app._consumers[0].partitions() for app in members):
                    break
                await asyncio.sleep(0.05)
            for n in range(40):
                await first.publish("t", {"n": n, "pad": pad}, key=f"k{n}",
                                    headers={"h": f"v{n}"})

            def index(app: App) -> ParkIndex:
                parking = app._consumers[0].parking
                assert parking is not None
                return parking._index

            for _ in range(400):
                if all(len(index(app).entries) == 40 and
                       not any(e.at < 0 for e in index(app).entries.values())
                       for app in members):
                    break
                await asyncio.sleep(0.05)
            for app in members:
                owned = {p.tp for p in app._consumers[0].partitions()}
                entries = list(index(app).entries.values())
                assert len(entries) == 40
                mine = [e for e in entries
                        if TopicPartition(e.record.topic, e.record.partition) in owned]
                others = [e for e in entries if e not in mine]
                assert mine and others
                assert all(not e.hollow and len(e.record.value) > 5000 for e in mine)
                assert all(e.hollow and e.record.value == b"" and not e.record.headers
                           for e in others)
            await first.stop()  # its partitions, and their parked messages, go over
            failing = False
            for _ in range(400):
                if len(handled) == 40:
                    break
                await asyncio.sleep(0.05)
        assert handled == {n: {"n": n, "pad": pad, "header": f"v{n}"} for n in range(40)}

    asyncio.run(main())


def test_parked_lanes_run_at_most_concurrency_handlers_at_once() -> None:
    """Eight keys parked at once are due together: their lanes take turns for the
    subscriber's ``concurrency`` slots rather than running eight handlers at once."""
    async def main() -> None:
        app = App("svc", broker=memory_url())
        running = peak = 0
        retried: list[int] = []

        @app.subscriber("t", concurrency=2,
                        retry=RetryPolicy(max_attempts=3, backoff=0.05, blocking=False))
        async def handle(payload: dict[str, int], message: Message) -> None:
            nonlocal running, peak
            if message.attempt == 1:
                raise ConnectionError("down")  # parked; due 0.05 s later, all together
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(0.1)
            finally:
                running -= 1
            retried.append(payload["n"])

        async with app:
            await app.publish_many("t", [{"n": n} for n in range(8)], key=lambda p: f"k{p['n']}")
            for _ in range(200):
                if len(retried) == 8:
                    break
                await asyncio.sleep(0.05)
        assert sorted(retried) == list(range(8))
        assert peak == 2, peak

    asyncio.run(main())


def test_a_parked_record_the_park_log_lost_is_read_again_from_its_topic(
        caplog: pytest.LogCaptureFixture) -> None:
    """A hollow entry (its value left in the park log) whose park event retention
    deleted is filled from the topic it was read from; if that lost it too, it is said
    as an error, not passed over."""
    from tidings._parklog import fill
    from tidings.backends.memory import from_url

    async def main() -> None:
        transport = from_url(memory_url())
        await transport.ensure_topic("t", 1)
        await transport.ensure_topic(park_topic("g"), 1)
        [pos] = await transport.append([OutRecord("t", b'{"n": 7}', key="k",
                                                  headers={"h": "v"}, partition=0)])
        kept = Parked(entry_id(Record("t", 0, pos.offset, "k", b"", {}, 0.0)),
                      Record("t", 0, pos.offset, "k", b"", {}, 0.0), 2, 0.0,
                      at=3, hollow=True)
        gone = Parked("t/0/99", Record("t", 0, 99, "k", b"", {}, 0.0), 2, 0.0,
                      at=4, hollow=True)
        with caplog.at_level("WARNING", logger="tidings.consumer"):
            await fill(transport, park_topic("g"), [kept, gone])
        assert not kept.hollow
        assert (kept.record.value, kept.record.headers["h"]) == (b'{"n": 7}', "v")
        assert gone.hollow and gone.record.value == b""
        assert any(r.levelname == "ERROR" and "t/0/99" in r.getMessage()
                   for r in caplog.records)

    asyncio.run(main())
