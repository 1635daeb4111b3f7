"""Card numbers: the check every service applies before a number goes anywhere."""

from __future__ import annotations

__all__ = ["luhn_valid", "normalize_card"]


def luhn_valid(number: str) -> bool:
    """Whether ``number`` is 12 to 19 ASCII digits with a valid Luhn check digit."""
    if not (number.isascii() and number.isdigit() and 12 <= len(number) <= 19):
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        digit = int(ch)
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def normalize_card(number: str) -> str:
    """``number`` as digits only: the spaces and dashes people type between groups
    (``4000 0000 0000 0002``, ``4000-0000-0000-0002``) go; anything else stays, for
    :func:`luhn_valid` to refuse."""
    return number.replace(" ", "").replace("-", "")
