"""Card numbers, and the tokens that stand for them everywhere but the payments vault.

The shop's page (or any client) hands the number to the payments service's
``POST /vault`` and gets a card token back, as a browser hands it to a payment
gateway's tokenization API; orders, the bus, the saga states, the logs and every other
database only ever see the token and the last four digits.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

from .auth import sign
from .settings import Settings

__all__ = ["CardToken", "luhn_valid", "normalize_card"]


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


_CARD_TOKEN = re.compile(r"^card_([0-9a-f]{16})_(\d{4})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class CardToken:
    """What a card token says: the payments vault's entry, the card's last four digits,
    and the user it was issued to."""

    vault_id: str
    last4: str
    user_id: int

    def encode(self, settings: Settings) -> str:
        """The token: the vault id and last four digits, signed with the user's id, so
        any service checks that it is genuine and whose it is."""
        signature = sign(settings, "card", f"{self.user_id}:{self.vault_id}:{self.last4}")
        return f"card_{self.vault_id}_{self.last4}.{signature}"

    @classmethod
    def issue(cls, user_id: int, number: str) -> CardToken:
        """A new token for ``number`` (only its last four digits are kept)."""
        return cls(vault_id=secrets.token_hex(8), last4=number[-4:], user_id=user_id)

    @classmethod
    def decode(cls, settings: Settings, token: str, user_id: int) -> CardToken | None:
        """The token's content if it is genuine and ``user_id``'s; else None."""
        match = _CARD_TOKEN.match(token)
        if match is None:
            return None
        card = cls(vault_id=match.group(1), last4=match.group(2), user_id=user_id)
        expected = card.encode(settings).rpartition(".")[2]
        return card if hmac.compare_digest(match.group(3), expected) else None
