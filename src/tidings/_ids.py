"""Message ids: 32 hex digits, unique without a system call per id.

``uuid.uuid4()`` reads the OS random source for every id, which costs more than the
rest of publishing a message. An id here is a random 64-bit prefix, drawn once per
process (and again in a forked child), followed by a 64-bit counter: unique within a
process by construction, and across processes with the odds of a 64-bit collision.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["new_id"]


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


_prefix = ""
_counter = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A fresh message id: 32 lowercase hex digits."""
    return _prefix + (next(_counter) & 0xFFFFFFFFFFFFFFFF).to_bytes(8).hex()
