"""What a subscriber, responder or worker declaration holds, validated when declared."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._consumer import ConsumerSpec
from ._errors import ConfigurationError
from ._handler import Handler
from ._records import Start
from ._retry import RetryPolicy
from ._workqueue import queue_priority

if TYPE_CHECKING:
    from ._app import App

__all__ = ["DEAD_LETTER_MODES", "Role", "SubscriberSpec"]

#: What a subscriber's dead letter does to its key: ``skip`` (later messages of the key
#: go on) or ``park-key`` (they wait behind it until it is re-driven or purged).
DEAD_LETTER_MODES = ("skip", "park-key")


class Role(enum.Enum):
    """What a registered handler is for."""

    SUBSCRIBER = "subscriber"
    RESPONDER = "responder"
    WORKER = "worker"
    CRON = "cron"


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """One registered handler and how it consumes."""

    role: Role
    topics: tuple[str, ...]
    handler: Handler
    group: str
    concurrency: int
    retry: RetryPolicy
    max_in_flight: int
    max_in_flight_bytes: int
    start: Start
    partitions: int | None
    exactly_once: bool = False
    batch: int = 0  # a batch handler's max_batch; 0 for a per-message handler
    dead_letter: str = "skip"  # "park-key": a dead letter parks its key (see _parking)

    @classmethod
    def build(
        cls, role: Role, topics: tuple[str, ...], handler: Handler, app: App, *,
        group: str | None = None, concurrency: int = 1, retry: RetryPolicy | None = None,
        max_in_flight: int | None = None, max_in_flight_bytes: int | None = None,
        start: str | Start = Start.EARLIEST,
        partitions: int | None = None, exactly_once: bool = False, batch: int = 0,
        dead_letter: str = "skip",
    ) -> SubscriberSpec:
        """Validate a declaration; every mistake is a ConfigurationError here, not later."""
        if not topics:
            raise ConfigurationError("a subscriber needs at least one topic")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, not {max_in_flight!r}")
        if max_in_flight_bytes is None:
            max_in_flight_bytes = app.max_in_flight_bytes
        if not isinstance(max_in_flight_bytes, int) or max_in_flight_bytes < 1:
            raise ConfigurationError(
                f"max_in_flight_bytes must be an int >= 1, not {max_in_flight_bytes!r}")
        if partitions is not None and partitions < 1:
            raise ConfigurationError(f"partitions must be >= 1, not {partitions!r}")
        if batch and (concurrency != 1 or exactly_once):
            raise ConfigurationError(
                "a batch subscriber runs one batch at a time, without exactly_once "
                "(concurrency=1)"
            )
        retry = retry or app.retry
        if dead_letter not in DEAD_LETTER_MODES:
            raise ConfigurationError(
                f"dead_letter must be 'skip' or 'park-key', not {dead_letter!r}")
        if (batch or exactly_once) and (dead_letter != "skip" or not retry.blocking):
            raise ConfigurationError(
                "a batch or exactly_once subscriber cannot park keys (non-blocking "
                "retries, dead_letter='park-key')")
        try:
            start = Start(start)
        except ValueError:
            raise ConfigurationError(
                f"start must be 'earliest' or 'latest', not {start!r}"
            ) from None
        return cls(
            role=role, topics=topics, handler=handler, group=group or app.name,
            concurrency=concurrency, retry=retry,
            max_in_flight=max_in_flight or max(1000, 2 * concurrency, 2 * batch),
            max_in_flight_bytes=max_in_flight_bytes, start=start,
            partitions=partitions, exactly_once=bool(exactly_once), batch=batch,
            dead_letter=dead_letter,
        )

    def consumer_spec(self, app: App) -> ConsumerSpec:
        """The runtime settings for this declaration in ``app``."""
        return ConsumerSpec(
            group=self.group,
            topics=self.topics,
            concurrency=self.concurrency,
            max_in_flight=self.max_in_flight,
            max_in_flight_bytes=self.max_in_flight_bytes,
            fetch_batch=min(max(500, self.batch), self.max_in_flight),
            start=self.start,
            shutdown_timeout=app.shutdown_timeout,
            client=app.instance_id,
            priority_of=queue_priority if self.role is Role.WORKER else None,
            transactional=self.exactly_once,
            batch=self.batch,
            park=not self.retry.blocking,
            park_dead=self.dead_letter == "park-key",
        )
