"""Backends load by name: ``scheme://...`` imports ``tidings.backends.<scheme>``.

A backend module exposes ``from_url(url: str) -> Transport``. Only this loader imports
backend packages, so the core never depends on a driver. Backends of other packages
register by entry point, in the ``tidings.backends`` group: the entry point's name is the
URL scheme and its value the module (``myscheme = mypackage.backend``), which exposes
``from_url`` too. A built-in scheme cannot be replaced that way.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from ._errors import ConfigurationError, MissingDependencyError
from ._redact import redact_url
from .ports import Transport

__all__ = ["ENTRY_POINT_GROUP", "SCHEMES", "load_transport", "read_only_url"]

#: scheme -> (module, pip extra that brings its driver, or None when built in)
SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("tidings.backends.memory", None),
    "sqlite": ("tidings.backends.sqlite", None),
    "kafka": ("tidings.backends.kafka", "kafka"),
    "mqtt": ("tidings.backends.mqtt", "mqtt"),
    "amqp": ("tidings.backends.amqp", "amqp"),
    "amqps": ("tidings.backends.amqp", "amqp"),
}

#: The entry-point group where other packages register backends.
ENTRY_POINT_GROUP = "tidings.backends"


def _schemes() -> dict[str, tuple[str, str | None]]:
    """The built-in schemes, then those registered by entry point."""
    found = {ep.name: (ep.value, None) for ep in entry_points(group=ENTRY_POINT_GROUP)
             if ep.name not in SCHEMES}
    return {**SCHEMES, **found}


def load_transport(url: str) -> Transport:
    """Build the transport for a broker URL such as ``sqlite:///.tidings/bus.db``."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    schemes = SCHEMES if scheme in SCHEMES else _schemes()
    if scheme not in schemes:
        supported = ", ".join(f"{name}://" for name in schemes)
        raise ConfigurationError(
            f"unsupported broker URL {redact_url(url)!r}: expected one of {supported}"
        )
    module_name, extra = schemes[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise MissingDependencyError(f"the {scheme}:// backend", extra) from exc
    factory = getattr(module, "from_url", None)
    if factory is None:
        raise ConfigurationError(f"the {scheme}:// backend is not available in this install")
    transport: Transport = factory(url)
    return transport


def read_only_url(url: str) -> str:
    """``url`` opened for inspection only: a ``sqlite://`` bus gets ``mode=ro`` (nothing is
    created, a missing file is an error); other backends are unchanged."""
    if not url.startswith("sqlite:") or "mode=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}mode=ro"
