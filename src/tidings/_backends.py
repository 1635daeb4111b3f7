"""Backends load by name: ``scheme://...`` imports ``tidings.backends.<scheme>``.

A backend module exposes ``from_url(url: str) -> Transport``. Only this loader imports
backend packages, so the core never depends on a driver.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ._errors import ConfigurationError, MissingDependencyError
from .ports import Transport

__all__ = ["SCHEMES", "load_transport"]

#: scheme -> (module, pip extra that brings its driver, or None when built in)
SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("tidings.backends.memory", None),
    "sqlite": ("tidings.backends.sqlite", None),
    "kafka": ("tidings.backends.kafka", "kafka"),
    "mqtt": ("tidings.backends.mqtt", "mqtt"),
}


def load_transport(url: str) -> Transport:
    """Build the transport for a broker URL such as ``sqlite:///.tidings/bus.db``."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in SCHEMES:
        supported = ", ".join(f"{name}://" for name in SCHEMES)
        raise ConfigurationError(
            f"unsupported broker URL {url!r}: expected one of {supported}"
        )
    module_name, extra = SCHEMES[scheme]
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
