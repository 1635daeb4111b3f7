"""Which offsets of a partition may be committed: the contiguous prefix of finished ones."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Tracks dispatched offsets of one partition, in order, and which have finished.

    ``commit_point`` is the offset after the last record of the finished prefix: it is
    what the group may commit without skipping unfinished work.
    """

    __slots__ = ("_done", "_pending", "add", "commit_point", "committed")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.commit_point = -1
        self.committed = -1
        #: ``add(offset)``: a record at ``offset`` was dispatched (offsets arrive in
        #: increasing order). The deque's own method: it runs once per record.
        self.add = self._pending.append

    def finish(self, offset: int) -> None:
        """The record at ``offset`` is done (handled or dead-lettered)."""
        pending = self._pending
        if pending and pending[0] == offset:
            pending.popleft()
            self.commit_point = offset + 1
            if self._done:
                self._drain()
        else:
            self._done.add(offset)

    def finish_all(self, offsets: Iterable[int]) -> None:
        """``finish`` each of ``offsets`` (a batch's, in one call)."""
        pending, done = self._pending, self._done
        for offset in offsets:
            if pending and pending[0] == offset:
                pending.popleft()
                self.commit_point = offset + 1
            else:
                done.add(offset)
        self._drain()

    def _drain(self) -> None:
        """Move the commit point past finished offsets now at the head."""
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            head = pending.popleft()
            done.discard(head)
            self.commit_point = head + 1

    def skip_to(self, offset: int) -> None:
        """Nothing is pending and the log's reader is at ``offset``: what lies before it
        (records never fetched, such as transaction markers) needs no handling."""
        if not self._pending and offset > self.commit_point:
            self.commit_point = offset

    @property
    def dirty(self) -> bool:
        """Whether there is progress that has not been committed."""
        return self.commit_point > self.committed
