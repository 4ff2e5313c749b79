"""Cost of a set of records at list prices: per resource, per model and in total (no quotas)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..records import MeterRecord, Resource, latest_forms
from .book import NOT_BILLED_LABEL, billed_by_livekit
from .rows import INFERENCE_RESOURCES, PriceRow

if TYPE_CHECKING:
    from .book import PriceBook

__all__ = ["CostLine", "CostReport", "cost_report", "usage_label"]


def usage_label(record: MeterRecord, row: PriceRow | None) -> str:
    """The name a usage is reported under: the priced row's label, else what the record says."""
    if row is not None:
        return row.label
    if record.resource not in INFERENCE_RESOURCES:
        return record.resource.value + ("" if billed_by_livekit(record) else f" ({NOT_BILLED_LABEL})")
    from .book import model_key

    provider, model, language = model_key(record)
    if not model:
        return f"{record.resource.value} (no model)"
    name = model + (f" ({language})" if language and record.resource is Resource.STT else "")
    return name if provider == "livekit" else f"{name} via {provider}"


@dataclass
class CostLine:
    """Usage of one resource and model priced by one row; ``cost`` is exact, None when unpriced."""

    resource: Resource
    model: str
    unit: str
    quantity: Decimal
    unit_price: Decimal | None
    per: str
    cost: Decimal | None
    records: int = 0
    billed_by_livekit: bool = True  # False: your own LiveKit server's usage, $0 here

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource.value,
            "model": self.model,
            "unit": self.unit,
            "quantity": format(self.quantity, "f"),
            "unit_price": None if self.unit_price is None else format(self.unit_price, "f"),
            "per": self.per,
            "cost": None if self.cost is None else format(self.cost, "f"),
            "records": self.records,
            "billed_by_livekit": self.billed_by_livekit,
        }


@dataclass
class CostReport:
    """List-price cost of some records on one plan: exact Decimal USD, not rounded.

    Unpriced usage (unknown model, resource without a price) is listed in ``unpriced`` and left
    out of every sum: it is never counted as $0. ``price_date`` is the newest ``effective`` date
    among the plan and the rows used, as on the invoice preview.
    """

    plan: str
    price_date: date
    total: Decimal = Decimal(0)
    by_resource: dict[str, Decimal] = field(default_factory=dict)
    by_model: dict[str, Decimal] = field(default_factory=dict)
    lines: list[CostLine] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "price_date": self.price_date.isoformat(),
            "currency": "USD",
            "total": format(self.total, "f"),
            "by_resource": {k: format(v, "f") for k, v in self.by_resource.items()},
            "by_model": {k: format(v, "f") for k, v in self.by_model.items()},
            "lines": [line.to_json() for line in self.lines],
            "unpriced": self.unpriced,
        }


def cost_report(book: PriceBook, records: Iterable[MeterRecord], plan: str = "ship") -> CostReport:
    """Price every counted record on ``plan`` at list price (see ``PriceBook.price_of``)."""
    the_plan = book.plan(plan)
    report = CostReport(plan=the_plan.id, price_date=the_plan.effective)
    lines: dict[tuple[object, ...], CostLine] = {}
    unpriced: set[str] = set()
    for record in latest_forms(records):
        row = book.row_of(record, plan)
        cost = book.price_with(record, row, plan)
        if row is not None and row.effective > report.price_date:
            report.price_date = row.effective
        label = usage_label(record, row)
        key = (record.resource, label, record.unit, id(row))
        line = lines.get(key)
        if line is None:
            line = lines[key] = CostLine(
                resource=record.resource,
                model=label if record.resource in INFERENCE_RESOURCES else "",
                unit=record.unit.value,
                quantity=Decimal(0),
                unit_price=None if row is None else row.price,
                per="" if row is None else row.per,
                cost=None if cost is None else Decimal(0),
                billed_by_livekit=billed_by_livekit(record),
            )
        line.quantity += record.quantity
        line.records += 1
        if cost is None or line.cost is None:
            line.cost = None
            if record.quantity:
                unpriced.add(label)
            continue
        line.cost += cost
        report.total += cost
        name = record.resource.value
        report.by_resource[name] = report.by_resource.get(name, Decimal(0)) + cost
        if record.resource in INFERENCE_RESOURCES:
            report.by_model[label] = report.by_model.get(label, Decimal(0)) + cost
    report.lines = sorted(lines.values(), key=lambda ln: (list(Resource).index(ln.resource), ln.model))
    report.unpriced = sorted(unpriced)
    return report
