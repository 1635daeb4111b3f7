"""Errors of the saga toolkit, all in the one tidings tree.

::

    TidingsError
    ├── ConfigurationError
    │   └── SagaDefinitionError   a saga definition is invalid (raised when it is built)
    └── SagaError                 a saga instance cannot be found, retried or saved
        ├── SagaNotFoundError     no saga instance has this id
        ├── SagaConflictError     another instance of the service owns the saga now
        └── StepFailedError       raised by a step to fail for good at once
"""

from __future__ import annotations

from typing import Any

from .._errors import ConfigurationError, TidingsError

__all__ = ["SagaConflictError", "SagaDefinitionError", "SagaError", "SagaNotFoundError",
           "StepFailedError"]


class SagaDefinitionError(ConfigurationError):
    """A saga definition is invalid; raised when it is built, never while it runs."""


class SagaError(TidingsError):
    """An operation on a saga instance failed."""


class SagaNotFoundError(SagaError, LookupError):
    """No saga instance has this id."""


class SagaConflictError(SagaError):
    """The saga's lease moved to another instance (or its version changed) meanwhile."""


class StepFailedError(SagaError):
    """Raised by a step's action, or by a :class:`~tidings.saga.Command`'s ``on_reply``,
    to fail the step for good at once, whatever its retry policy says: the saga
    compensates the steps before it (past its point of no return, it parks). Raised by
    a compensation, it parks the saga in ``FAILED_COMPENSATION`` at once.

    ``state``, if given (the saga's state model), is saved with the failure, so the
    compensations see it: the reason an order is cancelled, say::

        def on_reply(order: Order, reply: dict) -> Order:
            if reply["type"] == "STOCK_REJECTED":
                order.failure = reply["reason"]
                raise StepFailedError(reply["reason"], state=order)
            return order
    """

    def __init__(self, reason: str, *, state: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state
