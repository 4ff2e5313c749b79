"""The work behind the ``prices`` and ``invoice`` commands: errors become a message and exit code 2."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import typer

from ..records import InvalidRecord
from .book import PriceBook
from .errors import InvalidMonth, InvalidPriceBook, UnknownPlan
from .invoice import month_bounds
from .render import KINDS, invoice_table, prices_json, prices_table, to_json_text

if TYPE_CHECKING:
    from ..scan import Skipped  # `prices` need not load the records reader

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


def run_invoice(
    records: str,
    *,
    plan: str,
    month: str,
    prices: str | None,
    fmt: str,
    strict: bool = False,
    progress: bool = False,
) -> tuple[str, Skipped]:
    """The invoice text, and the lines of the records file that were skipped (none with ``strict``).

    The file is streamed: each line checked as the collector checks a record, the latest form of each
    usage counted once, usage summed per price key and day (memory does not grow with the file)."""
    from ..scan import BILLABLE, KEY, RAW, RecordsFile, StrKey, gc_paused, latest, progress_bar, spill_partitions
    from .usage import summed_record

    _check_format(fmt)
    month = month or datetime.now(timezone.utc).strftime("%Y-%m")
    file = RecordsFile(records, strict=strict)
    advance, stop = progress_bar() if progress else (None, None)
    try:
        book = _book(prices)
        book.plan(plan)
        start, end = month_bounds(month)
        sums: dict[StrKey, list[int]] = {}
        with gc_paused():
            for u in latest(file.usages(start, end, advance, detail=False), partitions=spill_partitions(file.size)):
                total = sums.setdefault(u[KEY], [0, 0])
                total[0] += u[BILLABLE]
                total[1] += u[RAW]
        summed = [summed_record(key, billable, raw) for key, (billable, raw) in sorted(sums.items())]
        invoice = book.invoice(summed, plan=plan, month=month)
    except FileNotFoundError:
        raise _fail(f"records file {records!r} not found") from None
    except IsADirectoryError:
        raise _fail(f"{records!r} is a directory: give the path of a JSON-lines file of meter records") from None
    except OSError as exc:
        raise _fail(f"cannot read records file {records!r}: {exc}") from None
    except InvalidRecord as exc:
        raise _fail(f"{exc} (fix or remove that line; without --strict it is skipped and counted)") from None
    except (InvalidPriceBook, UnknownPlan, InvalidMonth) as exc:
        raise _fail(str(exc)) from None
    finally:
        if stop is not None:
            stop()
    if fmt == "json":
        return to_json_text(invoice.to_json()), file.skipped
    return invoice_table(invoice), file.skipped
