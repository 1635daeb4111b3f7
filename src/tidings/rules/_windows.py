"""The time windows of windowed rules: per group key, the events of the last ``within``
seconds, and their aggregates kept up to date as events come and go.

Each event costs O(1) amortized, however many the window holds: sums and counts are
running totals, ``min``/``max`` a monotonic queue, ``distinct`` a counter of values.
"""

from __future__ import annotations

import operator
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._compiled import CompiledRule

__all__ = ["Windows"]


class _Running:
    """One aggregate (``sum``, ``avg``, ``min``, ``max`` or ``distinct``) of a window."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.total: Any = 0
        self.count = 0
        self.extremes: deque[tuple[int, Any]] = deque()  # (seq, value), monotonic
        self.seen: Counter[str] = Counter()

    def add(self, seq: int, value: Any) -> None:
        self.count += 1
        if self.op == "distinct":
            self.seen[repr(value)] += 1
        elif self.op in ("min", "max"):
            beaten = operator.ge if self.op == "min" else operator.le
            while self.extremes and beaten(self.extremes[-1][1], value):
                self.extremes.pop()
            self.extremes.append((seq, value))
        else:
            self.total += value

    def remove(self, seq: int, value: Any) -> None:
        self.count -= 1
        if self.op == "distinct":
            self.seen[repr(value)] -= 1
            if not self.seen[repr(value)]:
                del self.seen[repr(value)]
        elif self.op in ("min", "max"):
            if self.extremes and self.extremes[0][0] == seq:
                self.extremes.popleft()
        elif self.count == 0:
            self.total = 0  # no rounding left behind by float subtractions
        else:
            self.total -= value

    def value(self) -> Any:
        if self.op == "distinct":
            return len(self.seen)
        if not self.count:
            return 0
        if self.op in ("min", "max"):
            return self.extremes[0][1]
        return self.total / self.count if self.op == "avg" else self.total


@dataclass
class _Entry:
    seq: int
    at: float
    message_id: str
    values: Mapping[str, Any]


class _Group:
    """The events of one group key in a rule's window, oldest first."""

    def __init__(self, within: float, aggregates: Mapping[str, tuple[str, Any]]) -> None:
        self.within = within
        self.entries: deque[_Entry] = deque()
        self.ids: set[str] = set()
        self.running = {name: _Running(op) for name, (op, _) in aggregates.items()}
        self.seq = 0

    def add(self, at: float, message_id: str, values: Mapping[str, Any]) -> None:
        if message_id in self.ids:
            return
        self.seq += 1
        self.entries.append(_Entry(self.seq, at, message_id, values))
        self.ids.add(message_id)
        for name, running in self.running.items():
            if values.get(name) is not None:
                running.add(self.seq, values[name])

    def evict(self, before: float) -> None:
        while self.entries and self.entries[0].at <= before:
            entry = self.entries.popleft()
            self.ids.discard(entry.message_id)
            for name, running in self.running.items():
                if entry.values.get(name) is not None:
                    running.remove(entry.seq, entry.values[name])

    def stats(self, key: Any) -> dict[str, Any]:
        return {"count": len(self.entries), "key": key,
                **{name: running.value() for name, running in self.running.items()}}


class Windows:
    """The events each windowed rule has seen, per group key, in this process.

    Times are message times, so a replay counts as the original run did. A message
    delivered twice (at-least-once) is counted once.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, Any], _Group] = {}
        self._adds = 0

    def add(self, rule: CompiledRule, key: Any, at: float, message_id: str,
            values: dict[str, Any]) -> dict[str, Any]:
        """Count an event in its group; return the group's ``window`` facts."""
        group_key = (rule.rule.name, _hashable(key))
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = _Group(rule.within, rule.aggregates)
        group.add(at, message_id, values)
        group.evict(at - rule.within)
        self._adds += 1
        if self._adds % 1000 == 0:
            self._forget_idle(at)
        return group.stats(key)

    def clear(self, rule: CompiledRule, key: Any) -> None:
        """Empty a group (a rule with ``reset`` fired)."""
        self._groups.pop((rule.rule.name, _hashable(key)), None)

    def _forget_idle(self, now: float) -> None:
        # A group whose newest event left its window (in message time, so a replay of old
        # events keeps its windows) is empty in effect: forget it.
        for group_key in [k for k, v in self._groups.items()
                          if not v.entries or v.entries[-1].at <= now - v.within]:
            del self._groups[group_key]


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key
