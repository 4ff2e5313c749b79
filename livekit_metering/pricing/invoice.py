"""Monthly invoice preview: plan fee, usage past the included quotas, inference past the credits.

Money rules, in order:

1. Each usage is already rounded up to its increment in its record; quantities are summed per
   resource (in exact base units), then the plan's included quota is subtracted, in the order of
   ``Resource`` when several resources share a quota pool (transcode, audio transcode, Stream import).
2. Each line's amount is computed exactly (Decimal), then rounded half-up to cents; the total is the
   sum of the rounded lines, so the lines always add up to the total shown.
3. LiveKit Inference usage (STT, LLM, TTS through ``provider="livekit"``) is priced per model; the
   plan's inference credits (USD) are then applied as one negative line against the sum of those
   rounded lines. On a hard-capped plan (Build) nothing past the credits or quotas is billed:
   LiveKit refuses such usage, so the lines say so and bill $0.
4. Usage through a provider's own plugin (e.g. ``provider="deepgram"``) is billed by that provider,
   not LiveKit: it is left out of the invoice and listed under ``not_billed_by_livekit``; so is
   platform usage on your own LiveKit server (``provider="self-hosted"``).
5. Unpriced usage (unknown model, resource without a public price) gets a line with no amount and
   is listed in ``unpriced``; it is never counted as $0.
6. Nothing due (a $0 plan within its caps, or no usage on a $0 plan): ``nothing_due`` is true and
   the JSON has no ``total``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from ..hosting import NOT_BILLED_PROVIDER
from ..records import UNIT_SIZE, MeterRecord, Resource, latest_forms
from .book import billed_by_livekit
from .cost import usage_label
from .errors import InvalidMonth
from .rows import INFERENCE_RESOURCES, PRICE_UNITS, PriceRow

if TYPE_CHECKING:
    from .book import PriceBook

__all__ = ["Invoice", "InvoiceLine", "build_invoice", "cents", "month_bounds"]

CENT = Decimal("0.01")


def cents(amount: Decimal) -> Decimal:
    """Round half-up to cents (half a cent rounds away from zero)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in UTC, from ``YYYY-MM``."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if not match:
        raise InvalidMonth(f"month {month!r} must be written YYYY-MM, e.g. 2026-11")
    year, mon = int(match[1]), int(match[2])
    if not 1 <= mon <= 12:
        raise InvalidMonth(f"month {month!r} does not exist: months are 01 to 12, e.g. {match[1]}-11")
    if not 1 <= year < 9999:
        raise InvalidMonth(f"month {month!r} is out of range: give a year from 0001 to 9998")
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def _number(value: Decimal) -> str:
    """A decimal string without exponent or needless trailing zeros (``5000``, ``0.5``)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class InvoiceLine:
    """One line. ``quantity``, ``included`` and ``billable`` are in ``unit``; ``unit_price`` is per
    ``per``. ``amount`` is rounded to cents (None when unpriced); ``exact`` is the unrounded amount."""

    resource: str
    model: str
    description: str
    unit: str
    quantity: Decimal
    included: Decimal
    billable: Decimal
    unit_price: Decimal | None
    per: str
    amount: Decimal | None
    exact: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "model": self.model,
            "description": self.description,
            "unit": self.unit,
            "quantity": _number(self.quantity),
            "included": _number(self.included),
            "billable": _number(self.billable),
            "unit_price": None if self.unit_price is None else format(self.unit_price, "f"),
            "per": self.per,
            "amount": None if self.amount is None else format(self.amount, "f"),
        }


@dataclass
class Invoice:
    """An invoice preview for one plan and month. ``total`` is None when nothing is due.

    ``price_date`` is the newest ``effective`` date among the plan and the price rows used: the
    prices are those known on that date. ``unpriced`` lists usage with no price (not in the total);
    ``not_billed_by_livekit`` lists direct-plugin models, which the provider bills.
    """

    plan: str
    month: str
    price_date: date
    lines: list[InvoiceLine] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    not_billed_by_livekit: list[str] = field(default_factory=list)
    total: Decimal | None = None
    currency: str = "USD"

    @property
    def nothing_due(self) -> bool:
        return self.total is None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "plan": self.plan,
            "month": self.month,
            "currency": self.currency,
            "price_date": self.price_date.isoformat(),
            "lines": [line.to_json() for line in self.lines],
            "unpriced": self.unpriced,
            "not_billed_by_livekit": self.not_billed_by_livekit,
            "nothing_due": self.nothing_due,
        }
        if self.total is not None:
            data["total"] = format(self.total, "f")
        return data


def _display(per: str, *amounts: Decimal) -> tuple[str, Decimal]:
    """The unit to show base amounts in, and its size: the price's unit when every amount is a
    whole multiple of it (minutes), else seconds; tokens and characters are shown as counts."""
    size = PRICE_UNITS[per][1]
    if per.startswith("1M "):
        return per[3:].rstrip("s"), Decimal(1)
    if per == "minute" and any(a % size for a in amounts):
        return "second", Decimal(1000)
    return per, Decimal(size)


def _platform_lines(
    book: PriceBook, plan: str, records: list[MeterRecord]
) -> tuple[list[InvoiceLine], list[str], list[PriceRow]]:
    hard = book.plan(plan).hard_caps
    groups: dict[tuple[Resource, int], tuple[PriceRow | None, Decimal]] = {}
    for record in records:
        row = book.row_of(record, plan)
        key = (record.resource, id(row))
        prev = groups.get(key, (row, Decimal(0)))[1]
        groups[key] = (row, prev + record.quantity * _unit_size(record))
    order = list(Resource)
    pools: dict[str, Decimal] = {}
    lines: list[InvoiceLine] = []
    unpriced: list[str] = []
    used_rows: list[PriceRow] = []
    for (resource, _), (row, used) in sorted(
        groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[1][0].effective if kv[1][0] else date.min)
    ):
        if row is None:
            lines.append(
                InvoiceLine(
                    resource.value,
                    "",
                    f"{resource.value}: no price for this plan",
                    "",
                    used,
                    Decimal(0),
                    used,
                    None,
                    "",
                    None,
                )
            )
            unpriced.append(resource.value)
            continue
        used_rows.append(row)
        pool = row.quota_pool
        if pool not in pools:
            pools[pool] = row.included * row.unit_size
        take = min(used, pools[pool])
        pools[pool] -= take
        over = used - take
        unit, size = _display(row.per, used, take, over)
        description = resource.value.replace("_", " ")
        if row.note:
            description += f" ({row.note})"
        if over and hard:
            description += f"; {_number(over / size)} {unit} past the cap: not billed (hard cap, LiveKit refuses it)"
            exact: Decimal | None = Decimal(0)
        elif over and row.price is None:
            description += "; no public price: unpriced"
            unpriced.append(resource.value)
            exact = None
        else:
            exact = row.amount(over) if over else Decimal(0)
        lines.append(
            InvoiceLine(
                resource=resource.value,
                model="",
                description=description,
                unit=unit,
                quantity=used / size,
                included=take / size,
                billable=Decimal(0) if hard else over / size,
                unit_price=row.price,
                per=row.per,
                amount=None if exact is None else cents(exact),
                exact=exact,
            )
        )
    return lines, unpriced, used_rows


def _unit_size(record: MeterRecord) -> int:
    return UNIT_SIZE[record.unit]


def _inference_lines(
    book: PriceBook, plan: str, records: list[MeterRecord]
) -> tuple[list[InvoiceLine], list[str], list[PriceRow]]:
    groups: dict[tuple[Resource, str, int], tuple[PriceRow | None, Decimal]] = {}
    for record in records:
        row = book.row_of(record, plan)
        key = (record.resource, usage_label(record, row), id(row))
        prev = groups.get(key, (row, Decimal(0)))[1]
        groups[key] = (row, prev + record.quantity * _unit_size(record))
    lines: list[InvoiceLine] = []
    unpriced: list[str] = []
    used_rows: list[PriceRow] = []
    order = list(Resource)
    scale_note = plan == "scale"
    for (resource, label, _), (row, used) in sorted(groups.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        per = row.per if row else _UNPRICED_PER.get(resource, "1M tokens")
        unit, size = _display(per, used)
        description = f"{label} {resource.value.replace('_', ' ')}"
        exact = None if row is None else row.amount(used)
        if row is not None:
            used_rows.append(row)
            if row.note:
                description += f" ({row.note})"
            if scale_note and row.plan is None and resource in (Resource.STT, Resource.TTS):
                description += " (list price; no Scale price published)"
        if exact is None:
            description += ": unpriced, not in the price book (add it with --prices)"
            if used:
                unpriced.append(label)
        lines.append(
            InvoiceLine(
                resource=resource.value,
                model=label,
                description=description,
                unit=unit,
                quantity=used / size,
                included=Decimal(0),
                billable=used / size,
                unit_price=None if row is None else row.price,
                per=per,
                amount=None if exact is None else cents(exact),
                exact=exact,
            )
        )
    return lines, sorted(set(unpriced)), used_rows


# the unit an unpriced model's usage is shown in
_UNPRICED_PER = {Resource.STT: "minute", Resource.TTS: "1M characters", Resource.REALTIME_SESSION: "minute"}


def build_invoice(book: PriceBook, records: Iterable[MeterRecord], *, plan: str, month: str) -> Invoice:
    """Preview ``plan``'s invoice for ``month`` (``YYYY-MM``) from records whose ``start`` (UTC) is in it.

    Each line amount is exact internally and rounded half-up to cents on the invoice; the total is
    the sum of the rounded lines. See the module docstring for the full rules.
    """
    the_plan = book.plan(plan)
    start, end = month_bounds(month)
    counted = [r for r in latest_forms(records) if start <= r.start < end]
    platform = [r for r in counted if r.resource not in INFERENCE_RESOURCES and r.provider != NOT_BILLED_PROVIDER]
    inference = [r for r in counted if r.resource in INFERENCE_RESOURCES]
    livekit = [r for r in inference if billed_by_livekit(r)]
    direct = sorted({usage_label(r, book.row_of(r, the_plan.id)) for r in inference if not billed_by_livekit(r)})
    # Platform usage on your own LiveKit server (``provider = "self-hosted"``): LiveKit bills none of it.
    direct += sorted(
        {f"{r.resource.value} via {NOT_BILLED_PROVIDER}" for r in counted if r.provider == NOT_BILLED_PROVIDER}
    )

    fee = InvoiceLine(
        resource="plan_fee",
        model="",
        description=f"{the_plan.name} plan, monthly fee",
        unit="month",
        quantity=Decimal(1),
        included=Decimal(0),
        billable=Decimal(1),
        unit_price=the_plan.fee,
        per="month",
        amount=cents(the_plan.fee),
        exact=the_plan.fee,
    )
    plat_lines, plat_unpriced, plat_rows = _platform_lines(book, the_plan.id, platform)
    inf_lines, inf_unpriced, inf_rows = _inference_lines(book, the_plan.id, livekit)
    lines = [fee, *plat_lines, *inf_lines]

    inference_cost = sum((ln.amount for ln in inf_lines if ln.amount is not None), Decimal(0))
    if inf_lines:
        credits = the_plan.inference_credits
        applied = min(credits, inference_cost)
        description = f"LiveKit Inference credits: ${cents(credits)} included, ${cents(applied)} used"
        if the_plan.hard_caps and inference_cost > credits:
            description += (
                f"; ${cents(inference_cost - credits)} past the credits: not billed "
                "(hard cap, LiveKit refuses inference past it with HTTP 429)"
            )
            applied = inference_cost
        lines.append(
            InvoiceLine(
                resource="inference_credits",
                model="",
                description=description,
                unit="usd",
                quantity=inference_cost,
                included=min(credits, inference_cost),
                billable=Decimal(0) if the_plan.hard_caps else max(Decimal(0), inference_cost - credits),
                unit_price=None,
                per="",
                amount=-applied,
                exact=-applied,
            )
        )

    unpriced = sorted(set(plat_unpriced) | set(inf_unpriced))
    total = sum((ln.amount for ln in lines if ln.amount is not None), Decimal(0))
    used_dates = [r.effective for r in (*plat_rows, *inf_rows)] + [the_plan.effective]
    invoice = Invoice(
        plan=the_plan.id,
        month=month.strip(),
        price_date=max(used_dates),
        lines=lines,
        unpriced=unpriced,
        not_billed_by_livekit=direct,
    )
    # A $0 plan bills nothing (hard caps); otherwise something is due once the total is above zero
    # or some usage could not be priced.
    if total > 0 or (unpriced and not the_plan.hard_caps):
        invoice.total = total
    return invoice
