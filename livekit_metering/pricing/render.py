"""Text and JSON forms of the price book and of an invoice, for the ``prices`` and ``invoice`` commands."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .book import PriceBook
from .invoice import Invoice
from .rows import Kind, Plan, PriceRow

__all__ = ["invoice_table", "price_rows_json", "prices_json", "prices_table", "to_json_text"]

KINDS = [k.value for k in Kind]


def _money(value: Decimal | None) -> str:
    return "unpriced" if value is None else format(value, "f")


def _render(*tables: Table | str) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False, color_system=None, soft_wrap=False)
    for table in tables:
        console.print(table)
    return buffer.getvalue()


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
    parts: list[Table | str] = []
    plans = _selected_plans(book, kind, model, plan)
    if plans:
        table = Table(title="LiveKit Cloud plans (USD)")
        for name in ("plan", "monthly fee", "inference credits", "caps", "effective", "source"):
            table.add_column(name, overflow="fold")
        for p in plans:
            caps = "hard caps" if p.hard_caps else "overage billed"
            table.add_row(
                p.name, _money(p.fee), _money(p.inference_credits), caps, p.effective.isoformat(), escape(p.source)
            )
        parts.append(table)
    table = Table(title=f"Prices (USD){' with history' if history else ''}")
    for name in ("kind", "plan", "resource", "model", "price", "per", "included", "effective", "source"):
        table.add_column(name, overflow="fold", max_width=60 if name == "source" else None)
    for r in rows:
        model_name = r.label if r.model else ""
        price = "hard cap" if r.price is None and r.plan and book.plans[r.plan].hard_caps else _money(r.price)
        included = format(r.included, "f") if r.kind in (Kind.PLAN, Kind.PHONE) else ""
        table.add_row(
            r.kind.value,
            r.plan or "all",
            r.resource.value,
            escape(model_name),
            price,
            r.per,
            included,
            r.effective.isoformat(),
            escape(r.source + (f" [{r.note}]" if r.note else "")),
        )
    parts.append(table if rows else "no prices match")
    return _render(*parts)


def invoice_table(invoice: Invoice) -> str:
    title = f"Invoice preview: {invoice.plan} plan, {invoice.month} (prices as of {invoice.price_date.isoformat()})"
    table = Table(title=title)
    for name in ("item", "quantity", "included", "billable", "unit price", "amount (USD)"):
        table.add_column(name, overflow="fold", justify="left" if name == "item" else "right")
    for line in invoice.lines:
        data = line.to_json()
        unit = f" {line.unit}" if line.unit and line.unit != "usd" else ""
        price = "" if line.unit_price is None else f"{data['unit_price']}/{line.per}"
        if line.unit_price is None and line.amount is None:
            price = "unpriced"
        table.add_row(
            escape(line.description),
            data["quantity"] + unit,
            data["included"],
            data["billable"],
            price,
            "—" if line.amount is None else data["amount"],
        )
    footer: list[str] = []
    if invoice.nothing_due:
        footer.append("Nothing due: no invoice for this month.")
    else:
        footer.append(f"Total: {format(invoice.total, 'f')} USD (sum of the lines, each rounded half-up to cents)")
    if invoice.unpriced:
        footer.append(f"Unpriced (not in the total): {', '.join(invoice.unpriced)}")
    if invoice.not_billed_by_livekit:
        footer.append(f"Billed by the provider, not LiveKit: {', '.join(invoice.not_billed_by_livekit)}")
    return _render(table, escape("\n".join(footer)))
