"""Summed usage, priced: how every view (report, collector API, dashboard, examples) costs a group.

Usage is summed in billable base units per price key (resource, unit, provider, model, language and
UTC day: a price is taken as it was on the usage's day), then each sum is priced once. A group's cost
is the priced part plus the names of what has no price: never null because one model is unknown,
and never $0 for what is unknown. The sums are exact integers and are priced in a fixed order, so
the same usage gives the same figures whichever view sums it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from ..records import UNIT_SIZE, MeterRecord, Resource, Unit
from .book import not_billed
from .cost import usage_label
from .rows import PriceRow

if TYPE_CHECKING:
    from .book import PriceBook

__all__ = ["Cost", "Costing", "PriceKey", "PricedUsage", "UsageLine", "price_key", "price_usage", "summed_record"]

# What a price depends on, in wire names: resource, unit, provider, model, language and the UTC day
# (ISO) of the usage. Plain strings: quick to hash, sort and pickle.
PriceKey = tuple[str, str, str, str, str, str]


def price_key(record: MeterRecord) -> PriceKey:
    """The price key of one record."""
    day = record.start.astimezone(timezone.utc).date().isoformat()
    return (record.resource.value, record.unit.value, record.provider, record.model, record.language, day)


def summed_record(key: PriceKey, billable: int, raw: int = 0) -> MeterRecord:
    """A sum of usage as one record (dated its day), so sums are priced by the code that prices records."""
    resource, unit, provider, model, language, day = key
    when = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc)
    return MeterRecord.model_construct(
        id=f"sum/{day}/{resource}/{provider}/{model}/{language}",
        session_id="sum",
        resource=Resource(resource),
        raw=raw,
        unit=Unit(unit),
        quantity=Decimal(billable) / UNIT_SIZE[Unit(unit)],
        policy="sum",
        model=model,
        provider=provider,
        language=language,
        start=when,
        end=when,
    )


@dataclass
class Cost:
    """What a group of usage costs: the priced part, and the names of the usage that has no price."""

    priced: Decimal = Decimal(0)
    unpriced: set[str] = field(default_factory=set)

    def json_fields(self) -> dict[str, Any]:
        return {"cost": format(self.priced, "f"), "unpriced": sorted(self.unpriced)}


class Costing:
    """Prices sums on one plan, looking each price key's row up once."""

    def __init__(self, book: PriceBook, plan: str = "ship") -> None:
        self.book = book
        self.plan = book.plan(plan).id
        self._rows: dict[PriceKey, tuple[PriceRow | None, str, bool]] = {}

    def amount(self, key: PriceKey, billable: int) -> tuple[Decimal | None, str]:
        """The list cost of ``billable`` base units of ``key`` (None: unpriced) and the usage's name."""
        found = self._rows.get(key)
        if found is None:
            record = summed_record(key, billable)
            row = self.book.row_of(record, self.plan)
            found = self._rows[key] = (row, usage_label(record, row), not_billed(record))
        row, label, free = found
        if not billable or (row is None and free):
            return Decimal(0), label  # nothing used, or your own server's usage: $0, not unpriced
        return self.book.amount_with(row, Decimal(billable), self.plan), label

    def cost(self, sums: Iterable[tuple[PriceKey, int]]) -> Cost:
        """The cost of (price key, billable base units) sums."""
        out = Cost()
        for key, billable in sorted(sums):
            amount, label = self.amount(key, billable)
            if amount is None:
                out.unpriced.add(label)
            else:
                out.priced += amount
        return out


class UsageLine(NamedTuple):
    """One group's usage of one resource: quantity in ``unit``, the priced cost, what is unpriced."""

    key: str
    resource: str
    unit: str
    quantity: Decimal
    cost: Decimal
    unpriced: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        quantity = format(self.quantity.normalize(), "f") if self.quantity else "0"
        fields = {"key": self.key, "resource": self.resource, "unit": self.unit, "quantity": quantity}
        return {**fields, "cost": format(self.cost, "f"), "unpriced": list(self.unpriced)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageLine:
        key, resource, unit = str(data["key"]), str(data["resource"]), str(data["unit"])
        unpriced = tuple(str(u) for u in data.get("unpriced") or ())
        return cls(key, resource, unit, Decimal(str(data["quantity"])), Decimal(str(data["cost"] or 0)), unpriced)


@dataclass
class PricedUsage:
    """Usage grouped one way, each line priced; ``total`` is the priced part of everything."""

    group_by: str
    lines: list[UsageLine] = field(default_factory=list)
    total: Decimal = Decimal(0)
    unpriced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "rows": [line.to_json() for line in self.lines],
            "total": format(self.total, "f"),
            "unpriced": self.unpriced,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PricedUsage:
        lines = [UsageLine.from_json(row) for row in data["rows"]]
        return cls(str(data["group_by"]), lines, Decimal(str(data["total"])), [str(u) for u in data["unpriced"]])


def price_usage(sums: Iterable[tuple[str, PriceKey, int]], costing: Costing, group_by: str) -> PricedUsage:
    """Price (group key, price key, billable) sums and merge them per (group key, resource, unit)."""
    merged: dict[tuple[str, str, str], tuple[int, list[tuple[PriceKey, int]]]] = {}
    for key, price_key, billable in sums:
        slot = (key, price_key[0], price_key[1])
        total, parts = merged.get(slot, (0, []))
        parts.append((price_key, billable))
        merged[slot] = (total + billable, parts)
    usage = PricedUsage(group_by)
    unpriced: set[str] = set()
    for (key, resource, unit), (billable, parts) in sorted(merged.items()):
        cost = costing.cost(parts)
        quantity = Decimal(billable) / UNIT_SIZE[Unit(unit)]
        usage.lines.append(UsageLine(key, resource, unit, quantity, cost.priced, tuple(sorted(cost.unpriced))))
        usage.total += cost.priced
        unpriced |= cost.unpriced
    usage.unpriced = sorted(unpriced)
    return usage
