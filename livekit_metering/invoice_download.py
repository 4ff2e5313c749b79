"""The ``livekit-metering invoices`` command: list, show and download the invoices a collector issued.

The invoices come from a running collector (``--url``, else ``LIVEKIT_METERING_URL``; signed with
``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET``) or straight from its database (``--database``). A
download is the collector's own document: JSON exactly as issued, or its CSV or printable HTML.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

__all__ = ["InvoiceError", "download", "list_invoices", "open_invoices", "show_invoice"]

FORMATS = ("json", "csv", "html")


class InvoiceError(Exception):
    """The invoices cannot be read as asked; the message says what to do."""


class InvoiceSource(Protocol):
    def listing(self) -> dict[str, Any]: ...

    def document(self, number: str, fmt: str, customer: str | None) -> bytes: ...


@dataclass
class CollectorInvoices:
    url: str
    api_key: str
    api_secret: str
    timeout: float = 30.0

    def listing(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._get("/v1/invoices"))
        return data

    def document(self, number: str, fmt: str, customer: str | None) -> bytes:
        path = f"/v1/invoices/{quote(number, safe='')}"
        if customer is not None:
            path += f"/statements/{quote(customer, safe='')}"
        return self._get(f"{path}?format={fmt}")

    def _get(self, path: str) -> bytes:
        return asyncio.run(self._fetch(path))

    async def _fetch(self, path: str) -> bytes:
        import aiohttp

        from .export.client import sign_body

        headers = {"Authorization": f"Bearer {sign_body(None, self.api_key, self.api_secret)}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.get(self.url + path, headers=headers) as resp,
            ):
                body = await resp.read()
                if resp.status == 401:
                    raise InvoiceError(
                        f"the collector at {self.url} refused the signature: use the LIVEKIT_API_KEY and "
                        "LIVEKIT_API_SECRET it was started with"
                    )
                if resp.status != 200:
                    raise InvoiceError(f"GET {self.url}{path} answered {resp.status}: {_error_of(body)}")
                return body
        except aiohttp.ClientError as exc:
            raise InvoiceError(f"cannot reach the collector at {self.url}: {exc}") from None


@dataclass
class StoreInvoices:
    database: str
    project: str = "default"

    def listing(self) -> dict[str, Any]:
        from .collector.invoice_formats import invoice_list

        async def read() -> dict[str, Any]:
            async with self._store() as store:
                return await invoice_list(store, self.project)

        return asyncio.run(read())

    def document(self, number: str, fmt: str, customer: str | None) -> bytes:
        from .collector.invoice_formats import render

        async def read() -> Any:
            async with self._store() as store:
                return await store.issued_invoice(self.project, number)

        closed = asyncio.run(read())
        if closed is None:
            raise InvoiceError(f"no invoice {number!r} in project {self.project!r}; `invoices list` shows them")
        if customer is None:
            return render(closed.document, fmt)
        if customer not in closed.statements:
            raise InvoiceError(f"invoice {number} has no statement for customer {customer!r}")
        return render(closed.statements[customer], fmt)

    def _store(self) -> Any:
        from .collector.store.base import open_store

        if not self.database.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise InvoiceError(
                f"unsupported database URL {self.database!r}: use sqlite:///path/to/file.db or postgresql://..."
            )
        return open_store(self.database)


def open_invoices(*, url: str | None, database: str | None, project: str = "default") -> InvoiceSource:
    """``--url`` or ``--database``; with neither, the collector at LIVEKIT_METERING_URL."""
    if url and database:
        raise InvoiceError("give one source: --url of a collector or --database of its store, not both")
    if database:
        return StoreInvoices(database, project)
    url = url or os.environ.get("LIVEKIT_METERING_URL")
    if not url:
        raise InvoiceError(
            "no source: give --url of a collector or --database of its store (or set LIVEKIT_METERING_URL)"
        )
    if not url.startswith(("http://", "https://")):
        raise InvoiceError(f"the collector URL {url!r} must start with http:// or https://")
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    if not key or not secret:
        raise InvoiceError("reading from a collector needs LIVEKIT_API_KEY and LIVEKIT_API_SECRET: set both")
    return CollectorInvoices(url.rstrip("/"), key, secret)


def list_invoices(source: InvoiceSource, fmt: str = "table") -> str:
    listing = source.listing()
    if fmt == "json":
        return json.dumps(listing, indent=2) + "\n"
    if fmt != "table":
        raise InvoiceError(f"unknown format {fmt!r}: use table or json")
    from rich.table import Table

    table = Table(title="Issued invoices", title_justify="left")
    for name, justify in (("number", "left"), ("month", "left"), ("plan", "left"), ("issued", "left"),
                          ("adjustments", "right"), ("statements", "right"), ("total", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for inv in listing["invoices"]:
        table.add_row(
            inv["number"], inv["month"], inv["plan"], inv["issued"], str(inv["adjustments"]),
            str(len(inv["statements"])), f"${inv['total']}",
        )  # fmt: skip
    text = _render(table)
    closed = [m["month"] for m in listing["closed_without_invoice"]]
    if closed:
        text += f"Closed with nothing due (no invoice): {', '.join(closed)}\n"
    return text


def show_invoice(source: InvoiceSource, number: str, customer: str | None = None) -> str:
    doc = json.loads(source.document(number, "json", customer))
    from rich.table import Table

    statement = customer is not None
    money = "cost" if statement else "amount"
    title = f"Statement {doc['statement']}" if statement else f"Invoice {doc['number']} ({doc['project']})"
    table = Table(title=f"{title}: {doc['month']}, {doc['plan']} plan, issued {doc['issued']}", title_justify="left")
    for name in ("item", "quantity", "amount"):
        table.add_column(name, justify="left" if name == "item" else "right")
    for line in doc["lines"]:
        item = line.get("description") or line["model"] or line["resource"]
        table.add_row(item, f"{line['quantity']} {line['unit']}", _usd(line[money]))
    for line in doc["adjustments"]:
        table.add_row(f"adjustment for {line['month']}: {line['description']}", f"{line['quantity']} {line['unit']}",
                      _usd(line[money]))  # fmt: skip
    table.add_section()
    table.add_row("Total", "", _usd(doc["total"]))
    return _render(table)


def download(
    source: InvoiceSource, number: str, fmt: str, customer: str | None, output: str | None
) -> tuple[bytes, str]:
    """The document's bytes and where they were written (``-``: not written, for stdout)."""
    if fmt not in FORMATS:
        raise InvoiceError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    body = source.document(number, fmt, customer)
    name = f"statement-{number}-{customer}" if customer is not None else f"invoice-{number}"
    target = output or "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + f".{fmt}"
    if target != "-":
        Path(target).write_bytes(body)
    return body, target


def _usd(value: str | None) -> str:
    if value is None:
        return "unpriced"
    return f"-${value[1:]}" if value.startswith("-") else f"${value}"


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:300]
    except ValueError:
        return body[:300].decode("utf-8", "replace")


def _render(table: Any) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=140, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()
