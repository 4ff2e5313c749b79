"""Issued invoices and statements as served: the stored JSON byte for byte, CSV, and a printable
HTML page, all from the one stored document (so every format shows the same figures)."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .store.base import Store

__all__ = ["FORMATS", "invoice_list", "render", "rendered"]

FORMATS = {"json": "application/json", "csv": "text/csv", "html": "text/html"}
_COLUMNS = ["section", "month", "resource", "model", "description", "unit", "quantity", "included",
            "billable", "unit_price", "per", "amount"]  # fmt: skip


async def invoice_list(store: Store, project: str) -> dict[str, Any]:
    """The project's issued invoices, newest first, and the months closed with nothing due."""
    closed = await store.closed_months(project)
    invoices = []
    for month in closed:
        if month.number is None:
            continue
        doc = json.loads(month.document)
        invoices.append(
            {
                "number": month.number,
                "month": month.month,
                "plan": month.plan,
                "issued": doc["issued"],
                "currency": doc["currency"],
                "total": month.total,
                "adjustments": len(doc["adjustments"]),
                "statements": doc["statements"],
            }
        )
    return {
        "invoices": invoices,
        "closed_without_invoice": [{"month": m.month, "plan": m.plan} for m in closed if m.number is None],
    }


def rendered(document: str, fmt: str, name: str) -> web.Response:
    """An HTTP response with the document in ``fmt``; JSON is the stored text itself."""
    if fmt not in FORMATS:
        raise web.HTTPBadRequest(reason=f"format={fmt!r} is not one of {sorted(FORMATS)}")
    body = render(document, fmt)
    disposition = "inline" if fmt == "html" else "attachment"
    headers = {"Content-Disposition": f'{disposition}; filename="{_safe(name)}.{fmt}"'}
    return web.Response(body=body, content_type=FORMATS[fmt], charset="utf-8", headers=headers)


def render(document: str, fmt: str) -> bytes:
    if fmt == "json":
        return document.encode("utf-8")
    doc = json.loads(document)
    return (_csv(doc) if fmt == "csv" else _html(doc)).encode("utf-8")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def _is_statement(doc: Mapping[str, Any]) -> bool:
    return "statement" in doc


def _rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every line of an invoice or statement as CSV/HTML rows (amounts as the JSON has them)."""
    money = "cost" if _is_statement(doc) else "amount"
    rows = [{**line, "section": "line", "month": doc["month"], "amount": line.get(money)} for line in doc["lines"]]
    rows += [{**line, "section": "adjustment", "amount": line.get(money)} for line in doc["adjustments"]]
    if not _is_statement(doc):
        rows.append({"section": "subtotal", "month": doc["month"], "amount": doc["subtotal"]})
        rows.append({"section": "adjustments_total", "amount": doc["adjustments_total"]})
    rows.append({"section": "total", "month": doc["month"], "amount": doc["total"]})
    return rows


def _csv(doc: Mapping[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in _rows(doc):
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in _COLUMNS})
    return out.getvalue()


def _money(value: str | None, currency: str) -> str:
    if value is None:
        return "unpriced"
    sign = "-" if value.startswith("-") else ""
    return f"{sign}{'$' if currency == 'USD' else currency + ' '}{value.lstrip('-')}"


def _html(doc: Mapping[str, Any]) -> str:
    e = html.escape
    currency = doc.get("currency", "USD")
    statement = _is_statement(doc)
    title = f"Statement {doc['statement']}" if statement else f"Invoice {doc['number']}"
    issued = datetime.fromisoformat(doc["issued"].replace("Z", "+00:00")).astimezone(timezone.utc)
    facts = [("Month", doc["month"]), ("Plan", doc["plan"]), ("Issued", issued.strftime("%Y-%m-%d %H:%M UTC"))]
    facts.insert(0, ("Customer", doc["customer"]) if statement else ("Project", doc["project"]))
    if statement:
        facts.append(("Invoice", doc["invoice"]))
    money = "cost" if statement else "amount"
    head = "<tr><th>Item</th><th class=num>Quantity</th>" + (
        "" if statement else "<th class=num>Included</th><th class=num>Billable</th><th class=num>Unit price</th>"
    ) + "<th class=num>Amount</th></tr>"  # fmt: skip
    body = []
    for line in doc["lines"]:
        item = line.get("description") or line["model"] or line["resource"].replace("_", " ")
        cells = [f"<td>{e(item)}</td>", f"<td class=num>{e(line['quantity'])} {e(line['unit'])}</td>"]
        if not statement:
            price = "" if line["unit_price"] is None else f"{_money(line['unit_price'], currency)} / {line['per']}"
            cells += [f"<td class=num>{e(line['included'])}</td>", f"<td class=num>{e(line['billable'])}</td>",
                      f"<td class=num>{e(price)}</td>"]  # fmt: skip
        cells.append(f"<td class=num>{e(_money(line[money], currency))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    span = 2 if statement else 5
    adjustments = []
    for line in doc["adjustments"]:
        item = f"{line['description']} (usage of {line['month']} recorded after it was invoiced)"
        adjustments.append(
            f"<tr><td colspan={span - 1}>{e(item)}</td><td class=num>{e(line['quantity'])} {e(line['unit'])}</td>"
            f"<td class=num>{e(_money(line[money], currency))}</td></tr>"
        )
    foot = []
    if not statement:
        foot.append(
            f"<tr><th colspan={span}>Subtotal</th><td class=num>{e(_money(doc['subtotal'], currency))}</td></tr>"
        )
        if doc["adjustments"]:
            foot.append(
                f"<tr><th colspan={span}>Adjustments</th>"
                f"<td class=num>{e(_money(doc['adjustments_total'], currency))}</td></tr>"
            )
    foot.append(
        f"<tr class=total><th colspan={span}>Total</th><td class=num>{e(_money(doc['total'], currency))}</td></tr>"
    )
    notes = []
    if doc.get("unpriced"):
        notes.append(f"Unpriced (not in the total): {', '.join(doc['unpriced'])}.")
    if doc.get("note"):
        notes.append(doc["note"] + ".")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; color: #1f2328; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; margin: 0 0 .75rem; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0 0 1.5rem; }}
dt {{ color: #59636e; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #d1d9e0; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
tfoot th {{ text-align: right; }} tr.total th, tr.total td {{ font-weight: 700; border-top: 2px solid #1f2328; }}
h2 {{ font-size: 1rem; margin: 1.5rem 0 .5rem; }} p.note {{ color: #59636e; }}
@media print {{ body {{ margin: 0; max-width: none; }} }}
</style></head>
<body>
<h1>{e(title)}</h1>
<dl>{"".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)}</dl>
<table id="lines"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>
{_adjustment_table(adjustments)}
<table id="totals"><tfoot>{"".join(foot)}</tfoot></table>
{"".join(f'<p class="note">{e(n)}</p>' for n in notes)}
</body></html>
"""


def _adjustment_table(rows: list[str]) -> str:
    if not rows:
        return ""
    return f"<h2>Adjustments for earlier months</h2><table id=adjustments><tbody>{''.join(rows)}</tbody></table>"
