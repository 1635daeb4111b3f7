"""Keeping secrets off the console's pages: payloads are shown with card numbers,
passwords and tokens masked, and URLs without their passwords."""

from __future__ import annotations

import re
from typing import Any

from .._redact import redact_url

__all__ = ["redact", "redact_url"]

_SECRET_NAME = re.compile(r"card|passw|secret|token|cvv|cvc|pan$|iban|api_?key", re.I)
_DIGITS = re.compile(r"^[0-9][0-9 -]{10,22}[0-9]$")
_IN_TEXT = re.compile(r"(?<![0-9])[0-9](?:[0-9 -]{10,22})[0-9](?![0-9])")


def redact(value: Any) -> Any:
    """``value`` (decoded JSON) with secret-named fields masked, and card numbers (12 to
    19 digits passing the Luhn check) masked wherever they appear in a string."""
    if isinstance(value, dict):
        return {k: _mask(v) if _SECRET_NAME.search(str(k)) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and any(c.isdigit() for c in value):
        return _IN_TEXT.sub(lambda m: _mask(m.group()) if _card_like(m.group()) else m.group(),
                            value)
    return value


def _mask(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return redact(value)
    text = str(value)
    digits = re.sub(r"\D", "", text)
    if _card_like(text):
        return f"**** {digits[-4:]}"
    return "****" if value not in (None, "") else value


def _card_like(text: str) -> bool:
    """12 to 19 digits (spaces and dashes allowed) with a valid Luhn check digit."""
    if not _DIGITS.match(text):
        return False
    digits = [int(c) for c in text if c.isdigit()]
    if not 12 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
