"""``App``: one service's connection to the bus."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, tzinfo
from typing import Any, TypeVar, overload

from ._backends import load_transport
from ._batch import batch_process
from ._capabilities import refuse_delay, require_capabilities
from ._codec import decoder_for
from ._consumer import DEFAULT_MAX_IN_FLIGHT_BYTES, Consumer
from ._cron import CatchUp, cron
from ._dlq import DeadLetters
from ._errors import ConfigurationError, NotRunningError, RemoteError, TransportError
from ._handler import inspect_handler
from ._lag import Health, PartitionLag, group_lag
from ._message import Headers, Outgoing, Published, PublishedMany
from ._middleware import AppendCall, AppendNext, Middleware, append_chain, check_middleware
from ._outgoing import Delay, check_name, make_record, make_records
from ._process import Runtime, message_process
from ._records import OutRecord, Position, Start
from ._reply import REPLIES_TOPIC, ReplyListener
from ._retry import RetryPolicy
from ._subscriber import Role, SubscriberSpec
from ._transaction import hold
from ._workqueue import PRIORITIES, queue_group, queue_topics
from .ports import Transport

__all__ = ["DEFAULT_BROKER", "App"]

DEFAULT_BROKER = "sqlite:///.tidings/bus.db"
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger("tidings")
#: Appends an exactly-once handler holds for its commit: what it publishes, and its
#: dead letters; a request (it waits for the reply) or a re-drive goes out at once.
_HELD = frozenset({"publish", "dead-letter"})


class App:
    """One service's connection to the bus.

    ``broker`` is a URL (``sqlite:///path``, ``memory://name``, ``kafka://host:port``)
    or a :class:`~tidings.ports.Transport`; it defaults to ``$TIDINGS_BROKER``, else
    ``sqlite:///.tidings/bus.db``. Subscribers run, and the app can publish, inside
    ``async with app:``, which returns once every subscriber has joined its group (at
    most ``join_timeout`` seconds). Subscribers join the consumer group named after the
    app unless they name another. Each subscriber holds at most ``max_in_flight_bytes``
    of fetched, unfinished messages (default 64 MiB; one larger message is still
    handled, alone) unless it sets its own. ``middleware`` wraps every handler call and every
    append (see :class:`~tidings.Middleware`); more can be added with
    :meth:`add_middleware` before the app starts.
    """

    def __init__(
        self,
        name: str,
        broker: str | Transport | None = None,
        *,
        retry: RetryPolicy | None = None,
        shutdown_timeout: float = 30.0,
        join_timeout: float = 30.0,
        middleware: Sequence[Middleware] = (),
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
    ) -> None:
        self.name = check_name("app", name)
        self.max_in_flight_bytes = max_in_flight_bytes
        if isinstance(broker, Transport):
            self._transport: Transport = broker
            self.broker = type(broker).__name__
        else:
            self.broker = broker or os.environ.get("TIDINGS_BROKER") or DEFAULT_BROKER
            self._transport = load_transport(self.broker)
        self.retry = retry or RetryPolicy()
        self.shutdown_timeout = shutdown_timeout
        self.join_timeout = join_timeout
        self.instance_id = f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._subscribers: list[SubscriberSpec] = []
        self._consumers: list[Consumer] = []
        self._replies = ReplyListener(self._transport, self.instance_id,
                                      lambda outs: self._emit(outs, "request"))
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._running = False  # started and not stopping
        self._open = False  # the transport is connected: publishing is allowed
        self._middlewares: list[Middleware] = []
        self._publishes: list[tuple[str, Any]] = []  # (topic, payload type), for AsyncAPI
        self._typed: set[tuple[str, type]] = set()  # (topic, type) seen in publish calls
        self._redescribe: asyncio.TimerHandle | None = None
        self._describing: set[asyncio.Task[None]] = set()
        self._described = 0
        self._append_next: AppendNext | None = None
        for each in middleware:
            self.add_middleware(each)

    @property
    def running(self) -> bool:
        """Whether the app has started and is not shutting down."""
        return self._running

    @property
    def transport(self) -> Transport:
        """The backend this app talks to (for admin calls)."""
        return self._transport

    @property
    def system(self) -> str:
        """The messaging system's name (``sqlite``, ``memory``, ``kafka``, ...)."""
        return self._transport.system

    # -- declarations ----------------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware inside those added before (see :class:`~tidings.Middleware`).
        A middleware of the wrong shape is refused here with the expected signature."""
        check_middleware(middleware)
        if self._running:
            raise ConfigurationError("add middleware before the app starts")
        self._middlewares.append(middleware)
        self._append_next = append_chain(self._middlewares, self._append_inner)

    def subscriber(
        self,
        topic: str | Sequence[str],
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: RetryPolicy | None = None,
        max_in_flight: int | None = None,
        start: str | Start = Start.EARLIEST,
        partitions: int | None = None,
        exactly_once: bool = False,
        batch: bool = False,
        max_batch: int = 500,
        max_in_flight_bytes: int | None = None,
        dead_letter: str = "skip",
    ) -> Callable[[F], F]:
        """Register a handler for ``topic`` in consumer group ``group`` (default: the app's
        name). Every group gets every message; members of a group share the partitions.
        Up to ``concurrency`` messages run at once, one at a time per key; at most
        ``max_in_flight`` messages, and ``max_in_flight_bytes`` of their payloads
        (default: the app's), are fetched and unfinished (backpressure). With
        ``exactly_once``, what the handler publishes is appended in one broker
        transaction with the consumed offset (backends with transactions only: Kafka).
        With ``batch``, the handler takes a list of payloads (``list[Event]``, and
        optionally a ``list[Message]``): up to ``max_batch`` messages fetched together,
        one batch at a time; a failing batch is retried whole, then dead-lettered
        record by record (see :mod:`tidings._batch`). A message that fails is retried by
        ``retry`` (default: the app's), in memory or, with ``RetryPolicy(blocking=False)``,
        parked durably so its partition goes on; when it is dead-lettered, ``dead_letter``
        says what becomes of its key: ``"skip"`` (later messages go on) or ``"park-key"``
        (they wait behind it until it is re-driven or purged). Returns the function
        unchanged."""
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        if batch and (not isinstance(max_batch, int) or max_batch < 1):
            raise ConfigurationError(f"max_batch must be an int >= 1, not {max_batch!r}")
        return self._register(
            Role.SUBSCRIBER, topics, group=group, concurrency=concurrency, retry=retry,
            max_in_flight=max_in_flight, max_in_flight_bytes=max_in_flight_bytes,
            start=start, partitions=partitions,
            exactly_once=exactly_once, batch=max_batch if batch else 0,
            dead_letter=dead_letter,
        )

    def responder(
        self, topic: str, *, group: str | None = None, concurrency: int = 1,
        partitions: int | None = None,
    ) -> Callable[[F], F]:
        """Register a handler that answers ``app.request(topic, ...)``: its return value
        is the reply; an exception it raises reaches the caller as :class:`RemoteError`."""
        return self._register(
            Role.RESPONDER, (topic,), group=group, concurrency=concurrency,
            retry=RetryPolicy.never(), partitions=partitions,
        )

    def worker(
        self, queue: str, *, concurrency: int = 1, retry: RetryPolicy | None = None,
        partitions: int | None = None,
    ) -> Callable[[F], F]:
        """Register a competing consumer of work queue ``queue``: each item goes to exactly
        one worker of any app. Among the items a worker holds (it prefetches up to
        ``max_in_flight``), the highest priority runs first."""
        check_name("queue", queue)
        return self._register(
            Role.WORKER, queue_topics(queue), group=queue_group(queue),
            concurrency=concurrency, retry=retry, partitions=partitions,
        )

    def _register(self, role: Role, topics: tuple[str, ...], **options: Any) -> Callable[[F], F]:
        for topic in topics:
            check_name("topic", topic)

        def register(func: F) -> F:
            handler = inspect_handler(func, batch=bool(options.get("batch")))
            spec = SubscriberSpec.build(role, topics, handler, self, **options)
            if self._running:
                raise ConfigurationError("register subscribers before the app starts")
            for other in self._subscribers:
                shared = set(other.topics) & set(spec.topics)
                if shared and other.group == spec.group:
                    raise ConfigurationError(
                        f"{func.__qualname__} and {other.handler.func.__qualname__} both consume "
                        f"{sorted(shared)} in group {spec.group!r}: they would split its "
                        "messages; give one of them another group="
                    )
            self._subscribers.append(spec)
            return func

        return register

    def cron(
        self, expression: str, *, name: str | None = None, catch_up: CatchUp | str = CatchUp.LATEST,
        max_catch_up: int = 100, timezone: tzinfo = UTC, retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]:
        """Run the decorated ``async def job()`` (or ``job(tick: datetime)``) at every tick
        of the cron ``expression``, on one instance of this app; see :func:`tidings.cron`."""
        return cron(self, expression, name=name, catch_up=catch_up, max_catch_up=max_catch_up,
                    timezone=timezone, retry=retry)

    def publishes(self, topic: str, payload_type: Any) -> Callable[[F], F]:
        """Declare that this app publishes ``payload_type`` (a pydantic model, or any
        type pydantic describes) to ``topic``, for its AsyncAPI document; use it as a
        decorator on the function that publishes (returned unchanged) or call it alone."""
        self._publishes.append((check_name("topic", topic), payload_type))
        return _unchanged

    def _learn(self, topic: str, cls: type) -> None:
        """A publish call of a ``cls`` instance to ``topic``, seen for the first time: a
        pydantic model or dataclass joins the AsyncAPI document (declared or not), and a
        running app describes itself again (once a second at most)."""
        self._typed.add((topic, cls))
        if not (hasattr(cls, "model_json_schema") or dataclasses.is_dataclass(cls)):
            return
        if any(t == topic and p is cls for t, p in self._publishes):
            return
        self._publishes.append((topic, cls))
        if self._running and self._redescribe is None:
            self._redescribe = asyncio.get_running_loop().call_later(1.0, self._describe_again)

    def _describe_again(self) -> None:
        self._redescribe = None
        if self._open:
            task = asyncio.ensure_future(self._describe())
            self._describing.add(task)
            task.add_done_callback(self._described_again)

    def _described_again(self, task: asyncio.Task[None]) -> None:
        self._describing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: describing itself on %s failed: %s", self.name,
                        "tidings.apps", task.exception())

    def on_startup(self, func: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run ``func`` after the app connected, before its subscribers start."""
        self._startup.append(func)
        return func

    def on_shutdown(self, func: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run ``func`` after the subscribers stopped, before the app disconnects."""
        self._shutdown.append(func)
        return func

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect, create the subscribed topics, and start every subscriber."""
        require_capabilities(self._transport, self.broker, self._subscribers)
        await self._transport.start()
        self._running = self._open = True
        runtime = Runtime(self.name, self.system, self._emit, tuple(self._middlewares))
        try:
            await self._describe()
            for hook in self._startup:
                await hook()
            for spec in self._subscribers:
                for topic in spec.topics:
                    await self._transport.ensure_topic(topic, spec.partitions)
                consumer = Consumer(self._transport, spec.consumer_spec(self),
                                    message_process(spec, runtime),
                                    batch_process(spec, runtime) if spec.batch else None)
                await consumer.start()
                self._consumers.append(consumer)
            await self._wait_joined()
        except BaseException:
            await self.stop()
            raise

    async def _describe(self) -> None:
        # An app that handles or declares messages appends its AsyncAPI document to
        # tidings.apps, so a console knows the services it never imported.
        if self._subscribers or self._publishes:
            from .asyncapi import APPS_TOPIC, describe_record

            await self._transport.ensure_topic(APPS_TOPIC, 1)
            self._described += 1
            await self._transport.append([describe_record(self, self._described)])

    async def _wait_joined(self) -> None:
        # A service is up once its subscribers are in their groups, so a message published
        # right after start is not left for a member that joins later (Kafka joins take ~1 s).
        try:
            await self.wait_until_assigned(self.join_timeout)
        except TimeoutError:
            log.warning("%s: subscribers not all assigned after %.0f s; going on",
                        self.instance_id, self.join_timeout)

    async def stop(self) -> None:
        """Stop fetching, finish in-flight work, commit, leave the groups, disconnect."""
        if not self._open:
            return
        self._running = False  # handlers still draining may publish until the end
        await asyncio.gather(*(c.stop() for c in self._consumers), return_exceptions=True)
        self._consumers.clear()
        await self._replies.close()
        await self._describe_pending()
        for hook in self._shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %r failed", hook)
        self._open = False
        await self._transport.close()

    async def _describe_pending(self) -> None:
        """Before closing: the description a new typed message is waiting for."""
        if self._redescribe is not None:
            self._redescribe.cancel()
            self._redescribe = None
            self._describe_again()
        if self._describing:
            await asyncio.gather(*self._describing, return_exceptions=True)

    def _abandon(self) -> None:
        """Stop abruptly, as a killed process would (see :func:`tidings.testing.crash`)."""
        self._running = self._open = False
        if self._redescribe is not None:
            self._redescribe.cancel()
            self._redescribe = None
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()

    async def wait_until_assigned(self, timeout: float = 10.0) -> None:
        """Wait until every subscriber has joined its group and fetched once."""
        await asyncio.wait_for(
            asyncio.gather(*(c.started.wait() for c in self._consumers)), timeout
        )

    def run(self) -> None:
        """Run this app until SIGTERM or SIGINT, then shut down gracefully."""
        from ._runner import run_app

        run_app(self)

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: Delay = None,
        partition: int | None = None,
    ) -> Published:
        """Append one message; it is durable when this returns. ``delay`` (seconds, a
        timedelta, or an absolute datetime) holds it back durably until then. Inside an
        exactly-once handler it is held and appended with the handler's offset commit
        (``partition`` and ``offset`` of the result are then None)."""
        self._seen(topic, payload)
        if delay is not None:
            refuse_delay(self._transport, self.broker)
        out = make_record(topic, payload, key, headers, delay, partition)
        position = (await self._appending([out]))[0]
        return Published(out.headers[Headers.ID], topic, position.partition, position.offset)

    async def _publish(
        self, topic: str, payload: Any, *, key: str | None = None,
        headers: Mapping[str, str] | None = None, reserved: Mapping[str, str] | None = None,
        delay: Delay = None,
    ) -> Published:
        """``publish`` with the runtime's own ``reserved`` headers (``tidings-*``), which
        a caller's ``headers`` may not hold: cron ticks, work queues, rules, sagas."""
        if delay is not None:
            refuse_delay(self._transport, self.broker)
        out = make_record(topic, payload, key, headers, delay, None, reserved)
        position = (await self._appending([out]))[0]
        return Published(out.headers[Headers.ID], topic, position.partition, position.offset)

    async def publish_many(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        key: Callable[[Any], str | None] | None = None,
    ) -> PublishedMany:
        """Append many messages in one durable batch; ``key(payload)`` picks each key.
        Returns a sequence of :class:`Published`, in order (made as it is read)."""
        outs = make_records(topic, self._typed_payloads(topic, payloads), key)
        ids = [o.headers[Headers.ID] for o in outs]
        appending = self._appending(outs)
        del outs  # handed over: not kept alive while the broker acknowledges them
        return PublishedMany(ids, topic, await appending)

    async def publish_batch(self, messages: Iterable[Outgoing]) -> PublishedMany:
        """Append messages to any topics, each with its own key, headers and delay, in one
        durable batch, in the given order. Returns a sequence of :class:`Published`."""
        return await self._publish_batch(messages, "publish")

    async def _publish_batch(self, messages: Iterable[Outgoing], kind: str) -> PublishedMany:
        """``publish_batch`` as an append of ``kind``. The outbox relay's ("relay") carry
        the headers the runtime gave its rows when they were recorded (their ids)."""
        messages = list(messages)
        if any(m.delay is not None for m in messages):
            refuse_delay(self._transport, self.broker)
        if kind == "relay":
            outs = [make_record(m.topic, m.payload, m.key, None, m.delay, None, m.headers)
                    for m in messages]
        else:
            for m in messages:
                self._seen(m.topic, m.payload)
            outs = [make_record(m.topic, m.payload, m.key, m.headers, m.delay, None)
                    for m in messages]
        ids = [o.headers[Headers.ID] for o in outs]
        topics = [o.topic for o in outs]
        appending = self._appending(outs, kind)
        del outs  # handed over: not kept alive while the broker acknowledges them
        return PublishedMany(ids, topics, await appending)

    async def enqueue(
        self, queue: str, payload: Any, *, priority: int = 0, delay: Delay = None,
        key: str | None = None, headers: Mapping[str, str] | None = None,
    ) -> Published:
        """Add an item to work queue ``queue`` with ``priority`` 0 (lowest) to 9."""
        if priority not in PRIORITIES:
            raise ConfigurationError(f"priority must be an int from 0 to 9, not {priority!r}")
        return await self._publish(queue_topics(queue)[priority], payload, key=key,
                                   headers=headers, reserved={Headers.PRIORITY: str(priority)},
                                   delay=delay)

    @overload
    async def request(self, topic: str, payload: Any, *, timeout: float = ...,
                      key: str | None = ..., headers: Mapping[str, str] | None = ...,
                      response_type: None = ...) -> Any: ...
    @overload
    async def request(self, topic: str, payload: Any, *, timeout: float = ...,
                      key: str | None = ..., headers: Mapping[str, str] | None = ...,
                      response_type: type[T]) -> T: ...

    async def request(
        self, topic: str, payload: Any, *, timeout: float = 10.0, key: str | None = None,
        headers: Mapping[str, str] | None = None, response_type: type[Any] | None = None,
    ) -> Any:
        """Send ``payload`` to the responder of ``topic`` and return its decoded reply.
        Raises :class:`RequestTimeoutError` after ``timeout`` seconds without one, and
        :class:`RemoteError` if the responder failed."""
        return await self._request(topic, payload, timeout=timeout, key=key, headers=headers,
                                   response_type=response_type)

    async def _request(
        self, topic: str, payload: Any, *, timeout: float = 10.0, key: str | None = None,
        headers: Mapping[str, str] | None = None, response_type: type[Any] | None = None,
        reserved: Mapping[str, str] | None = None,
    ) -> Any:
        """``request`` with the runtime's own ``reserved`` headers (a saga's step)."""
        out = make_record(topic, payload, key, headers, None, None,
                          {**(reserved or {}), Headers.REPLY_TO: REPLIES_TOPIC})
        self._require_running()
        reply = await self._replies.request(out, out.headers[Headers.ID], timeout)
        if reply.headers.get(Headers.REPLY_STATUS) == "error":
            body = decoder_for(dict[str, str])(reply.value)
            raise RemoteError(body.get("error_type", "Exception"), body.get("message", ""))
        return decoder_for(response_type if response_type is not None else Any)(reply.value)

    # -- observing -------------------------------------------------------------------

    async def lag(self, *, all_groups: bool = False) -> list[PartitionLag]:
        """Per group and partition of this app's subscribers (or every group on the
        bus), the end offset minus the committed offset."""
        groups = None if all_groups else {spec.group for spec in self._subscribers}
        return await group_lag(self._transport, groups)

    async def health(self, *, max_lag: int | None = None, timeout: float = 5.0) -> Health:
        """Whether this app is ready: running, its bus answering within ``timeout``
        seconds, every subscriber running, and (given ``max_lag``) its groups' total
        lag at most ``max_lag``. Never raises: what fails is in ``reasons``."""
        reasons: list[str] = []
        if not self._running:
            reasons.append("the app is not running")
        running = sum(1 for c in self._consumers if c.alive)
        if running < len(self._subscribers):
            reasons.append(f"{len(self._subscribers) - running} of {len(self._subscribers)} "
                           "subscribers are not running")
        connected, total = False, None
        if self._open:
            try:
                async with asyncio.timeout(timeout):
                    lags = await self.lag()
                connected, total = True, sum(p.lag for p in lags)
            except TimeoutError:
                reasons.append(f"the bus did not answer within {timeout:g} s")
            except TransportError as exc:
                reasons.append(f"the bus is unreachable: {exc}")
        if max_lag is not None and total is not None and total > max_lag:
            reasons.append(f"lag {total} is over {max_lag}")
        return Health(ready=not reasons, running=self._running, connected=connected,
                      subscribers=len(self._subscribers), subscribers_running=running,
                      lag=total, reasons=tuple(reasons))

    def dead_letters(self, topic: str) -> DeadLetters:
        """Inspect, re-drive and purge the dead letters of ``topic``."""
        return DeadLetters(self._transport, topic, lambda outs: self._emit(outs, "redrive"))

    def _require_running(self) -> None:
        if not self._open:
            raise NotRunningError(f"app {self.name!r} is not running: use 'async with app:'")

    def _appending(self, outs: list[OutRecord], kind: str = "publish",
                   ) -> Awaitable[Sequence[Position]]:
        """Hand ``outs`` to the transport now; the awaitable gives their positions. (A
        backend may take the records at once, so the caller need not keep them.)"""
        self._require_running()
        return self._emit(outs, kind)

    def _emit(self, outs: list[OutRecord], kind: str = "publish",
              ) -> Awaitable[Sequence[Position]]:
        """``_appending`` without the running check, through the append middleware: the
        runtime's own appends (replies, dead letters, ...) name their ``kind``. Every
        record is stamped with this app's name as its source, unless it has one."""
        _sourced(outs, self.name)
        if self._append_next is not None:
            return self._append_next(AppendCall(self.name, kind, self.system, outs))
        # Inside an exactly-once handler, held: appended when its offset commits, with it.
        held = hold(outs) if kind in _HELD else None
        if held:
            return _resolved(held)
        return self._transport.append(outs)

    async def _append_inner(self, call: AppendCall) -> Sequence[Position]:
        """The end of the append chain: hold, append, or (an outbox row) nothing."""
        if call.kind == "create":
            return []
        held = hold(call.records) if call.kind in _HELD else None
        if held:
            return held
        return await self._transport.append(call.records)

    async def _stamp(self, records: list[OutRecord]) -> None:
        """Run the append middleware over records recorded for later (an outbox row),
        so they carry what it adds (a trace context) when relayed, and its source."""
        _sourced(records, self.name)
        if self._append_next is not None:
            await self._append_next(AppendCall(self.name, "create", self.system, records))

    def _typed_payloads(self, topic: str, payloads: Iterable[Any]) -> Iterator[Any]:
        typed = self._typed
        for payload in payloads:
            cls = type(payload)
            if cls is not dict and (topic, cls) not in typed:
                self._learn(topic, cls)
            yield payload

    def _seen(self, topic: str, payload: Any) -> None:
        """A publish call of ``payload`` to ``topic``: a new typed message is learnt."""
        cls = type(payload)
        if cls is not dict and (topic, cls) not in self._typed:
            self._learn(topic, cls)


def _sourced(outs: Sequence[OutRecord], name: str) -> None:
    """Stamp ``outs`` with ``name`` as their source, unless they have one."""
    for out in outs:
        headers = out.headers
        if isinstance(headers, dict):
            headers.setdefault(Headers.SOURCE, name)
        elif Headers.SOURCE not in headers:
            out.headers = {**headers, Headers.SOURCE: name}


def _unchanged(func: F) -> F:
    return func


async def _resolved(positions: list[Position]) -> list[Position]:
    """An awaitable of positions already known (records held for a transaction)."""
    return positions
