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
in ``FAILED_COMPENSATION`` rather than looping.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from .._errors import NotRunningError
from .._retry import Retry, RetryPolicy
from ._definition import Action, Command, Saga, Step
from ._store import ACTIVE, Direction, SagaRecord, SagaStatus, SagaStore, StepEvent

if TYPE_CHECKING:
    from .._app import App

__all__ = ["SAGA_ID_HEADER", "SAGA_STEP_HEADER", "SagaRun", "StepInterrupted"]

log = logging.getLogger("tidings.saga")

SAGA_ID_HEADER = "tidings-saga-id"
SAGA_STEP_HEADER = "tidings-saga-step"


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    state: pydantic.BaseModel | None = None
    error: str | None = None
    timed_out: bool = False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StepInterrupted(Exception):
    """The app stopped during an attempt: not the step's failure; resume it later."""


def _app_running(app: App) -> bool:
    # A request cut short by the app's shutdown must not count as the step failing
    # (that could compensate a saga that would have succeeded).
    return app.running


class SagaRun:
    """Runs one claimed saga instance until it completes, is compensated or parks."""

    def __init__(self, saga: Saga[Any], record: SagaRecord, store: SagaStore, app: App,
                 lease: float) -> None:
        self.saga = saga
        self.record = record
        self._store = store
        self._app = app
        self._lease = lease
        self._state: pydantic.BaseModel | None = None

    async def drive(self) -> SagaRecord:
        """Advance the saga as far as it goes; return its last saved record."""
        try:
            self._state = self.saga.state.model_validate_json(self.record.state)
        except pydantic.ValidationError as exc:
            error = f"state does not validate against {self.saga.state.__name__}: {exc}"
            await self._park(SagaStatus.PARKED, error)
            return self.record
        while self.record.status in ACTIVE:
            if self.record.direction is Direction.FORWARD:
                await self._forward()
            else:
                await self._backward()
        return self.record

    async def _forward(self) -> None:
        index = self.record.step
        if index >= len(self.saga.steps):
            await self._transition(SagaStatus.COMPLETED)
            return
        step = self.saga.steps[index]
        outcome = await self._attempts(step, step.action, step.retry, "action")
        if outcome.ok:
            await self._advance(step, "action", outcome, index + 1)
        elif step.retriable:
            await self._park(SagaStatus.PARKED, f"step {step.name!r}: {outcome.error}")
        else:
            # A step that timed out may have taken effect: compensate it too.
            start = index if outcome.timed_out else index - 1
            await self._save(
                [self._event("", "saga", SagaStatus.COMPENSATING, error=outcome.error)],
                status=SagaStatus.COMPENSATING, direction=Direction.BACKWARD, step=start,
                attempts=0, error=f"step {step.name!r}: {outcome.error}",
            )

    async def _backward(self) -> None:
        index = self.record.step
        if index < 0:
            await self._transition(SagaStatus.COMPENSATED)
            return
        step = self.saga.steps[index]
        if step.compensation is None:
            await self._save([], step=index - 1, attempts=0)
            return
        outcome = await self._attempts(step, step.compensation, step.compensation_retry,
                                       "compensation")
        if outcome.ok:
            await self._advance(step, "compensation", outcome, index - 1)
        else:
            await self._park(SagaStatus.FAILED_COMPENSATION,
                             f"compensation of step {step.name!r}: {outcome.error}")

    async def _advance(self, step: Step[Any], phase: str, outcome: _Outcome, to: int) -> None:
        assert outcome.state is not None
        self._state = outcome.state
        await self._save([self._event(step.name, phase, "succeeded", self.record.attempts)],
                         step=to, attempts=0, state=outcome.state.model_dump_json())

    async def _attempts(self, step: Step[Any], action: Action[Any], policy: RetryPolicy,
                        phase: str) -> _Outcome:
        """Run ``action`` until it succeeds or ``policy`` gives up."""
        while True:
            attempt = self.record.attempts + 1
            if attempt > policy.max_attempts:  # the process died during the last one
                return _Outcome(False, error=f"gave up after {attempt - 1} attempts "
                                "(the last one did not finish)")
            await self._save([self._event(step.name, phase, "started", attempt)],
                             attempts=attempt)
            try:
                state = await self._call(step, action, phase)
            except Exception as exc:
                if isinstance(exc, NotRunningError) or not _app_running(self._app):
                    raise StepInterrupted(step.name) from exc
                timed_out = isinstance(exc, TimeoutError)
                error = _describe(exc) if not timed_out or str(exc) else \
                    f"timed out after {step.timeout:g} s"
                outcome = "timed_out" if timed_out else "failed"
                event = self._event(step.name, phase, outcome, attempt, error)
                decision = policy.decide(attempt, exc)
                await self._save([event])
                if not isinstance(decision, Retry):
                    return _Outcome(False, error=error, timed_out=timed_out)
                await asyncio.sleep(decision.delay)
                continue
            return _Outcome(True, state=state)

    async def _call(self, step: Step[Any], action: Action[Any], phase: str) -> pydantic.BaseModel:
        assert self._state is not None
        state = self._state.model_copy(deep=True)
        if isinstance(action, Command):
            return await self._command(step, action, state, phase)
        async with asyncio.timeout(step.timeout):
            result = await action(state)
        return self._checked(result, state, step)

    async def _command(self, step: Step[Any], command: Command[Any],
                       state: pydantic.BaseModel, phase: str) -> pydantic.BaseModel:
        headers = {SAGA_ID_HEADER: self.record.id, SAGA_STEP_HEADER: f"{step.name}/{phase}"}
        timeout = step.timeout if step.timeout is not None else 30.0
        payload = command.payload(state)
        if command.response_type is None:
            reply = await self._app.request(command.topic, payload, timeout=timeout,
                                            key=self.record.id, headers=headers)
        else:
            reply = await self._app.request(command.topic, payload, timeout=timeout,
                                            key=self.record.id, headers=headers,
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

    async def _transition(self, status: SagaStatus) -> None:
        await self._save([self._event("", "saga", status)], status=status)

    async def _park(self, status: SagaStatus, error: str) -> None:
        log.error("saga %s (%s) parked as %s: %s", self.record.id, self.saga.name, status, error)
        await self._save([self._event("", "saga", status, error=error)], status=status,
                         error=error)

    def _event(self, step: str, phase: str, outcome: str, attempt: int = 0,
               error: str | None = None) -> StepEvent:
        return StepEvent(self.record.id, step, phase, str(outcome), attempt, error)

    async def _save(self, events: list[StepEvent], **changes: Any) -> None:
        updated = self.record.replace(**changes) if changes else self.record
        self.record = await self._store.save(updated, events, self._lease)
