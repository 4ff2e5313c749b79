"""Monthly charge-back per customer, from the metered records of ``customer_agent.py``.

Reads a month of records from a collector (``--url``, signed with LIVEKIT_API_KEY/SECRET), a
collector's database (``--database``) or a JSON-lines records file, prices them with the bundled
LiveKit price book, and prints each customer's sessions, agent minutes, cost and what to bill them
with your margin on top:

    python examples/customer_costs.py --url https://metering.example.com --month 2026-11 --margin 30
    python examples/customer_costs.py records.jsonl --month 2026-11 --csv > chargeback.csv

The costs are those of ``livekit-metering report --group-by customer`` (and of the dashboard's
"by customer"), summed per customer: the same figures, whichever view you read them in. A
customer with usage the price book cannot price is billed its priced part and flagged.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from livekit_metering.pricing import Costing, InvalidMonth, PriceBook, UnknownPlan, month_bounds
from livekit_metering.report import ReportError, Window, open_source

CENT = Decimal("0.01")


@dataclass
class Customer:
    sessions: int = 0
    minutes: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    unpriced: set[str] = field(default_factory=set)


def percent(text: str) -> Decimal:
    """``--margin``: a percentage such as 25 or 12.5."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a percentage such as 25") from None
    if not value.is_finite() or value < -100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage of at least -100")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="?", help="a JSON-lines file of meter records")
    parser.add_argument("--url", help="a collector's URL")
    parser.add_argument("--database", help="a collector's store URL (sqlite:///... or postgresql://...)")
    parser.add_argument("--month", required=True, help="the month to bill, e.g. 2026-11")
    parser.add_argument("--plan", default="ship", help="the LiveKit plan whose list prices apply")
    parser.add_argument("--margin", type=percent, default=Decimal(25), help="percent added to cost (default 25)")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a table")
    args = parser.parse_args(argv)

    try:
        costing = Costing(PriceBook.bundled(), args.plan)
        window = Window(*month_bounds(args.month))
        source = open_source(args.records, url=args.url, database=args.database)
        usage = list(source.usage("customer", window, costing, None))  # cost: as the report and dashboard
        sessions = list(source.sessions(window, costing, None))  # sessions and agent minutes
    except (ReportError, UnknownPlan, InvalidMonth) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    customers: dict[str, Customer] = defaultdict(Customer)
    for line in usage:
        who = customers[line.key or "(unattributed)"]
        who.cost += line.cost
        who.unpriced.update(line.unpriced)
    for session in sessions:
        who = customers[session.customer or "(unattributed)"]
        who.sessions += 1
        who.minutes += session.billed_minutes

    factor = 1 + args.margin / 100
    rows = sorted(customers.items(), key=lambda item: item[1].cost, reverse=True)
    header = ["customer", "sessions", "agent_minutes", "cost_usd", "charge_usd", "note"]
    table = [
        [
            name,
            str(c.sessions),
            format(c.minutes.normalize(), "f"),
            format(c.cost.quantize(Decimal("0.0001")), "f"),
            format((c.cost * factor).quantize(CENT, ROUND_HALF_UP), "f"),
            f"plus unpriced usage: {', '.join(sorted(c.unpriced))}" if c.unpriced else "",
        ]
        for name, c in rows
    ]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(table)
        return 0
    from rich.console import Console
    from rich.table import Table

    out = Table(
        title=f"Charge-back {args.month} ({args.plan} list prices, {args.margin}% margin)", title_justify="left"
    )
    for name in header:
        out.add_column(name, justify="left" if name in ("customer", "note") else "right")
    for row in table:
        out.add_row(*row)
    total = sum((c.cost for c in customers.values()), Decimal(0))
    out.add_section()
    out.add_row(
        "total",
        str(len(sessions)),
        "",
        format(total.quantize(Decimal("0.0001")), "f"),
        format((total * factor).quantize(CENT, ROUND_HALF_UP), "f"),
        "",
    )
    Console().print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
