"""Monthly invoices, issued: each project's month closed once, after its end plus a grace period.

* **When.** A month is closed once its end (UTC) plus ``grace`` (``--invoice-grace-hours``, 24 by
  default: records and webhooks arriving late) has passed, starting with the project's first month
  with usage, one month after the other.
* **What.** The invoice is the month's invoice preview at that moment (``GET /v1/invoice``: plan
  fee, usage past the included quotas, inference credits) on the project's plan, numbered
  (``INV-<yyyymm>-<n>``, n counting the project's invoices), with the time it was issued. Its JSON
  text is stored and served byte for byte as issued: nothing changes it afterwards.
* **Nothing due, no invoice.** A month whose preview has nothing due (and carries no adjustment
  with an amount) is closed without an invoice and without a number.
* **Late records.** Usage of a closed month that arrives later (a late record, a webhook close, the
  agent's exact figure replacing a webhook estimate) never changes its invoice: the next invoice
  carries *adjustment* lines for that month, the difference between the month priced now and what
  was billed for it so far (its invoice, or its preview when nothing was due, plus earlier
  adjustments), per resource and model. Months up to ``LOOKBACK`` back are re-priced this way.
* **Statements.** Each customer (the records' ``customer``) gets a statement with every invoice:
  its usage of the month at the plan's list prices (before included quotas and credits, which the
  project as a whole gets; the plan fee is not shared out), plus its own adjustments, computed the
  same way.
* **Once.** Closing a month is one transaction that stores the invoice and its statements only if
  the month is not closed yet (PostgreSQL: under a per-project lock), so closing twice, or from two
  collectors sharing one database, issues one invoice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..pricing.cost import usage_label
from ..pricing.invoice import cents, month_bounds
from ..pricing.rows import INFERENCE_RESOURCES, PRICE_UNITS
from ..records import rfc3339
from .pricing import Pricer, aggregate_record
from .queries import Queries
from .store.base import ClosedMonth, Store

__all__ = ["LOOKBACK", "Billing", "month_of", "next_month"]

log = logging.getLogger("livekit_metering.collector")

LOOKBACK = 12  # closed months re-priced for adjustments
# Base units in one displayed unit, for comparing quantities shown in different units.
_SIZES = {unit: size for unit, (_, size) in PRICE_UNITS.items()}
_SIZES.update({"": 1, "usd": 1, "month": 1})

Key = tuple[str, str]  # (resource, model)


def month_of(when: datetime | date) -> str:
    return f"{when.year:04d}-{when.month:02d}"


def next_month(month: str) -> str:
    return month_of(month_bounds(month)[1])


@dataclass
class _Sum:
    """What one (resource, model) came to: base quantity, amount (None: unpriced), how it reads."""

    base: Decimal
    amount: Decimal | None
    line: Mapping[str, Any]

    def add(self, base: Decimal, amount: Decimal | None) -> None:
        self.base += base
        self.amount = None if amount is None or self.amount is None else self.amount + amount


def _sums(lines: Iterable[Mapping[str, Any]], *, money: str = "amount") -> dict[Key, _Sum]:
    out: dict[Key, _Sum] = {}
    for line in lines:
        key = (line["resource"], line["model"])
        base = Decimal(line["quantity"]) * _SIZES.get(line["unit"], 1)
        amount = None if line[money] is None else Decimal(line[money])
        if key in out:
            out[key].add(base, amount)
        else:
            out[key] = _Sum(base, amount, line)
    return out


def _differences(
    month: str, now: Mapping[Key, _Sum], billed: Mapping[Key, _Sum], *, money: str = "amount"
) -> list[dict[str, Any]]:
    """Adjustment lines for ``month``: what it comes to now minus what was billed for it."""
    out: list[dict[str, Any]] = []
    for key in sorted(set(now) | set(billed)):
        was, is_ = billed.get(key), now.get(key)
        base = (is_.base if is_ else Decimal(0)) - (was.base if was else Decimal(0))
        before = was.amount if was else Decimal(0)
        after = is_.amount if is_ else Decimal(0)
        amount = None if before is None or after is None else after - before
        if not base and not amount:
            continue
        shown = (is_ or was).line  # type: ignore[union-attr]
        unit = shown["unit"]
        size = _SIZES.get(unit, 1)
        if base % size and unit == "minute":
            unit, size = "second", 1000
        out.append(
            {
                "month": month,
                "resource": key[0],
                "model": key[1],
                "description": shown.get("description") or key[1] or key[0].replace("_", " "),
                "unit": unit,
                "quantity": _number(base / size),
                money: None if amount is None else format(amount, "f"),
            }
        )
    return out


def _number(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@dataclass
class Billing:
    """Closes the months of every project the collector bills. ``write_rentals(project, month)``
    writes the month's phone number rentals before a month is priced."""

    store: Store
    queries: Queries
    pricer: Pricer
    plan_of: Callable[[str], str]
    grace: timedelta = timedelta(hours=24)
    write_rentals: Callable[[str, str], Any] | None = None

    async def due(self, project: str, now: datetime) -> list[str]:
        """The months of ``project`` to close at ``now``, oldest first."""
        closed = await self.store.closed_months(project, limit=1)
        if closed:
            first = next_month(closed[0].month)
        else:
            day = await self.store.first_usage_day(project)
            if day is None:
                return []
            first = month_of(day)
        months: list[str] = []
        month = first
        while month_bounds(month)[1] + self.grace <= now:
            months.append(month)
            month = next_month(month)
        return months

    async def close_due(self, project: str, now: datetime) -> list[ClosedMonth]:
        """Close every month of ``project`` that is due; returns those this call closed."""
        done: list[ClosedMonth] = []
        for month in await self.due(project, now):
            closed = await self.close(project, month, now)
            if closed is not None:
                done.append(closed)
        return done

    async def close(self, project: str, month: str, now: datetime) -> ClosedMonth | None:
        """Close one month: its invoice (or none when nothing is due) and statements. None when it was
        already closed (by this collector or another sharing the database)."""
        if self.write_rentals is not None:
            await self.write_rentals(project, month)
        plan = self.plan_of(project)
        preview = await self.queries.invoice(project, {"month": month, "plan": plan})
        earlier = [m for m in await self.store.closed_months(project, limit=LOOKBACK + 1) if m.month < month]
        earlier = earlier[:LOOKBACK]
        adjustments = await self._adjustments(project, earlier)
        statements = await self._statements(project, month, plan, earlier)
        issued = now.astimezone(timezone.utc)
        adjusted = [a["amount"] for a in adjustments]
        due = not preview["nothing_due"] or any(a is None or Decimal(a) for a in adjusted)

        def build(seq: int) -> ClosedMonth:
            if not due:  # closed with nothing due: the preview is kept to compare late usage against
                return ClosedMonth(month, None, plan, _ms(issued), None, _dump(preview))
            number = f"INV-{month.replace('-', '')}-{seq:04d}"
            subtotal = Decimal(preview.get("total") or 0)
            priced = [Decimal(a) for a in adjusted if a is not None]
            total = subtotal + sum(priced, Decimal(0))
            unpriced = sorted(set(preview["unpriced"]) | {a["resource"] for a in adjustments if a["amount"] is None})
            doc = {
                "number": number,
                "project": project,
                "month": month,
                "plan": plan,
                "issued": rfc3339(issued),
                "currency": preview["currency"],
                "price_date": preview["price_date"],
                "lines": preview["lines"],
                "subtotal": format(subtotal, "f"),
                "adjustments": adjustments,
                "adjustments_total": format(sum(priced, Decimal(0)), "f"),
                "unpriced": unpriced,
                "not_billed_by_livekit": preview["not_billed_by_livekit"],
                "total": format(total, "f"),
                "statements": sorted(statements),
            }
            docs = {
                who: _dump({"statement": f"{number}/{who}", "invoice": number, "issued": rfc3339(issued), **body})
                for who, body in statements.items()
            }
            return ClosedMonth(month, number, plan, _ms(issued), format(total, "f"), _dump(doc), docs)

        closed = await self.store.close_month(project, month, build)
        if closed is not None:
            log.info(
                "month closed",
                extra={"project": project, "month": month, "invoice": closed.number, "total": closed.total},
            )
        return closed

    # -- adjustments -----------------------------------------------------------------------------

    async def _adjustments(self, project: str, earlier: Sequence[ClosedMonth]) -> list[dict[str, Any]]:
        """For each earlier closed month, its price now minus what was billed for it (oldest first)."""
        out: list[dict[str, Any]] = []
        for closed in reversed(earlier):
            doc = json.loads(closed.document)
            billed = _sums([*doc["lines"], *_later(earlier, closed.month, "adjustments")])
            now = await self.queries.invoice(project, {"month": closed.month, "plan": closed.plan})
            out += _differences(closed.month, _sums(now["lines"]), billed)
        return out

    # -- statements ------------------------------------------------------------------------------

    async def _statements(
        self, project: str, month: str, plan: str, earlier: Sequence[ClosedMonth]
    ) -> dict[str, dict[str, Any]]:
        """Each customer's statement body: the month's usage at list prices, and its adjustments."""
        lines = await self._customer_lines(project, month, plan)
        adjustments: dict[str, list[dict[str, Any]]] = {}
        for closed in reversed(earlier):
            billed = await self._billed_statements(project, closed, earlier)
            now = await self._customer_lines(project, closed.month, closed.plan)
            for who in sorted(set(now) | set(billed)):
                found = _differences(
                    closed.month, _sums(now.get(who, []), money="cost"), billed.get(who, {}), money="cost"
                )
                if found:
                    adjustments.setdefault(who, []).extend(found)
        out: dict[str, dict[str, Any]] = {}
        for who in sorted(set(lines) | set(adjustments)):
            mine, adjust = lines.get(who, []), adjustments.get(who, [])
            costs = [line["cost"] for line in (*mine, *adjust)]
            out[who] = {
                "customer": who,
                "month": month,
                "plan": plan,
                "currency": "USD",
                "note": f"{plan} plan list prices, before the plan's included quotas and credits",
                "lines": mine,
                "adjustments": adjust,
                "unpriced": sorted(
                    {line["model"] or line["resource"] for line in (*mine, *adjust) if line["cost"] is None}
                ),
                "total": format(cents(sum((Decimal(c) for c in costs if c is not None), Decimal(0))), "f"),
            }
        return out

    async def _customer_lines(self, project: str, month: str, plan: str) -> dict[str, list[dict[str, Any]]]:
        first, after = (d.date() for d in month_bounds(month))
        book = self.pricer.book
        sums: dict[tuple[str, str, str], _Sum] = {}
        units: dict[tuple[str, str, str], str] = {}
        for row in await self.store.usage(project, first, after, "customer"):
            if not row.key or not row.billable:
                continue  # usage without a customer is the project's own
            record = aggregate_record(row)
            price_row = book.row_of(record, plan)
            label = usage_label(record, price_row) if record.resource in INFERENCE_RESOURCES else ""
            key = (row.key, row.resource.value, label)
            cost = book.price_with(record, price_row, plan)
            if key in sums:
                sums[key].add(Decimal(row.billable), cost)
            else:
                sums[key] = _Sum(Decimal(row.billable), cost, {})
                units[key] = row.unit.value
        out: dict[str, list[dict[str, Any]]] = {}
        for (who, resource, label), total in sorted(sums.items()):
            unit = units[(who, resource, label)]
            out.setdefault(who, []).append(
                {
                    "resource": resource,
                    "model": label,
                    "unit": unit,
                    "quantity": _number(total.base / _SIZES.get(unit, 1)),
                    "cost": None if total.amount is None else format(total.amount, "f"),
                }
            )
        return out

    async def _billed_statements(
        self, project: str, closed: ClosedMonth, earlier: Sequence[ClosedMonth]
    ) -> dict[str, dict[Key, _Sum]]:
        """Per customer, what was billed for ``closed.month``: its statement and later adjustments."""
        lines: dict[str, list[Mapping[str, Any]]] = {}
        sources = [closed] + [m for m in earlier if m.month > closed.month]
        for source in sources:
            if source.number is None:
                continue
            invoice = await self.store.issued_invoice(project, source.number)
            for who, text in (invoice.statements if invoice else {}).items():
                doc = json.loads(text)
                mine = doc["lines"] if source is closed else []
                late = [a for a in doc["adjustments"] if a["month"] == closed.month]
                lines.setdefault(who, []).extend([*mine, *late])
        return {who: _sums(found, money="cost") for who, found in lines.items()}


def _later(earlier: Sequence[ClosedMonth], month: str, field: str) -> list[Mapping[str, Any]]:
    """The adjustment lines for ``month`` on invoices issued after it."""
    out: list[Mapping[str, Any]] = []
    for closed in earlier:
        if closed.month > month and closed.number is not None:
            out += [a for a in json.loads(closed.document).get(field, []) if a["month"] == month]
    return out


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
