"""Money for people: USD amounts as a terminal shows them."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["usd"]


def usd(amount: Decimal | None, places: int = 4) -> str:
    """``$1,234.5678``, with enough places to see sub-cent inference costs; ``<$0.0001`` for less.

    None is a usage the price book cannot price: shown as "unpriced", never as $0.
    """
    if amount is None:
        return "unpriced"
    quantum = Decimal(1).scaleb(-places)
    shown = amount.quantize(quantum)
    if shown == 0 and amount != 0:
        return f"<${quantum}"
    return f"-${-shown:,}" if shown < 0 else f"${shown:,}"
