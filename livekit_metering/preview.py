"""Dev cost preview: the running cost of a session in the terminal, and a summary table at the end.

It is a listener on a ``Meter`` (``meter.on_record``): every record the meter writes updates the
running total, which is printed as one compact line, so it never fights the agent's own console
output; ``close()`` prints the summary table. Prices are list prices for the chosen plan, per
usage, before the plan's included quotas (the monthly invoice deducts those).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .hosting import NOT_BILLED_PROVIDER
from .money import usd
from .records import MeterRecord, Resource, Status, Unit, latest_forms

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .meter import Meter
    from .pricing import PriceBook

__all__ = [
    "CostPreview",
    "attach_preview",
    "maybe_attach_preview",
    "preview_enabled",
    "render_comparison",
    "render_summary",
    "summary_lines",
]

PREVIEW_ENV = "LIVEKIT_METERING_PREVIEW"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# The order and the words people know from LiveKit's pricing page.
_LABELS: dict[Resource, str] = {
    Resource.AGENT_SESSION: "Agent session",
    Resource.CONNECTION: "WebRTC connection",
    Resource.DATA_TRANSFER: "Downstream data",
    Resource.SIP_INBOUND: "Phone number inbound",
    Resource.SIP_INBOUND_TOLL_FREE: "Toll-free inbound",
    Resource.SIP_TRUNK: "SIP trunk",
    Resource.VOICE_ISOLATION: "Voice isolation",
    Resource.STT: "STT",
    Resource.LLM_INPUT: "LLM input",
    Resource.LLM_INPUT_CACHED: "LLM cached input",
    Resource.LLM_OUTPUT: "LLM output",
    Resource.TTS: "TTS",
    Resource.REALTIME_INPUT_TEXT: "Realtime text input",
    Resource.REALTIME_INPUT_AUDIO: "Realtime audio input",
    Resource.REALTIME_INPUT_IMAGE: "Realtime image input",
    Resource.REALTIME_INPUT_CACHED_TEXT: "Realtime cached text input",
    Resource.REALTIME_INPUT_CACHED_AUDIO: "Realtime cached audio input",
    Resource.REALTIME_INPUT_CACHED_IMAGE: "Realtime cached image input",
    Resource.REALTIME_OUTPUT_TEXT: "Realtime text output",
    Resource.REALTIME_OUTPUT_AUDIO: "Realtime audio output",
    Resource.REALTIME_SESSION: "Realtime session",
    Resource.TRANSCRIPTION_INPUT: "Transcription input",
    Resource.TRANSCRIPTION_OUTPUT: "Transcription output",
    Resource.OBSERVABILITY_EVENT: "Observability events",
    Resource.RECORDED_AUDIO: "Recorded audio",
}
_UNIT_NAMES: dict[Unit, tuple[str, str]] = {
    Unit.MINUTE: ("minute", "minutes"),
    Unit.SECOND: ("second", "seconds"),
    Unit.GB: ("GB", "GB"),
    Unit.TOKEN: ("token", "tokens"),
    Unit.CHARACTER: ("character", "characters"),
    Unit.EVENT: ("event", "events"),
    Unit.NUMBER_MONTH: ("number-month", "number-months"),
}


def preview_enabled(option: bool | None = None, *, argv: Sequence[str] | None = None) -> bool:
    """Whether to show the dev cost preview.

    An explicit ``option`` wins, then ``LIVEKIT_METERING_PREVIEW`` (1/0), then livekit-agents' own dev
    signal: ``LIVEKIT_DEV_MODE=1`` (what ``livekit.agents.utils.is_dev_mode()`` reads; the CLI sets it
    for ``dev`` and ``console``), or ``dev``/``console`` among the command-line arguments (the newer
    ``python -m livekit.agents dev`` CLI does not set the variable).
    """
    if option is not None:
        return option
    env = os.environ.get(PREVIEW_ENV, "").strip().lower()
    if env in _TRUE:
        return True
    if env in _FALSE:
        return False
    if os.environ.get("LIVEKIT_DEV_MODE") == "1":
        return True
    args = sys.argv[1:] if argv is None else argv
    return any(arg in ("dev", "console") for arg in args)


@dataclass(frozen=True)
class SummaryLine:
    """One row of the summary: a resource (and model) with what was measured, billed and charged."""

    resource: Resource
    model: str
    unit: Unit
    raw: int  # base units (ms, tokens, characters...)
    quantity: Decimal  # billable, rounded per usage
    cost: Decimal | None  # None when the price book has no price for it
    usages: int
    billed_by_livekit: bool = True  # False: your own LiveKit server's usage, shown at $0

    @property
    def unit_price(self) -> Decimal | None:
        if self.cost is None or not self.quantity:
            return None
        return self.cost / self.quantity


@dataclass
class _Sum:
    raw: int = 0
    quantity: Decimal = Decimal(0)
    cost: Decimal | None = Decimal(0)
    usages: int = 0


def summary_lines(records: Iterable[MeterRecord], book: PriceBook, plan: str = "ship") -> list[SummaryLine]:
    """Sum records per (resource, model, unit), priced with ``book``; the latest form of each usage counts once."""
    from .pricing.book import billed_by_livekit

    sums: dict[tuple[Resource, str, Unit, bool], _Sum] = {}
    for record in latest_forms(records):
        price = book.price_of(record, plan=plan)
        acc = sums.setdefault((record.resource, record.model, record.unit, billed_by_livekit(record)), _Sum())
        acc.raw += record.raw
        acc.quantity += record.quantity
        acc.cost = None if acc.cost is None or price is None else acc.cost + price
        acc.usages += 1
    order = list(_LABELS)
    lines = [
        SummaryLine(
            resource=r,
            model=m,
            unit=u,
            raw=a.raw,
            quantity=a.quantity,
            cost=a.cost,
            usages=a.usages,
            billed_by_livekit=b,
        )
        for (r, m, u, b), a in sums.items()
    ]
    lines.sort(
        key=lambda s: (
            order.index(s.resource) if s.resource in order else len(order),
            s.resource.value,
            s.model,
            not s.billed_by_livekit,
        )
    )
    return lines


def _measured(line: SummaryLine) -> str:
    if line.unit in (Unit.MINUTE, Unit.SECOND):
        return f"{line.raw / 1000:,.1f} s"
    if line.unit is Unit.GB:
        return f"{line.raw:,} bytes"
    return f"{line.raw:,}"


def _billable(line: SummaryLine) -> str:
    one, many = _UNIT_NAMES[line.unit]
    text = format(line.quantity.normalize(), "f") if line.quantity else "0"
    whole, _, frac = text.partition(".")
    shown = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return f"{shown} {one if line.quantity == 1 else many}"


def _unit_price(line: SummaryLine) -> str:
    if not line.billed_by_livekit:
        return "not billed by LiveKit"
    price = line.unit_price
    if price is None:
        return "unpriced" if line.cost is None else "-"
    one, _ = _UNIT_NAMES[line.unit]
    per_million = line.unit in (Unit.TOKEN, Unit.CHARACTER)
    if per_million:
        return f"{_exact_usd(price * 1_000_000)} / 1M {one}s"
    return f"{_exact_usd(price)} / {one}"


def _exact_usd(amount: Decimal) -> str:
    """A unit price with every digit it has and at least cents: $0.40, $0.00008."""
    text = format(amount.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"${int(whole):,}.{frac.ljust(2, '0')}"


def render_summary(records: Iterable[MeterRecord], book: PriceBook, plan: str = "ship") -> Table:
    """The end-of-session table: each resource with measured and billable amounts, price and cost, then the total."""
    from rich.table import Table

    lines = summary_lines(records, book, plan)
    table = Table(title=f"Session cost preview (LiveKit {plan} plan list prices)", title_justify="left")
    table.add_column("resource")
    table.add_column("model")
    table.add_column("measured", justify="right")
    table.add_column("billable", justify="right")
    table.add_column("price", justify="right")
    table.add_column("cost", justify="right")
    total = Decimal(0)
    unpriced = False
    for line in lines:
        if line.cost is None:
            unpriced = True
        else:
            total += line.cost
        table.add_row(
            _LABELS.get(line.resource, line.resource.value),
            line.model or "",
            _measured(line),
            _billable(line),
            _unit_price(line),
            usd(line.cost),
        )
    table.add_section()
    table.add_row("[bold]Total[/]", "", "", "", "", f"[bold]{usd(total)}[/]" + (" +unpriced" if unpriced else ""))
    table.caption = "Each usage is rounded up to its increment before summing; included plan quotas are not deducted."
    return table


def render_comparison(runs: Mapping[str, Iterable[MeterRecord]], book: PriceBook, plan: str = "ship") -> Table:
    """Several sessions' cost previews side by side (the demo's deployed and self-hosted calls): per
    resource and model, each session's billable amount and cost, then each session's total."""
    from rich.table import Table

    table = Table(title=f"Session cost preview (LiveKit {plan} plan list prices)", title_justify="left")
    table.add_column("resource")
    table.add_column("model")
    for name in runs:
        table.add_column(name, justify="right")
    columns = {name: summary_lines(records, book, plan) for name, records in runs.items()}
    order: list[tuple[Resource, str, Unit, bool]] = []
    cells: dict[tuple[Resource, str, Unit, bool], dict[str, SummaryLine]] = {}
    for name, lines in columns.items():
        for line in lines:
            key = (line.resource, line.model, line.unit, line.billed_by_livekit)
            if key not in cells:
                order.append(key)
            cells.setdefault(key, {})[name] = line
    ranks = list(_LABELS)
    order.sort(key=lambda k: (ranks.index(k[0]) if k[0] in ranks else len(ranks), k[0].value, k[1], not k[3]))
    for key in order:
        row = [_LABELS.get(key[0], key[0].value), key[1]]
        for name in runs:
            cell = cells[key].get(name)
            if cell is None:
                row.append("")
            elif not cell.billed_by_livekit:
                row.append(f"{_billable(cell)}, not billed by LiveKit")
            else:
                row.append(f"{_billable(cell)}: {usd(cell.cost)}")
        table.add_row(*row)
    table.add_section()
    totals = []
    for lines in columns.values():
        priced = sum((ln.cost for ln in lines if ln.cost is not None), Decimal(0))
        totals.append(f"[bold]{usd(priced)}[/]" + (" +unpriced" if any(ln.cost is None for ln in lines) else ""))
    table.add_row("[bold]Total[/]", "", *totals)
    table.caption = "Each usage is rounded up to its increment before summing; included plan quotas are not deducted."
    return table


class CostPreview:
    """A ``Meter`` listener that keeps the session's running cost and prints it as it changes.

    Use ``attach_preview(meter)``; call ``close()`` when the session ends to print the summary.
    """

    def __init__(
        self,
        *,
        book: PriceBook | None = None,
        plan: str = "ship",
        console: Console | None = None,
        live: bool = True,
    ) -> None:
        from rich.console import Console

        if book is None:
            from .pricing import PriceBook

            book = PriceBook.bundled()
        self.book = book
        self.plan = plan
        self.console = console or Console(stderr=True)
        self.live = live
        self._records: dict[str, MeterRecord] = {}
        self._costs: dict[str, Decimal | None] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def records(self) -> list[MeterRecord]:
        return list(self._records.values())

    @property
    def total(self) -> Decimal:
        """The running cost: the latest figure of every usage, priced."""
        return sum((c for c in self._costs.values() if c is not None), Decimal(0))

    def __call__(self, record: MeterRecord) -> None:
        with self._lock:
            stored = self._records.get(record.id)
            if stored is not None and not record.supersedes(stored):
                return  # a stale checkpoint or a resend: the stored figure stands
            self._records[record.id] = record
            cost = self.book.price_of(record, plan=self.plan)
            self._costs[record.id] = cost
            total = self.total
        if record.raw == 0 and record.status is Status.CHECKPOINT:
            return  # the session just opened: nothing to show yet
        if self.live and not self._closed:
            self.console.print(self._line(record, cost, total), highlight=False)

    def _line(self, record: MeterRecord, cost: Decimal | None, total: Decimal) -> str:
        label = _LABELS.get(record.resource, record.resource.value)
        line = SummaryLine(record.resource, record.model, record.unit, record.raw, record.quantity, cost, 1)
        what = f"{label} {_billable(line)}" + (f" ({record.model})" if record.model else "")
        if record.provider == NOT_BILLED_PROVIDER:
            what += " (not billed by LiveKit)"
        running = " (running)" if record.status is Status.CHECKPOINT else ""
        return f"[dim]💲 {what}{running}: {usd(cost, 6)}[/dim]  [bold]session so far {usd(total)}[/]"

    def summary(self) -> Table:
        return render_summary(self.records, self.book, self.plan)

    def close(self) -> None:
        """Print the summary table once (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._records:
            self.console.print(self.summary())


def attach_preview(
    meter: Meter,
    *,
    book: PriceBook | None = None,
    plan: str = "ship",
    console: Console | None = None,
) -> CostPreview:
    """Show ``meter``'s running cost in the terminal; call ``close()`` on the result at session end."""
    preview = CostPreview(book=book, plan=plan, console=console)
    for record in meter.records:  # usages recorded before the preview was attached still count
        preview._records[record.id] = record
        preview._costs[record.id] = preview.book.price_of(record, plan=plan)
    meter.on_record(preview)
    return preview


def maybe_attach_preview(
    meter: Meter,
    *,
    option: bool | None = None,
    plan: str = "ship",
    prices: str | None = None,
    console: Console | None = None,
) -> CostPreview | None:
    """What ``metered`` calls for each job: attach a preview when ``preview_enabled(option)``, else None.

    ``prices`` is a user price TOML on top of the bundled book. Never raises: a preview that cannot
    start (bad price file, no terminal) is logged and the session runs without it.
    """
    try:
        if not preview_enabled(option):
            return None
        from .pricing import PriceBook

        book = PriceBook.of(prices)
        return attach_preview(meter, book=book, plan=plan, console=console)
    except Exception:
        import logging

        logging.getLogger("livekit_metering").exception("livekit-metering could not start the cost preview")
        return None
