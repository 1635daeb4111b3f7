"""Refusing, at start, what a backend cannot honour (never a silent downgrade).

Each subscriber option that needs a :class:`~tidings.ports.Capability` is checked
against the transport's declared ``capabilities``; the error names the backend, the
option, the handler and the missing capability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import ConfigurationError
from ._redact import redact_url
from .ports import Capability, SupportsTransactions, Transport

if TYPE_CHECKING:
    from ._subscriber import SubscriberSpec

__all__ = ["needed_capabilities", "refuse_delay", "require_capabilities"]

_HINTS = {
    Capability.EXACTLY_ONCE: " (kafka:// has it; for exactly-once effects elsewhere, use "
                             "the inbox of tidings.sqlalchemy)",
}


def needed_capabilities(spec: SubscriberSpec) -> dict[Capability, str]:
    """The capabilities ``spec`` needs, each with the option that needs it."""
    from ._subscriber import Role

    needs: dict[Capability, str] = {}
    if spec.exactly_once:
        needs[Capability.EXACTLY_ONCE] = "exactly_once=True"
    if spec.role is Role.WORKER:
        needs[Capability.PRIORITY] = "a work queue (priorities)"
    if spec.concurrency > 1:
        needs[Capability.ORDER_PER_KEY] = f"concurrency={spec.concurrency} (order per key)"
    if spec.role is not Role.CRON:
        needs[Capability.GROUPS] = f"group {spec.group!r}"
    # A parked key's lane is kept in a log that a member reads back (see _parking).
    if not spec.retry.blocking:
        needs[Capability.REPLAY] = "RetryPolicy(blocking=False) (a durable park log)"
    elif spec.dead_letter == "park-key":
        needs[Capability.REPLAY] = "dead_letter='park-key' (a durable park log)"
    return needs


def require_capabilities(transport: Transport, broker: str,
                         specs: Sequence[SubscriberSpec]) -> None:
    """Raise :class:`~tidings.ConfigurationError` for the first option ``transport``
    cannot honour."""
    where = redact_url(broker.split("?")[0])
    backend = f"the {transport.system} backend ({where!r})"
    for spec in specs:
        handler = spec.handler.func.__qualname__
        for capability, option in needed_capabilities(spec).items():
            if capability not in transport.capabilities:
                raise ConfigurationError(
                    f"{handler}: {option} needs the {capability.value!r} capability, which "
                    f"{backend} does not have" + _HINTS.get(capability, "")
                )
    handlers = [s.handler.func.__qualname__ for s in specs if s.exactly_once]
    if handlers and not isinstance(transport, SupportsTransactions):
        raise ConfigurationError(
            f"{', '.join(handlers)}: exactly_once=True needs a backend that commits appends "
            f"and offsets in one transaction (kafka://), not {where!r}; "
            "for exactly-once effects here, use the inbox of tidings.sqlalchemy"
        )


def refuse_delay(transport: Transport, broker: str) -> None:
    """Raise :class:`~tidings.ConfigurationError` for a delay ``transport`` cannot keep."""
    if Capability.DELAY not in transport.capabilities:
        where = broker.split("?")[0]
        raise ConfigurationError(
            f"delay= needs the 'delay' capability, which the {transport.system} backend "
            f"({where!r}) does not have"
        )
