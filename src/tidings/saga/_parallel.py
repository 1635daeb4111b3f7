"""A parallel step: its branches run at once, each with its own attempts and timers.

Progress is the saga record's ``branches`` JSON, one entry per branch: its attempts and
timers while it runs, ``done`` once it succeeded (its state changes merged into the
saga's state in the same write). The write that reaches the step records every branch's
first attempt, and the last branch's success is written with the step's: a step of n
branches costs n writes. Going backward, the entries left are the branches to
compensate; each is removed by the write that records its compensation. No JSON at all
going backward means the group had succeeded and a later step failed: every branch is
compensated.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from ._attempt import Outcome, started
from ._definition import Parallel, Step
from ._store import Direction, StepEvent

if TYPE_CHECKING:
    from ._run import SagaRun

__all__ = ["ParallelRun"]


def arm_branches(saga_id: str, group: Parallel[Any]) -> tuple[str, list[StepEvent]]:
    """The ``branches`` JSON and history lines that record the start of the first
    attempt of every branch of ``group``, written with the step before it."""
    progress = {branch.name: started(branch, 1) for branch in group.branches}
    events = [StepEvent(saga_id, branch.name, "action", "started", 1)
              for branch in group.branches]
    return json.dumps(progress), events


class _BranchTrack:
    """A branch's attempts and timers: its entry of the ``branches`` JSON."""

    dormant = False  # a branch waits in memory: its siblings hold the saga anyway
    defers_final = False  # its siblings go on: its failure is written at once

    def __init__(self, group: ParallelRun, name: str, armed: bool) -> None:
        self._group = group
        self._entry = group.progress.setdefault(name, {})
        self.armed = armed

    @property
    def attempts(self) -> int:
        return int(self._entry.get("attempts", 0))

    @property
    def wake_at(self) -> float | None:
        return self._entry.get("wake_at")

    @property
    def deadline(self) -> float | None:
        return self._entry.get("deadline")

    def disarm(self) -> None:
        """The branch's next attempt is written before it starts."""
        self.armed = False

    async def save(self, events: Sequence[StepEvent], **timers: Any) -> None:
        await self._group.save(events, self._entry, timers)


def _changes(before: pydantic.BaseModel, after: pydantic.BaseModel) -> dict[str, Any]:
    return {name: getattr(after, name) for name in type(after).model_fields
            if getattr(after, name) != getattr(before, name)}


class ParallelRun:
    """Runs (or compensates) the branches of one :class:`Parallel` step of a saga run."""

    def __init__(self, run: SagaRun, group: Parallel[Any]) -> None:
        self.run = run
        self.group = group
        branches = run.record.branches
        self.progress: dict[str, dict[str, Any]] = json.loads(branches) if branches else {}
        # The write that reached the step recorded every branch's first attempt.
        self._armed = run._armed
        run._armed = False
        #: The history line of the last branch to succeed, written with the step's
        #: success rather than alone.
        self.unsaved: list[StepEvent] = []
        if branches is None and run.record.direction is Direction.BACKWARD:
            # Reached going back from a later step: the whole group had succeeded.
            self.progress = {b.name: {} for b in group.branches}

    def undo_list(self) -> str | None:
        """The ``branches`` JSON going backward after the group failed: the branches
        that took effect, or may have (they timed out); None if there are none."""
        undo: dict[str, dict[str, Any]] = {
            name: {} for name, entry in self.progress.items()
            if entry.get("done") or entry.get("maybe")}
        return json.dumps(undo) if undo else None

    async def save(self, events: Sequence[StepEvent], entry: dict[str, Any],
                   changes: dict[str, Any], **record: Any) -> None:
        """Write ``changes`` to a branch's entry, with the record's other ``record``
        changes, in one write."""
        entry.update(changes)
        await self.run.save(list(events), branches=json.dumps(self.progress), **record)

    async def forward(self) -> Outcome:
        """Run the branches not done yet at once; the first failure once all ended."""
        pending = [b for b in self.group.branches
                   if not self.progress.get(b.name, {}).get("done")]
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [tasks.create_task(self._branch(b, b.action, "action"))
                           for b in pending]
        except BaseExceptionGroup as errors:  # the app stopped, or the lease was lost
            raise errors.exceptions[0] from None
        failed = [r.result() for r in running if not r.result().ok]
        if failed:  # with the state a branch's StepFailedError changed, if one did
            carried = any(f.state is not None for f in failed)
            return Outcome(False, error=failed[0].error,
                           state=self.run.state if carried else None)
        return Outcome(True, state=self.run.state)

    async def backward(self) -> Outcome:
        """Compensate the branches left to undo, one at a time, last branch first."""
        for branch in reversed(self.group.branches):
            if branch.name not in self.progress:
                continue
            if branch.compensation is None:
                outcome = Outcome(True, state=self.run.state)
            else:
                outcome = await self._branch(branch, branch.compensation, "compensation")
            if not outcome.ok:
                return outcome
        return Outcome(True, state=self.run.state)

    async def _branch(self, branch: Step[Any], action: Any, phase: str) -> Outcome:
        run = self.run
        policy = branch.retry if phase == "action" else branch.compensation_retry
        track = _BranchTrack(self, branch.name, self._armed and phase == "action")
        before = run.state
        assert before is not None
        outcome = await run.attempts(branch, action, policy, phase, track)
        entry = self.progress[branch.name]
        if outcome.state is not None:  # a success's, or a StepFailedError's: merged
            assert run.state is not None
            run.state = run.state.model_copy(update=_changes(before, outcome.state))
        if not outcome.ok:
            entry["maybe"] = outcome.timed_out
            if outcome.state is None:
                return outcome
            return Outcome(False, state=run.state, error=outcome.error,
                           timed_out=outcome.timed_out)
        assert run.state is not None
        event = run.event(branch.name, phase, "succeeded", track.attempts)
        if phase == "action":
            entry.clear()
            entry["done"] = True
            if all(e.get("done") for e in self.progress.values()) and \
                    len(self.progress) == len(self.group.branches):
                # The last branch: its success is written with the step's.
                self.unsaved.append(event)
                return Outcome(True, state=run.state)
        else:
            del self.progress[branch.name]
        await self.save([event], entry, {}, state=run.state.model_dump_json())
        return Outcome(True, state=run.state)
