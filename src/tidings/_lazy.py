"""Read-only sequences whose items are made when they are read.

Made all at once, a thousand small result objects (an append's positions, a batch's
``Published``) live through the garbage collections that building them triggers and
are promoted for the full collections to walk; most callers never read them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar, overload

__all__ = ["LazySequence"]

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """A sequence that makes item ``i`` on each read (``_item``); it compares equal to
    any sequence of equal items, a list included, and is unhashable, like a list."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, index: int) -> T:
        """Make item ``index`` (negative indices count from the end, as for a list)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        return self._item(index)

    def __iter__(self) -> Iterator[T]:
        return map(self._item, range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # compares like a list, so unhashable

    def __repr__(self) -> str:
        return repr(list(self))
