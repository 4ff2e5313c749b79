"""The work behind the ``prices`` and ``invoice`` commands: errors become a message and exit code 2."""

from __future__ import annotations

from datetime import datetime, timezone

import typer

from ..records import InvalidRecord
from .book import PriceBook
from .errors import InvalidMonth, InvalidPriceBook, UnknownPlan
from .render import KINDS, invoice_table, prices_json, prices_table, to_json_text

__all__ = ["run_invoice", "run_prices"]

FORMATS = ("table", "json")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _book(prices: str | None) -> PriceBook:
    return PriceBook.load(prices) if prices else PriceBook.bundled()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise _fail(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def run_prices(
    *, kind: str | None, model: str | None, plan: str | None, history: bool, prices: str | None, fmt: str
) -> str:
    _check_format(fmt)
    if kind is not None and kind not in KINDS:
        raise _fail(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        book = _book(prices)
        if fmt == "json":
            return to_json_text(prices_json(book, kind=kind, model=model, plan=plan, history=history, at=None))
        return prices_table(book, kind=kind, model=model, plan=plan, history=history, at=None)
    except (InvalidPriceBook, UnknownPlan) as exc:
        raise _fail(str(exc)) from None


def run_invoice(records: str, *, plan: str, month: str, prices: str | None, fmt: str) -> str:
    from ..export.file import read_records

    _check_format(fmt)
    month = month or datetime.now(timezone.utc).strftime("%Y-%m")
    try:
        book = _book(prices)
        book.plan(plan)
        invoice = book.invoice(read_records(records), plan=plan, month=month)
    except FileNotFoundError:
        raise _fail(f"records file {records!r} not found") from None
    except OSError as exc:
        raise _fail(f"cannot read records file {records!r}: {exc}") from None
    except (InvalidPriceBook, UnknownPlan, InvalidMonth, InvalidRecord) as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:  # e.g. a file that is not UTF-8 text
        raise _fail(f"cannot read records file {records!r}: {exc}") from None
    if fmt == "json":
        return to_json_text(invoice.to_json())
    return invoice_table(invoice)
