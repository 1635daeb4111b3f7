"""The attempts at one action: counted before each starts, with stored timers.

Where the attempts are counted is a :class:`Track`: the saga record's own columns for
a step, an entry of the record's ``branches`` JSON for a parallel branch. Each attempt
is written before it starts, with its deadline; a failed one is written with the time
the next may start (``wake_at``). So a restarted service goes on where the timers say:
a backoff ends at its stored time, not at once and not from attempt 1, and an attempt
cut short by a crash counts as used (for a :class:`Command`, which a participant may
still be acting on, the next one waits for its deadline).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pydantic

from .._errors import NotRunningError
from .._retry import Retry, RetryPolicy
from ._definition import Action, Command, Step
from ._errors import StepFailedError
from ._store import StepEvent

__all__ = ["Outcome", "StepInterrupted", "Track", "run_attempts"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an action ended: its new state, or why it failed for good."""

    ok: bool
    #: The new state; on a failure, the state a :class:`StepFailedError` carried (None:
    #: unchanged).
    state: pydantic.BaseModel | None = None
    error: str | None = None
    timed_out: bool = False
    #: The history line of a final failure not written yet: the write that records
    #: what follows (compensating, parked) carries it, so one write records both.
    events: tuple[StepEvent, ...] = ()


class StepInterrupted(Exception):
    """The app stopped during an attempt: not the step's failure; resume it later."""


class Track(Protocol):
    """Where one action's attempts and timers are stored."""

    @property
    def attempts(self) -> int: ...
    @property
    def wake_at(self) -> float | None: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def armed(self) -> bool: ...
    @property
    def dormant(self) -> bool: ...
    @property
    def defers_final(self) -> bool:
        """A final failure is written by the caller's next write (in the saga record's
        own columns, that write resets the timers too), not by a write of its own."""
        ...

    def disarm(self) -> None: ...

    async def save(self, events: Sequence[StepEvent], **timers: Any) -> None: ...


class Runner(Protocol):
    """What the attempt loop needs of the saga run."""

    def event(self, step: str, phase: str, outcome: str, attempt: int = 0,
              error: str | None = None) -> StepEvent: ...
    def running(self) -> bool: ...

    async def wait_until(self, when: float, *, dormant: bool) -> None: ...


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def started(step: Step[Any], track_attempts: int) -> dict[str, Any]:
    """The timers written when attempt ``track_attempts`` of ``step`` starts."""
    deadline = None if step.timeout is None else time.time() + step.timeout
    return {"attempts": track_attempts, "wake_at": None, "deadline": deadline}


async def run_attempts(run: Runner, track: Track, step: Step[Any], action: Action[Any],
                       policy: RetryPolicy, phase: str,
                       call: Callable[[], Awaitable[pydantic.BaseModel]]) -> Outcome:
    """Run ``call`` (one attempt at ``action``) until it succeeds or ``policy`` gives up."""
    while True:
        if track.armed:  # the previous write recorded this attempt's start already
            track.disarm()
        else:
            if track.attempts and track.wake_at is None:  # cut short by a crash or a stop
                outcome = await _cut_short(run, track, step, action, policy, phase)
                if outcome is not None:
                    return outcome
            if track.wake_at is not None:
                await run.wait_until(track.wake_at, dormant=track.dormant)
            attempt = track.attempts + 1
            if attempt > policy.max_attempts:
                return Outcome(False, error=f"gave up after {attempt - 1} attempts")
            await track.save([run.event(step.name, phase, "started", attempt)],
                             **started(step, attempt))
        try:
            return Outcome(True, state=await call())
        except Exception as exc:
            if isinstance(exc, NotRunningError) or not run.running():
                raise StepInterrupted(step.name) from exc
            outcome = await _failed(run, track, step, policy, phase, exc)
            if outcome is not None:
                return outcome


async def _failed(run: Runner, track: Track, step: Step[Any], policy: RetryPolicy,
                  phase: str, exc: Exception) -> Outcome | None:
    """Record a failed attempt and when the next may start; an Outcome if none may."""
    attempt = track.attempts
    timed_out = isinstance(exc, TimeoutError)
    error = _describe(exc) if not timed_out or str(exc) else \
        f"timed out after {step.timeout:g} s"
    failed = exc if isinstance(exc, StepFailedError) else None
    if failed is not None:  # for good, whatever the policy says
        error = failed.reason or error
    decision = None if failed is not None else policy.decide(attempt, exc)
    now = time.time()
    wake_at = now + decision.delay if isinstance(decision, Retry) else now
    line = run.event(step.name, phase, "timed_out" if timed_out else "failed", attempt, error)
    final = None if isinstance(decision, Retry) else Outcome(
        False, state=None if failed is None else failed.state, error=error,
        timed_out=timed_out)
    return await _record_failure(track, line, wake_at, final)


async def _cut_short(run: Runner, track: Track, step: Step[Any], action: Action[Any],
                     policy: RetryPolicy, phase: str) -> Outcome | None:
    """Record the attempt a crash or a stop cut short: it timed out at its deadline (a
    command's participant may act on it until then), or simply failed without one."""
    attempt, deadline, now = track.attempts, track.deadline, time.time()
    if deadline is None:
        exc: Exception = RuntimeError("the attempt did not finish (the process stopped)")
    else:
        exc = TimeoutError(f"the attempt did not finish (the process stopped); it timed "
                           f"out after {step.timeout:g} s")
    decision = policy.decide(attempt, exc)
    ends = max(deadline, now) if deadline is not None and isinstance(action, Command) else now
    wake_at = ends + decision.delay if isinstance(decision, Retry) else now
    line = run.event(step.name, phase, "timed_out" if deadline is not None else "failed",
                     attempt, _describe(exc))
    final = None if isinstance(decision, Retry) else Outcome(
        False, error=f"gave up after {attempt} attempts (the last one did not finish)",
        timed_out=deadline is not None)
    return await _record_failure(track, line, wake_at, final)


async def _record_failure(track: Track, line: StepEvent, wake_at: float,
                          final: Outcome | None) -> Outcome | None:
    """Write a failed attempt's history ``line`` and when the next attempt may start,
    and return ``final`` (None: there is a next attempt). A final failure on a track
    that defers it is not written here: its line goes with the outcome, to the write
    that records what follows."""
    if final is not None and track.defers_final:
        return replace(final, events=(line,))
    await track.save([line], wake_at=wake_at, deadline=None)
    return final
