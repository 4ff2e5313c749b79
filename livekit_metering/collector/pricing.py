"""The collector's view of pricing: a price per record, and an invoice from summed usage.

Pricing lives in ``livekit_metering.pricing`` (PriceBook); this module is the one place the
collector touches it. Prices are linear in quantity (``price_of`` does not round), so a summed
roll-up row priced as one record costs exactly what its records cost one by one: rows are summed
per day, and each is priced as on its day, so a price change within a month applies from its date.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ..pricing import PriceBook, PriceKey, summed_record
from ..records import MeterRecord
from .store.base import UsageRow

__all__ = ["PLANS", "Pricer", "aggregate_record", "usage_price_key"]

PLANS = ("build", "ship", "scale")


class Pricer:
    def __init__(self, book: PriceBook) -> None:
        self.book = book

    @classmethod
    def bundled(cls, path: str | None = None) -> Pricer:
        return cls(PriceBook.load(path) if path else PriceBook.bundled())

    def price_of(self, record: MeterRecord, plan: str = "ship") -> Decimal | None:
        return self.book.price_of(record, plan=plan)

    def invoice(self, rows: Sequence[UsageRow], plan: str, month: str) -> dict[str, Any]:
        records = [aggregate_record(row) for row in rows]
        return self.book.invoice(records, plan=plan, month=month).to_json()


def aggregate_record(row: UsageRow) -> MeterRecord:
    """A day's summed usage as one record, so sums are priced by the same code as single records."""
    return summed_record(usage_price_key(row), row.billable, row.raw)


def usage_price_key(row: UsageRow) -> PriceKey:
    return (row.resource.value, row.unit.value, row.provider, row.model, row.language, row.day)
