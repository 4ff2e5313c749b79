"""The ``livekit-metering`` command (typer, like livekit-agents' own CLI).

Each command only parses options and calls the library; the work lives in the modules it names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Optional

# The reading commands validate records with pydantic but use no pydantic plugin, and looking plugins
# up reads the metadata of every installed package (tens of milliseconds at each start). `serve` and
# `demo` keep them.
if sys.argv[1:2] and sys.argv[1] in ("prices", "invoice", "invoices", "report", "outbox"):
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # after the lines above: typer imports pydantic

app = typer.Typer(
    name="livekit-metering",
    help="Meter, price and report LiveKit Agents usage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


STRICT_HELP = "Fail at the first bad line instead of skipping it (without it, skipped lines are named and exit is 3)."
SKIPPED_EXIT = 3  # the output is complete for every good line; some lines were bad and left out


def _skipped(skipped: object) -> None:
    """A report or invoice that left bad lines out says so on stderr and exits 3."""
    if skipped:
        typer.echo(f"warning: {skipped}; they are not counted (--strict fails instead)", err=True)
        raise typer.Exit(SKIPPED_EXIT)


@app.command()
def report(
    records: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(
            help="A JSON-lines file of meter records. With no source: LIVEKIT_METERING_URL, "
            "else LIVEKIT_METERING_FILE, else the default records file."
        ),
    ] = None,
    url: Annotated[Optional[str], typer.Option(help="A collector's URL (signed with LIVEKIT_API_KEY/SECRET).")] = None,  # noqa: UP045
    database: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A collector's store: sqlite:///path.db or postgresql://..."),
    ] = None,
    project: Annotated[str, typer.Option(help="The store's project (with --database).")] = "default",
    group_by: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--group-by", help="day, agent, room, model, customer or resource; sessions if not given."),
    ] = None,
    since: Annotated[Optional[str], typer.Option(help="From this date or RFC 3339 time (UTC).")] = None,  # noqa: UP045
    until: Annotated[Optional[str], typer.Option(help="Until this time; a date includes that whole day.")] = None,  # noqa: UP045
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    plan: Annotated[str, typer.Option(help="The plan whose list prices apply: build, ship or scale.")] = "ship",
    prices: Annotated[Optional[str], typer.Option(help="A price book TOML overriding the bundled prices.")] = None,  # noqa: UP045
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write to this file.")] = None,  # noqa: UP045
    strict: Annotated[bool, typer.Option("--strict", help=STRICT_HELP)] = False,
    forecast: Annotated[
        bool, typer.Option("--forecast", help="This month's invoice so far and projected to the month's end.")
    ] = False,
) -> None:
    """Sessions and costs from a collector, a store or a records file, grouped and priced."""
    from .report import ReportError, write_command

    if forecast:
        _forecast(records, url, database, project, plan, prices, fmt, output, group_by, since, until)
        return
    try:
        summary = write_command(
            path=records,
            url=url,
            database=database,
            project=project,
            group_by=group_by,
            since=since,
            until=until,
            fmt=fmt,
            plan=plan,
            prices=prices,
            output=output,
            progress=sys.stderr.isatty(),
            strict=strict,
        )
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output:
        typer.echo(f"wrote {output}", err=True)
    _skipped(summary.skipped)


def _forecast(
    records: str | None,
    url: str | None,
    database: str | None,
    project: str,
    plan: str,
    prices: str | None,
    fmt: str,
    output: str | None,
    *unused: str | None,
) -> None:
    from pathlib import Path

    from .forecast_report import run_forecast
    from .report import ReportError

    try:
        if any(unused):
            raise ReportError("--forecast covers this month: it takes no --group-by, --since or --until")
        text = run_forecast(
            path=records, url=url, database=database, project=project, plan=plan, prices=prices, fmt=fmt
        )
    except (ReportError, ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output:
        Path(output).write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(text, nl=False)


@app.command()
def prices(
    kind: Annotated[Optional[str], typer.Option(help="plan, phone, stt, llm or tts.")] = None,  # noqa: UP045
    model: Annotated[Optional[str], typer.Option(help="Only models whose id contains this.")] = None,  # noqa: UP045
    plan: Annotated[Optional[str], typer.Option(help="Only prices that apply on this plan.")] = None,  # noqa: UP045
    history: Annotated[bool, typer.Option("--history", help="Also list older prices.")] = False,
    prices_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--prices", help="A price TOML adding to or overriding the bundled prices."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List the price book: plans, LiveKit Inference models and phone prices, with dates and sources."""
    from .pricing.cli import run_prices

    typer.echo(run_prices(kind=kind, model=model, plan=plan, history=history, prices=prices_file, fmt=fmt), nl=False)


@app.command()
def invoice(
    records: Annotated[str, typer.Argument(help="A JSON-lines file of meter records.")],
    plan: Annotated[str, typer.Option(help="build, ship or scale.")] = "ship",
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (UTC); this month if not given.")] = "",
    prices_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--prices", help="A price TOML adding to or overriding the bundled prices."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    strict: Annotated[bool, typer.Option("--strict", help=STRICT_HELP)] = False,
) -> None:
    """Preview a month's LiveKit Cloud invoice for a plan from a records file."""
    from .pricing.cli import run_invoice

    text, skipped = run_invoice(
        records, plan=plan, month=month, prices=prices_file, fmt=fmt, strict=strict, progress=sys.stderr.isatty()
    )
    typer.echo(text, nl=False)
    _skipped(skipped)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (refused when another process listens on it).")] = 8790,
    database: Annotated[
        str, typer.Option(help="sqlite:///relative.db, sqlite:////abs/path.db or postgresql://user@host/db.")
    ] = "sqlite:///metering.db",
    keys: Annotated[
        Optional[str],  # noqa: UP045
        # "\\[": typer renders help as rich markup, where a bare [...] is a style tag and vanishes.
        typer.Option(help="A TOML keys file: \\[keys.<API key>] secret, project (adds to LIVEKIT_API_KEY/SECRET)."),
    ] = None,
    prices_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--prices", help="A price TOML adding to or overriding the bundled prices."),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body, as sent.")] = 8 * 1024 * 1024,
    max_batch: Annotated[int, typer.Option(help="Most records per request.")] = 5000,
    max_past_days: Annotated[int, typer.Option(help="Oldest record start accepted, in days.")] = 35,
    max_future_seconds: Annotated[int, typer.Option(help="Latest record end accepted, in seconds ahead.")] = 300,
    max_token_minutes: Annotated[
        float, typer.Option(help="Longest a signed token may be valid, from its nbf, in minutes.")
    ] = 10,
    body_timeout_seconds: Annotated[
        float, typer.Option(help="Time a request body may take to arrive, in seconds.")
    ] = 30,
    dashboard_session_hours: Annotated[
        float, typer.Option(help="How long the dashboard stays signed in, in hours.")
    ] = 8,
    workers: Annotated[int, typer.Option(help="Processes sharing the port (validation on several cores).")] = 1,
    close_stale_after_minutes: Annotated[
        int, typer.Option(help="Close sessions whose last checkpoint is this old (no webhook came); 0: never.")
    ] = 15,
    config_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--config", help="A TOML settings file: plan per project, phone numbers, LiveKit URL."),
    ] = None,
    plan: Annotated[Optional[str], typer.Option(help="The plan invoices are issued on (default ship).")] = None,  # noqa: UP045
    policy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The rate policy rounding webhook usage (default minute-increments)."),
    ] = None,
    livekit_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="LIVEKIT_URL", help="Read phone numbers from this LiveKit project's SIP dispatch rules."),
    ] = None,
    invoice_grace_hours: Annotated[
        float, typer.Option(help="Issue a month's invoice this long after it ends (late records).")
    ] = 24,
    close_joins_after_hours: Annotated[
        float, typer.Option(help="Close a participant join with no leave after this long, flagged; 0: never.")
    ] = 24,
) -> None:
    """Run the collector: ingest signed records, LiveKit webhooks, query API, dashboard."""
    from .collector.serve import ServeError, build_config, run_serve

    try:
        config = build_config(
            database=database,
            keys=keys,
            prices=prices_file,
            max_body_bytes=max_body_bytes,
            max_batch=max_batch,
            max_past_days=max_past_days,
            max_future_seconds=max_future_seconds,
            close_stale_after_minutes=close_stale_after_minutes,
            max_token_minutes=max_token_minutes,
            body_timeout_seconds=body_timeout_seconds,
            dashboard_session_hours=dashboard_session_hours,
            config=config_file,
            plan=plan,
            policy=policy,
            livekit_url=livekit_url,
            invoice_grace_hours=invoice_grace_hours,
            close_joins_after_hours=close_joins_after_hours,
        )
        run_serve(config, host=host, port=port, workers=workers)
    except ServeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    plan: Annotated[str, typer.Option(help="build, ship or scale: the plan to price the session on.")] = "ship",
    keep: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Also append the session's records to this JSON-lines file, for `report` and `invoice`."),
    ] = None,
) -> None:
    """Run a real agent session offline, metered end to end into an embedded collector, and show its cost."""
    import asyncio
    from pathlib import Path

    from .demo import DemoError, run_demo
    from .pricing import UnknownPlan

    try:
        asyncio.run(run_demo(plan=plan, keep=Path(keep) if keep else None))
    except (DemoError, UnknownPlan) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def outbox(
    path: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The outbox file (default: LIVEKIT_METERING_OUTBOX, else this host's in the cache dir)."),
    ] = None,
    flush: Annotated[bool, typer.Option(help="Send the pending records to the collector first.")] = False,
    url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="LIVEKIT_METERING_URL", help="Collector URL, for --flush."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds --flush may take.")] = 30.0,
    retry_dead: Annotated[
        bool, typer.Option("--retry-dead", help="Put the dead letters back to be sent again (after fixing the cause).")
    ] = False,
    clear_dead: Annotated[
        bool, typer.Option("--clear-dead", help="Delete the dead letters: their records are given up.")
    ] = False,
) -> None:
    """Show an outbox's health (pending, oldest, sent, dropped, dead letters); flush it, retry or clear its dead
    letters. Exit 1 when a flush leaves records pending."""
    from .export.status import OutboxMissing, outbox_status

    try:
        report = outbox_status(
            path or os.environ.get("LIVEKIT_METERING_OUTBOX"),
            url=url,
            flush_timeout=timeout if flush else None,
            retry_dead=retry_dead,
            clear_dead=clear_dead,
        )
    except (OutboxMissing, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(report.text, nl=False)
    if report.failed:
        typer.echo(f"error: {report.failed}", err=True)
        raise typer.Exit(1)


invoices_app = typer.Typer(
    help="Invoices the collector issued: list, show, download (JSON, CSV, printable HTML).", no_args_is_help=True
)
app.add_typer(invoices_app, name="invoices")

_URL = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="A collector's URL (default LIVEKIT_METERING_URL; signed with LIVEKIT_API_KEY/SECRET)."),
]
_DATABASE = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Read the collector's store instead: sqlite:///path.db or postgresql://..."),
]
_PROJECT = Annotated[str, typer.Option(help="The store's project (with --database).")]
_CUSTOMER = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="A customer's statement issued with the invoice, instead of the invoice."),
]


def _invoices(run: Callable[[], str]) -> None:
    from .invoice_download import InvoiceError

    try:
        typer.echo(run(), nl=False)
    except InvoiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@invoices_app.command("list")
def invoices_list(
    url: _URL = None,
    database: _DATABASE = None,
    project: _PROJECT = "default",
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """The issued invoices, newest first, and the months closed with nothing due."""
    from .invoice_download import list_invoices, open_invoices

    _invoices(lambda: list_invoices(open_invoices(url=url, database=database, project=project), fmt))


@invoices_app.command("show")
def invoices_show(
    number: Annotated[str, typer.Argument(help="The invoice number, e.g. INV-202611-0002.")],
    customer: _CUSTOMER = None,
    url: _URL = None,
    database: _DATABASE = None,
    project: _PROJECT = "default",
) -> None:
    """One invoice (or a customer's statement) as a table."""
    from .invoice_download import open_invoices, show_invoice

    _invoices(lambda: show_invoice(open_invoices(url=url, database=database, project=project), number, customer))


@invoices_app.command("download")
def invoices_download(
    number: Annotated[str, typer.Argument(help="The invoice number, e.g. INV-202611-0002.")],
    fmt: Annotated[str, typer.Option("--format", help="json (as issued), csv or html.")] = "json",
    customer: _CUSTOMER = None,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="The file to write (default invoice-<number>.<format>; - for stdout)."),
    ] = None,
    url: _URL = None,
    database: _DATABASE = None,
    project: _PROJECT = "default",
) -> None:
    """Save an invoice (or a customer's statement) as JSON exactly as issued, CSV or printable HTML."""

    from .invoice_download import download, open_invoices

    def run() -> str:
        source = open_invoices(url=url, database=database, project=project)
        body, target = download(source, number, fmt, customer, output)
        if target == "-":
            sys.stdout.buffer.write(body)
            return ""
        return f"wrote {target} ({len(body)} bytes)\n"

    _invoices(run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
