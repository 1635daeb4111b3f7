"""Errors of the saga toolkit, all in the one tidings tree.

::

    TidingsError
    ├── ConfigurationError
    │   └── SagaDefinitionError   a saga definition is invalid (raised when it is built)
    └── SagaError                 a saga instance cannot be found, retried or saved
        ├── SagaNotFoundError     no saga instance has this id
        └── SagaConflictError     another instance of the service owns the saga now
"""

from __future__ import annotations

from .._errors import ConfigurationError, TidingsError

__all__ = ["SagaConflictError", "SagaDefinitionError", "SagaError", "SagaNotFoundError"]


class SagaDefinitionError(ConfigurationError):
    """A saga definition is invalid; raised when it is built, never while it runs."""


class SagaError(TidingsError):
    """An operation on a saga instance failed."""


class SagaNotFoundError(SagaError, LookupError):
    """No saga instance has this id."""


class SagaConflictError(SagaError):
    """The saga's lease moved to another instance (or its version changed) meanwhile."""
