"""Driving one saga instance: actions forward, compensations backward, every move saved.

The state machine, for a saga of steps ``0..n-1``::

    RUNNING (forward, step i) --action i ok--> step i+1 ... --step n--> COMPLETED
        |  action i failed for good (a retriable step: --> PARKED)
        v
    COMPENSATING (backward, from i-1, or from i if action i timed out)
        --compensation j ok--> j-1 ... --below 0--> COMPENSATED
        |  compensation j failed for good
        v
    FAILED_COMPENSATION (parked until ``retry``)

Each attempt is counted in the store *before* it starts, so a process that dies during
an attempt has used it up: a compensation that kills its process every time still ends
in ``FAILED_COMPENSATION`` rather than looping. One write per step: the write that
records a step's success also records the start of the next one, and the last one
completes the saga and gives its lease up. A step without an action (it only holds a
compensation) costs none going forward: that write skips it. A step that raises
:class:`StepFailedError` fails for good at once, with the state it carries. A step's
final failure is written with what follows it (compensating, or parked), in one write:
a crash cannot leave a failure recorded and the saga not yet turned back (which would
run the step again on resume).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from .._retry import RetryPolicy
from ._attempt import Outcome, StepInterrupted, run_attempts, started
from ._definition import Action, Command, Parallel, Saga, Sleep, Step, StepLike
from ._errors import StepFailedError
from ._parallel import ParallelRun, arm_branches
from ._store import ACTIVE, Direction, SagaRecord, SagaStatus, SagaStore, StepEvent

if TYPE_CHECKING:
    from .._app import App

__all__ = ["SAGA_ID_HEADER", "SAGA_STEP_HEADER", "Dormant", "SagaRun", "StepInterrupted", "arm",
           "skip_markers"]

log = logging.getLogger("tidings.saga")

SAGA_ID_HEADER = "tidings-saga-id"
SAGA_STEP_HEADER = "tidings-saga-step"


def skip_markers(steps: Sequence[StepLike[Any]], index: int) -> int:
    """The first step from ``index`` on with an action: a step without one (it only
    holds a compensation) is passed going forward without a write of its own."""
    while index < len(steps):
        step = steps[index]
        if not isinstance(step, Step) or step.action is not None:
            break
        index += 1
    return index


def arm(saga_id: str, step: StepLike[Any], phase: str,
        ) -> tuple[dict[str, Any], list[StepEvent]] | None:
    """The record changes and history lines that record the start of the first attempt
    of ``step`` going ``phase`` (``action`` or ``compensation``; of every branch of a
    parallel step going forward), written by the write that reaches it; None if nothing
    of it starts then (a sleep, a step without a compensation going back)."""
    if isinstance(step, Step) and (phase == "action" or step.compensation is not None):
        return started(step, 1), [StepEvent(saga_id, step.name, phase, "started", 1)]
    if isinstance(step, Parallel) and phase == "action":
        branches, events = arm_branches(saga_id, step)
        return {"branches": branches}, events
    return None


class Dormant(Exception):
    """The saga waits longer than a lease for a stored timer: it was given up until then."""


class _RecordTrack:
    """A step's attempts and timers: the saga record's own columns."""

    dormant = True  # a long wait gives the saga up until it is due
    defers_final = True  # compensating or parking is the next write: it records both

    def __init__(self, run: SagaRun) -> None:
        self._run = run
        self.armed = run._armed
        run._armed = False

    @property
    def attempts(self) -> int:
        return self._run.record.attempts

    @property
    def wake_at(self) -> float | None:
        return self._run.record.wake_at

    @property
    def deadline(self) -> float | None:
        return self._run.record.deadline

    def disarm(self) -> None:
        self.armed = False

    async def save(self, events: list[StepEvent], **timers: Any) -> None:
        await self._run.save(events, **timers)


class SagaRun:
    """Runs one claimed saga instance until it completes, is compensated or parks.

    ``armed``: the record's last write recorded the start of its current step's first
    attempt (a saga started in this process), so the attempt runs without another write.
    """

    def __init__(self, saga: Saga[Any], record: SagaRecord, store: SagaStore, app: App,
                 lease: float, *, armed: bool = False) -> None:
        self.saga = saga
        self.record = record
        self._store = store
        self._app = app
        self._lease = lease
        self._armed = armed
        self._lock = asyncio.Lock()
        self.state: pydantic.BaseModel | None = None
        #: A state and the JSON it was saved as: a copy for a step is parsed from it
        #: (a fifth of the cost of a deep copy).
        self._saved: tuple[pydantic.BaseModel, str] | None = None
        self.released = False  #: the last write gave the lease up
        self.releasing = False  #: the write under way gives the lease up

    async def drive(self) -> SagaRecord:
        """Advance the saga as far as it goes; return its last saved record."""
        try:
            self.state = self.saga.state.model_validate_json(self.record.state)
            self._saved = (self.state, self.record.state)
        except pydantic.ValidationError as exc:
            error = f"state does not validate against {self.saga.state.__name__}: {exc}"
            await self._park(SagaStatus.PARKED, error)
            return self.record
        try:
            while self.record.status in ACTIVE:
                if self.record.direction is Direction.FORWARD:
                    await self._forward()
                else:
                    await self._backward()
        except Dormant:
            log.debug("saga %s sleeps until %s", self.record.id, self.record.wake_at)
        return self.record

    async def _forward(self) -> None:
        index = self.record.step
        if index >= len(self.saga.steps):
            await self._finish(SagaStatus.COMPLETED)
            return
        step = self.saga.steps[index]
        if isinstance(step, Sleep):
            await self._sleep(step)
            await self._advance(step.name, "action", Outcome(True, state=self.state), index + 1)
            return
        undo, done = None, []
        if isinstance(step, Step) and step.action is None:  # only holds a compensation
            self.record = self.record.replace(step=index + 1, attempts=0)
            self._armed = False  # the next step's first attempt is not recorded yet
            return
        if isinstance(step, Parallel):
            group = ParallelRun(self, step)
            outcome = await group.forward()
            undo, done = group.undo_list(), group.unsaved
        else:
            assert step.action is not None
            outcome = await self.attempts(step, step.action, step.retry, "action",
                                          _RecordTrack(self))
        if outcome.ok:
            await self._advance(step.name, "action", outcome, index + 1, done)
        elif step.retriable:
            await self._park(SagaStatus.PARKED, f"step {step.name!r}: {outcome.error}",
                             outcome)
        else:
            await self._compensate_from(index, step, outcome, undo)

    async def _compensate_from(self, index: int, step: Step[Any] | Parallel[Any],
                               outcome: Outcome, undo: str | None) -> None:
        # A step that timed out may have taken effect: compensate it too; a parallel
        # step compensates the branches that succeeded or timed out (``undo``).
        start = index if outcome.timed_out or undo else index - 1
        await self.save(
            [*outcome.events,
             self.event("", "saga", SagaStatus.COMPENSATING, error=outcome.error)],
            status=SagaStatus.COMPENSATING, direction=Direction.BACKWARD, step=start,
            attempts=0, error=f"step {step.name!r}: {outcome.error}", branches=undo,
            wake_at=None, deadline=None, **self._keep(outcome.state),
        )

    async def _backward(self) -> None:
        index = self.record.step
        if index < 0:
            await self._finish(SagaStatus.COMPENSATED)
            return
        step = self.saga.steps[index]
        if isinstance(step, Parallel):
            outcome = await ParallelRun(self, step).backward()
        elif isinstance(step, Step) and step.compensation is not None:
            outcome = await self.attempts(step, step.compensation, step.compensation_retry,
                                          "compensation", _RecordTrack(self))
        else:  # nothing to undo: move on (written with the next step's write)
            self.record = self.record.replace(step=index - 1, attempts=0)
            return
        if outcome.ok:
            await self._advance(step.name, "compensation", outcome, index - 1)
        else:
            await self._park(SagaStatus.FAILED_COMPENSATION,
                             f"compensation of step {step.name!r}: {outcome.error}",
                             outcome)

    async def _advance(self, name: str, phase: str, outcome: Outcome, to: int,
                       done: Sequence[StepEvent] = ()) -> None:
        """Record a step's success (after the history lines ``done`` of its last
        branch), and in the same write the start of the next step's first attempt (of
        every branch of a parallel step), or the end of the saga."""
        assert outcome.state is not None
        self.state = outcome.state
        state = outcome.state.model_dump_json()
        self._saved = (outcome.state, state)
        events = [*done, self.event(name, phase, "succeeded", self.record.attempts)]
        changes: dict[str, Any] = {"step": to, "attempts": 0, "wake_at": None,
                                   "deadline": None, "branches": None, "state": state}
        forward = self.record.direction is Direction.FORWARD
        if forward:
            to = changes["step"] = skip_markers(self.saga.steps, to)
        end = to >= len(self.saga.steps) if forward else to < 0
        if end:
            status = SagaStatus.COMPLETED if forward else SagaStatus.COMPENSATED
            events.append(self.event("", "saga", status))
            await self.save(events, release=True, status=status, **changes)
            return
        armed = arm(self.record.id, self.saga.steps[to], phase)
        self._armed = armed is not None
        if armed is not None:
            changes.update(armed[0])
            events += armed[1]
        await self.save(events, **changes)

    async def _sleep(self, step: Sleep[Any]) -> None:
        if self.record.wake_at is None:
            assert self.state is not None
            wake_at = step.wake_at(self.state, time.time())
            await self.save([self.event(step.name, "action", "sleeping")], wake_at=wake_at)
        assert self.record.wake_at is not None
        await self.wait_until(self.record.wake_at, dormant=True)

    async def wait_until(self, when: float, *, dormant: bool) -> None:
        """Sleep until ``when`` (stored already); for longer than a third of a lease,
        give the saga up instead (:class:`Dormant`): the engine claims it when due."""
        delay = when - time.time()
        if delay <= 0:
            return
        if dormant and delay > self._lease / 3:
            await self.save([], release=True)
            raise Dormant(self.record.id)
        await asyncio.sleep(delay)

    async def attempts(self, step: Step[Any], action: Action[Any], policy: RetryPolicy,
                       phase: str, track: Any) -> Outcome:
        """Run ``action`` until it succeeds or ``policy`` gives up."""
        return await run_attempts(self, track, step, action, policy, phase,
                                  lambda: self._call(step, action, phase))

    def running(self) -> bool:
        """Whether the app still runs (an attempt it cut short is not the step's failure)."""
        return self._app.running

    async def _call(self, step: Step[Any], action: Action[Any], phase: str) -> pydantic.BaseModel:
        assert self.state is not None
        saved = self._saved
        # The step gets a copy: a failed attempt must not have changed the saga's state.
        state = self.saga.state.model_validate_json(saved[1]) \
            if saved is not None and saved[0] is self.state else self.state.model_copy(deep=True)
        try:
            if isinstance(action, Command):
                return await self._command(step, action, state, phase)
            async with asyncio.timeout(step.timeout):
                result = await action(state)
        except StepFailedError as exc:
            if exc.state is not None:
                self._checked(exc.state, state, step)  # a TypeError if it is no state
            raise
        return self._checked(result, state, step)

    async def _command(self, step: Step[Any], command: Command[Any],
                       state: pydantic.BaseModel, phase: str) -> pydantic.BaseModel:
        headers = {SAGA_ID_HEADER: self.record.id, SAGA_STEP_HEADER: f"{step.name}/{phase}"}
        timeout = step.timeout if step.timeout is not None else 30.0
        payload = command.payload(state)
        if command.response_type is None:
            reply = await self._app._request(command.topic, payload, timeout=timeout,
                                             key=self.record.id, reserved=headers)
        else:
            reply = await self._app._request(command.topic, payload, timeout=timeout,
                                             key=self.record.id, reserved=headers,
                                             response_type=command.response_type)
        result = command.on_reply(state, reply) if command.on_reply is not None else None
        return self._checked(result, state, step)

    def _checked(self, result: object, state: pydantic.BaseModel,
                 step: Step[Any]) -> pydantic.BaseModel:
        if result is None:
            return state
        model: type[pydantic.BaseModel] = self.saga.state
        if not isinstance(result, model):
            raise TypeError(f"step {step.name!r} returned {type(result).__name__}, "
                            f"not {model.__name__} or None")
        return result

    async def _finish(self, status: SagaStatus) -> None:
        await self.save([self.event("", "saga", status)], release=True, status=status)

    async def _park(self, status: SagaStatus, error: str, outcome: Outcome | None = None,
                    ) -> None:
        """Park the saga as ``status``, in the write that records ``outcome``'s final
        failure (its history line, its state) if there is one."""
        log.error("saga %s (%s) parked as %s: %s", self.record.id, self.saga.name, status, error)
        events = [*outcome.events] if outcome is not None else []
        timers: dict[str, Any] = {"wake_at": None, "deadline": None} if events else {}
        await self.save([*events, self.event("", "saga", status, error=error)], status=status,
                        error=error, **timers,
                        **self._keep(outcome.state if outcome is not None else None))

    def _keep(self, state: pydantic.BaseModel | None) -> dict[str, Any]:
        """The record change that saves ``state`` (a failed step's, from
        :class:`StepFailedError`) as the saga's; none if there is none."""
        if state is None or (self._saved is not None and state is self._saved[0]):
            return {}
        self.state = state
        dumped = state.model_dump_json()
        self._saved = (state, dumped)
        return {"state": dumped}

    def event(self, step: str, phase: str, outcome: str, attempt: int = 0,
              error: str | None = None) -> StepEvent:
        """A history line of this saga."""
        return StepEvent(self.record.id, step, phase, str(outcome), attempt, error)

    async def save(self, events: list[StepEvent], *, release: bool = False,
                   **changes: Any) -> None:
        """Write the record with ``changes`` and append ``events`` (one write at a time:
        parallel branches share the record)."""
        async with self._lock:
            self.releasing = release
            updated = self.record.replace(**changes) if changes else self.record
            self.record = await self._store.save(updated, events, self._lease,
                                                 release=release)
            self.released = release
