"""Saga definitions: an ordered list of steps, each an action and its compensation.

A definition is a pure value, checked when it is built: every mistake (a step that
needs a compensation and has none, a duplicate step name, a bad timeout) raises
:class:`SagaDefinitionError` at import time of the service, not in the middle of a run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic

from .._retry import RetryPolicy
from ._errors import SagaDefinitionError

__all__ = ["Action", "Command", "Saga", "Step"]

S = TypeVar("S", bound=pydantic.BaseModel)

#: A local step: receives a copy of the state, returns the new state (or None to keep
#: the copy it may have changed in place).
LocalAction = Callable[[S], Awaitable[S | None]]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Command(Generic[S]):
    """A step that sends a command over the bus with ``app.request`` and awaits the reply.

    ``payload(state)`` builds the request; ``on_reply(state, reply)`` folds the decoded
    reply (``response_type`` if given) into the state and returns it (or None to keep
    the state as changed in place). A responder that raises fails the step with
    :class:`~tidings.RemoteError`; no reply within the step's timeout fails it with
    :class:`~tidings.RequestTimeoutError`. The request carries the headers
    ``tidings-saga-id`` and ``tidings-saga-step`` so participants can deduplicate.
    """

    topic: str
    payload: Callable[[S], Any]
    on_reply: Callable[[S, Any], S | None] | None = None
    response_type: type[Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not _NAME.match(self.topic):
            raise SagaDefinitionError(f"invalid command topic {self.topic!r}")
        if not callable(self.payload):
            raise SagaDefinitionError(f"Command({self.topic!r}).payload must be callable")
        if self.on_reply is not None and not callable(self.on_reply):
            raise SagaDefinitionError(f"Command({self.topic!r}).on_reply must be callable")


Action = LocalAction[S] | Command[S]

_DEFAULT_RETRY = RetryPolicy(max_attempts=3, backoff=0.2)
_DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, backoff=0.5)


@dataclass(frozen=True, slots=True)
class Step(Generic[S]):
    """One step of a saga.

    ``action`` runs in the forward direction, ``compensation`` undoes it when a later
    step fails. Each attempt is limited to ``timeout`` seconds (None: no limit) and
    failed attempts are retried by ``retry`` (a :class:`~tidings.RetryPolicy`; its
    ``give_up_on`` errors fail the step at once). ``compensation_retry`` does the same
    for the compensation; a compensation that exhausts it parks the saga in
    ``FAILED_COMPENSATION``. A ``retriable`` step comes after the saga's point of no
    return: when it exhausts its retries the saga is parked (``PARKED``) instead of
    compensated, to be retried by hand.
    """

    name: str
    action: Action[S]
    compensation: Action[S] | None = None
    timeout: float | None = 30.0
    retry: RetryPolicy = field(default=_DEFAULT_RETRY)
    compensation_retry: RetryPolicy = field(default=_DEFAULT_COMPENSATION_RETRY)
    retriable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SagaDefinitionError(
                f"invalid step name {self.name!r}: use 1-200 letters, digits, '.', '_' or '-'"
            )
        _check_action(self.name, "action", self.action)
        if self.compensation is not None:
            _check_action(self.name, "compensation", self.compensation)
        if self.timeout is not None and not self.timeout > 0:
            raise SagaDefinitionError(f"step {self.name!r}: timeout must be > 0 or None")
        for policy in (self.retry, self.compensation_retry):
            if not isinstance(policy, RetryPolicy):
                raise SagaDefinitionError(f"step {self.name!r}: retry must be a RetryPolicy")


def _check_action(step: str, what: str, action: object) -> None:
    if not isinstance(action, Command) and not callable(action):
        raise SagaDefinitionError(
            f"step {step!r}: {what} must be an async callable or a Command, not {action!r}"
        )


class Saga(Generic[S]):
    """A saga definition: a name, the pydantic model of its state, and its steps.

    Steps run in order; when one fails for good, the compensations of the steps
    before it run in reverse order. Every step that a later, non-retriable step can
    undo needs a compensation: a step without one must be the last, or be followed
    only by ``retriable`` steps (its point of no return).
    """

    def __init__(self, name: str, state: type[S], steps: Sequence[Step[S]]) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SagaDefinitionError(f"invalid saga name {name!r}")
        if not (isinstance(state, type) and issubclass(state, pydantic.BaseModel)):
            raise SagaDefinitionError(f"saga {name!r}: state must be a pydantic model class")
        self.name = name
        self.state = state
        self.steps: tuple[Step[S], ...] = tuple(steps)
        _check_steps(name, self.steps)

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, {self.state.__name__}, {len(self.steps)} steps)"

    def step_index(self, name: str) -> int:
        """The position of the step called ``name``."""
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        raise KeyError(name)


def _check_steps(saga: str, steps: tuple[Step[Any], ...]) -> None:
    if not steps:
        raise SagaDefinitionError(f"saga {saga!r} has no steps")
    names = [s.name for s in steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SagaDefinitionError(f"saga {saga!r} has duplicate step names: {duplicates}")
    for index, step in enumerate(steps):
        if not isinstance(step, Step):
            raise SagaDefinitionError(f"saga {saga!r}: {step!r} is not a Step")
        later = steps[index + 1:]
        if step.retriable and any(not s.retriable for s in later):
            bad = next(s for s in later if not s.retriable)
            raise SagaDefinitionError(
                f"saga {saga!r}: step {bad.name!r} comes after the retriable step "
                f"{step.name!r}, so it must be retriable too (no compensation after "
                "the point of no return)"
            )
        undoable = [s for s in later if not s.retriable]
        if step.compensation is None and not step.retriable and undoable:
            raise SagaDefinitionError(
                f"saga {saga!r}: step {step.name!r} needs a compensation, since step "
                f"{undoable[0].name!r} after it can fail and would leave it in effect; "
                "add compensation=..., or mark the steps after it retriable=True"
            )
