"""The shop's products and their initial stock (seeded into an empty inventory)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CATALOG", "Product"]


class Product(NamedTuple):
    """A product as first listed."""

    sku: str
    name: str
    price_cents: int
    stock: int


CATALOG: tuple[Product, ...] = (
    Product("TEA-001", "Longjing green tea, 100 g", 1250, 1000),
    Product("MUG-002", "Porcelain mug", 800, 1000),
    Product("BOOK-003", "Designing Event-Driven Systems", 3990, 1000),
    Product("PEN-004", "Fountain pen", 2400, 1000),
    Product("LAMP-005", "Paper lantern", 1575, 1000),
    Product("SILK-006", "Silk scarf", 5900, 1000),
    # Few in stock, and cheap enough that an order of more than there are is still under
    # the fraud rule's large-order amount: "out of stock" is one click away on the page.
    Product("VASE-007", "Celadon vase (last few)", 1900, 3),
)
