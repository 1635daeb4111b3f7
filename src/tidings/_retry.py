"""Retry policies: pure values that decide what happens after a handler fails."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import ConfigurationError, DecodeError

__all__ = ["DeadLetter", "Decision", "Retry", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Deliver the message again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: send the message to the dead letters with ``reason``."""

    reason: str


Decision = Retry | DeadLetter


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, an attempt limit and errors that skip retrying.

    Attempt ``n`` (1-based) that fails waits ``backoff * multiplier**(n-1)`` seconds,
    capped at ``max_backoff`` and reduced by up to ``jitter`` (a fraction), before
    attempt ``n+1``. After ``max_attempts`` failures, or at once for an exception in
    ``give_up_on`` (and always for :class:`DecodeError`), the message is dead-lettered.

    ``blocking`` says how a message waits for its retry. Blocking (the default): in
    memory, holding back its key and its partition's commits (a restart starts it again
    at attempt 1). Non-blocking (``blocking=False``): it is parked durably with its next
    attempt and due time, its offset is committed and the partition goes on; later
    messages of its key park behind it, in order, so the key keeps its order (see
    ``docs/howto`` on retries). A crash resumes it at the stored attempt and time.
    """

    max_attempts: int = 5
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.5
    give_up_on: tuple[type[BaseException], ...] = ()
    blocking: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be >= 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ConfigurationError(
                "RetryPolicy needs backoff >= 0, max_backoff >= 0 and multiplier >= 1"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter is a fraction between 0 and 1")

    @classmethod
    def never(cls) -> RetryPolicy:
        """Dead-letter on the first failure."""
        return cls(max_attempts=1)

    def delay_for(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt ``attempt``."""
        raw = min(self.backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return raw * (1 - self.jitter * rand())

    def decide(
        self, attempt: int, exc: BaseException, rand: Callable[[], float] = random.random
    ) -> Decision:
        """What to do after attempt ``attempt`` raised ``exc``."""
        if isinstance(exc, (DecodeError, *self.give_up_on)):
            return DeadLetter(f"{type(exc).__name__} is not retried")
        if attempt >= self.max_attempts:
            return DeadLetter(f"gave up after {attempt} attempts")
        return Retry(self.delay_for(attempt, rand))
