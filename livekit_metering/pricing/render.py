"""Text and JSON forms of the price book and of an invoice, for the ``prices`` and ``invoice`` commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from ..table import SECTION, Column, render_table
from .book import PriceBook
from .invoice import Invoice
from .rows import Kind, Plan, PriceRow

__all__ = ["invoice_table", "price_rows_json", "prices_json", "prices_table", "to_json_text"]

KINDS = [k.value for k in Kind]


def _money(value: Decimal | None) -> str:
    return "unpriced" if value is None else format(value, "f")


def to_json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "kind": "plan",
        "plan": plan.id,
        "name": plan.name,
        "fee": format(plan.fee, "f"),
        "inference_credits": format(plan.inference_credits, "f"),
        "hard_caps": plan.hard_caps,
        "effective": plan.effective.isoformat(),
        "source": plan.source,
    }


def price_rows_json(rows: Sequence[PriceRow]) -> list[dict[str, Any]]:
    return [
        {
            "kind": r.kind.value,
            "plan": r.plan,
            "resource": r.resource.value,
            "provider": r.provider,
            "model": r.model,
            "language": r.language,
            "aliases": list(r.aliases),
            "price": None if r.price is None else format(r.price, "f"),
            "per": r.per,
            "included": format(r.included, "f"),
            "effective": r.effective.isoformat(),
            "source": r.source,
            "note": r.note,
        }
        for r in rows
    ]


def _selected_plans(book: PriceBook, kind: str | None, model: str | None, plan: str | None) -> list[Plan]:
    if model or kind not in (None, Kind.PLAN.value):
        return []
    return [p for p in book.plans.values() if plan is None or p.id == book.plan(plan).id]


def prices_json(
    book: PriceBook, *, kind: str | None, model: str | None, plan: str | None, history: bool, at: date | None
) -> dict[str, Any]:
    rows = book.select(kind=kind, model=model, plan=plan, history=history, at=at)
    return {
        "currency": "USD",
        "plans": [_plan_json(p) for p in _selected_plans(book, kind, model, plan)],
        "rows": price_rows_json(rows),
    }


def prices_table(
    book: PriceBook, *, kind: str | None, model: str | None, plan: str | None, history: bool, at: date | None
) -> str:
    rows = book.select(kind=kind, model=model, plan=plan, history=history, at=at)
    parts: list[str] = []
    plans = _selected_plans(book, kind, model, plan)
    if plans:
        columns = [Column(n) for n in ("plan", "monthly fee", "inference credits", "caps", "effective")]
        table = [
            [
                p.name,
                _money(p.fee),
                _money(p.inference_credits),
                "hard caps" if p.hard_caps else "overage billed",
                p.effective.isoformat(),
                p.source,
            ]
            for p in plans
        ]
        parts.append(render_table("LiveKit Cloud plans (USD)", [*columns, Column("source", max_width=84)], table))
    names = ("kind", "plan", "resource", "model", "price", "per", "included", "effective")
    lines = []
    for r in rows:
        price = "hard cap" if r.price is None and r.plan and book.plans[r.plan].hard_caps else _money(r.price)
        lines.append(
            [
                r.kind.value,
                r.plan or "all",
                r.resource.value,
                r.label if r.model else "",
                price,
                r.per,
                format(r.included, "f") if r.kind in (Kind.PLAN, Kind.PHONE) else "",
                r.effective.isoformat(),
                r.source + (f" [{r.note}]" if r.note else ""),
            ]
        )
    title = f"Prices (USD){' with history' if history else ''}"
    columns = [*(Column(n) for n in names), Column("source", max_width=60)]
    parts.append(render_table(title, columns, lines) if rows else "no prices match\n")
    return "".join(parts)


def invoice_table(invoice: Invoice) -> str:
    title = f"Invoice preview: {invoice.plan} plan, {invoice.month} (prices as of {invoice.price_date.isoformat()})"
    columns = [Column("item", max_width=60)]
    columns += [Column(n, right=True) for n in ("quantity", "included", "billable", "unit price", "amount (USD)")]
    rows: list[list[str] | None] = []
    for line in invoice.lines:
        data = line.to_json()
        unit = f" {line.unit}" if line.unit and line.unit != "usd" else ""
        price = "" if line.unit_price is None else f"{data['unit_price']}/{line.per}"
        if line.unit_price is None and line.amount is None:
            price = "unpriced"
        amount = "—" if line.amount is None else data["amount"]
        rows.append([line.description, data["quantity"] + unit, data["included"], data["billable"], price, amount])
    footer: list[str] = []
    if invoice.nothing_due:
        footer.append("Nothing due: no invoice for this month.")
    else:
        footer.append(f"Total: {format(invoice.total, 'f')} USD (sum of the lines, each rounded half-up to cents)")
        rows += [SECTION, ["Total", "", "", "", "", format(invoice.total, "f")]]
    if invoice.unpriced:
        footer.append(f"Unpriced (not in the total): {', '.join(invoice.unpriced)}")
    if invoice.not_billed_by_livekit:
        footer.append(f"Billed by the provider, not LiveKit: {', '.join(invoice.not_billed_by_livekit)}")
    return render_table(title, columns, rows) + "\n".join(footer) + "\n"
