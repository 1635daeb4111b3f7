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

__all__ = ["Action", "Command", "Parallel", "Saga", "Sleep", "Step", "StepLike"]

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
    step fails. A step without an action only holds a compensation (marking the
    business object failed, say): reaching it costs no write of its own (it is recorded
    with the next step's), and when a later step fails its compensation runs like any
    other. Each attempt is limited to ``timeout`` seconds (None: no limit) and
    failed attempts are retried by ``retry`` (a :class:`~tidings.RetryPolicy`; its
    ``give_up_on`` errors fail the step at once). ``compensation_retry`` does the same
    for the compensation; a compensation that exhausts it parks the saga in
    ``FAILED_COMPENSATION``. A ``retriable`` step comes after the saga's point of no
    return: when it exhausts its retries the saga is parked (``PARKED``) instead of
    compensated, to be retried by hand.
    """

    name: str
    action: Action[S] | None = None
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
        if self.action is not None:
            _check_action(self.name, "action", self.action)
        elif self.compensation is None or self.retriable:
            raise SagaDefinitionError(
                f"step {self.name!r} has no action: it must hold a compensation and not "
                "be retriable")
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


@dataclass(frozen=True, slots=True)
class Sleep(Generic[S]):
    """A step that waits ``seconds`` once it is reached, or until ``until(state)`` (a
    Unix time, e.g. a deadline kept in the state). The wake-up time is stored, so a
    restarted service wakes the saga at that time: not at once, not a full wait later.
    A long sleep holds no task and no lease. It never fails and has nothing to undo."""

    name: str
    seconds: float | None = None
    until: Callable[[S], float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SagaDefinitionError(f"invalid step name {self.name!r}")
        if (self.seconds is None) == (self.until is None):
            raise SagaDefinitionError(f"Sleep {self.name!r}: give seconds or until, not both")
        if self.seconds is not None and not self.seconds >= 0:
            raise SagaDefinitionError(f"Sleep {self.name!r}: seconds must be >= 0")
        if self.until is not None and not callable(self.until):
            raise SagaDefinitionError(f"Sleep {self.name!r}: until must be callable")

    def wake_at(self, state: S, now: float) -> float:
        """When a saga that reaches this step at ``now`` goes on."""
        if self.until is not None:
            return float(self.until(state))
        assert self.seconds is not None
        return now + self.seconds


@dataclass(frozen=True, slots=True)
class Parallel(Generic[S]):
    """Steps run at once, joined: the saga goes on when every branch succeeded.

    Each branch is a :class:`Step` with its own timeout, retries and compensation, and
    gets a copy of the state; the fields a branch changes are merged into the state
    (branches should change different fields: on a clash the later branch wins). When
    a branch fails for good, the others finish their attempts, then every branch that
    succeeded (or timed out, so may have taken effect) is compensated, and the steps
    before. Branches are all ``retriable`` (past the point of no return) or none is.
    """

    name: str
    branches: tuple[Step[S], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SagaDefinitionError(f"invalid step name {self.name!r}")
        object.__setattr__(self, "branches", tuple(self.branches))
        if len(self.branches) < 2 or not all(isinstance(b, Step) for b in self.branches):
            raise SagaDefinitionError(f"Parallel {self.name!r} takes two or more Steps")
        if any(b.action is None for b in self.branches):
            raise SagaDefinitionError(f"Parallel {self.name!r}: every branch needs an action")
        if len({b.retriable for b in self.branches}) > 1:
            raise SagaDefinitionError(f"Parallel {self.name!r}: its branches are all "
                                      "retriable or none is")

    @property
    def retriable(self) -> bool:
        """Whether the group comes after the saga's point of no return."""
        return self.branches[0].retriable


#: What a saga is made of.
StepLike = Step[S] | Sleep[S] | Parallel[S]


class Saga(Generic[S]):
    """A saga definition: a name, the pydantic model of its state, and its steps.

    Steps run in order (a :class:`Parallel` step runs its branches at once); when one
    fails for good, the compensations of the steps before it run in reverse order.
    Every step that a later, non-retriable step can undo needs a compensation: a step
    without one must be the last, or be followed only by ``retriable`` steps (its
    point of no return); a parallel branch needs one if a sibling can fail too.
    """

    def __init__(self, name: str, state: type[S], steps: Sequence[StepLike[S]]) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SagaDefinitionError(f"invalid saga name {name!r}")
        if not (isinstance(state, type) and issubclass(state, pydantic.BaseModel)):
            raise SagaDefinitionError(f"saga {name!r}: state must be a pydantic model class")
        self.name = name
        self.state = state
        self.steps: tuple[StepLike[S], ...] = tuple(steps)
        _check_steps(name, self.steps)

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, {self.state.__name__}, {len(self.steps)} steps)"

    def step_index(self, name: str) -> int:
        """The position of the step called ``name``."""
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        raise KeyError(name)


def _can_fail(step: StepLike[Any]) -> bool:
    """Whether a step can fail for good and so undo the steps before it."""
    if isinstance(step, Sleep) or (isinstance(step, Step) and step.action is None):
        return False
    return not step.retriable


def _check_steps(saga: str, steps: tuple[StepLike[Any], ...]) -> None:
    if not steps:
        raise SagaDefinitionError(f"saga {saga!r} has no steps")
    for step in steps:
        if not isinstance(step, Step | Sleep | Parallel):
            raise SagaDefinitionError(f"saga {saga!r}: {step!r} is not a Step")
    names = [s.name for s in steps] + \
        [b.name for s in steps if isinstance(s, Parallel) for b in s.branches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SagaDefinitionError(f"saga {saga!r} has duplicate step names: {duplicates}")
    for index, step in enumerate(steps):
        later = steps[index + 1:]
        if not isinstance(step, Sleep) and step.retriable:
            bad = next((s for s in later if _can_fail(s)), None)
            if bad is not None:
                raise SagaDefinitionError(
                    f"saga {saga!r}: step {bad.name!r} comes after the retriable step "
                    f"{step.name!r}, so it must be retriable too (no compensation after "
                    "the point of no return)"
                )
        undoable = [s.name for s in later if _can_fail(s)]
        if isinstance(step, Step):
            _check_compensation(saga, step, undoable, "step")
        elif isinstance(step, Parallel):
            for branch in step.branches:
                siblings = [b.name for b in step.branches if b is not branch and _can_fail(b)]
                _check_compensation(saga, branch, siblings + undoable, "parallel branch")


def _check_compensation(saga: str, step: Step[Any], undoable: list[str], what: str) -> None:
    if step.compensation is None and not step.retriable and undoable:
        raise SagaDefinitionError(
            f"saga {saga!r}: {what} {step.name!r} needs a compensation, since step "
            f"{undoable[0]!r} can fail and would leave it in effect; "
            "add compensation=..., or mark the steps after it retriable=True"
        )
