"""Month-end forecast: the invoice the month is heading for, from its usage so far and the recent
daily run-rate (``runrate.py``).

Method, stated in every answer: per resource and model, the month-to-date billable usage plus the
run-rate window's usage scaled to the time left in the month (window usage x time left / window
length: one division, exact); phone number rentals are monthly, so they are not extrapolated. The
projected usage is then priced exactly as the invoice preview is (``pricing/invoice.py``: plan
fee, included quotas, inference credits, each line rounded to cents): the month so far at the
prices of each day, the projected rest at today's. Only a run-rate: no seasonality, no trend; a
project whose traffic changes within the window is projected at the window's average.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..pricing import PriceBook
from ..records import UNIT_SIZE, MeterRecord, Resource, Unit, rfc3339
from .pricing import aggregate_record
from .runrate import MonthUsage
from .store.base import UsageRow

__all__ = ["METHOD", "forecast_json"]

METHOD = "run-rate"
_ONE = Decimal(1)
_QUANTUM = {Unit.GB: Decimal("0.01")}
_Key = tuple[str, str, str, str, str]  # resource, unit, model, provider, language


def _key(row: UsageRow) -> _Key:
    return (row.resource.value, row.unit.value, row.model, row.provider, row.language)


def _number(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _money(total: Any) -> str | None:
    return None if total is None else str(total)


def projected_rest(usage: MonthUsage) -> dict[_Key, Decimal]:
    """Per resource and model, the quantity (in the record's unit, to the nearest whole unit or 0.01 GB)
    the run-rate adds until the month's end."""
    window = usage.window
    recent: dict[_Key, Decimal] = {}
    for row in usage.recent:
        if row.unit is not Unit.NUMBER_MONTH:  # rented per month: no rate
            recent[_key(row)] = recent.get(_key(row), Decimal(0)) + row.billable
    out: dict[_Key, Decimal] = {}
    for key, base in recent.items():
        unit = Unit(key[1])
        out[key] = (window.rest_of_month(base) / UNIT_SIZE[unit]).quantize(
            _QUANTUM.get(unit, _ONE), rounding=ROUND_HALF_UP
        )
    return out


def _record(key: _Key, quantity: Decimal, at: datetime) -> MeterRecord:
    """The projected rest of one resource and model as one record at ``at``."""
    resource, unit, model, provider, language = key
    return MeterRecord.model_construct(
        id=f"forecast/{'/'.join(key)}",
        session_id="forecast",
        resource=Resource(resource),
        raw=0,
        unit=Unit(unit),
        quantity=quantity,
        policy="forecast",
        model=model,
        provider=provider,
        language=language,
        start=at,
        end=at,
    )


def forecast_json(book: PriceBook, plan: str, usage: MonthUsage) -> dict[str, Any]:
    window = usage.window
    the_plan = book.plan(plan)
    so_far = [aggregate_record(row) for row in usage.month]
    rest = projected_rest(usage)
    # The rest is priced as of the last instant counted (now, or a past month's last day).
    at = max(window.start, window.now - timedelta(milliseconds=1))
    extra = [_record(key, quantity, at) for key, quantity in sorted(rest.items()) if quantity]
    now_invoice = book.invoice(so_far, plan=the_plan.id, month=window.month)
    projected = book.invoice([*so_far, *extra], plan=the_plan.id, month=window.month)
    return {
        "month": window.month,
        "plan": the_plan.id,
        "as_of": rfc3339(window.now),
        "method": METHOD,
        "method_text": _method_text(usage, the_plan.id, at),
        "run_rate": {"since": rfc3339(window.since), "until": rfc3339(window.now), "days": _number(window.rate_days)},
        "days_left": _number(window.days_left),
        "month_to_date": {"total": _money(now_invoice.total), "nothing_due": now_invoice.nothing_due},
        "total": _money(projected.total),
        "nothing_due": projected.nothing_due,
        "invoice": projected.to_json(),
        "usage": _usage_lines(usage.month, rest),
    }


def _usage_lines(month: Iterable[UsageRow], rest: dict[_Key, Decimal]) -> list[dict[str, Any]]:
    so_far: dict[_Key, Decimal] = {}
    for row in month:
        so_far[_key(row)] = so_far.get(_key(row), Decimal(0)) + row.billable
    out = []
    for key in sorted(set(so_far) | set(rest)):
        now = so_far.get(key, Decimal(0)) / UNIT_SIZE[Unit(key[1])]
        more = rest.get(key, Decimal(0))
        out.append(
            {
                "resource": key[0],
                "unit": key[1],
                "model": key[2],
                "provider": key[3],
                "language": key[4],
                "month_to_date": _number(now),
                "rest_of_month": _number(more),
                "month_end": _number(now + more),
            }
        )
    return out


def _method_text(usage: MonthUsage, plan: str, at: datetime) -> str:
    window = usage.window
    since = window.since.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return (
        f"Month-to-date usage plus the run-rate of {since} UTC to now ({_number(window.rate_days)} days) times "
        f"the {_number(window.days_left)} days left in {window.month}, per resource and model, to the nearest unit "
        f"(phone number rentals are monthly and not extrapolated); priced like the invoice preview on the {plan} "
        f"plan (plan fee, included quotas, inference credits, lines rounded to cents), the rest of the month at the "
        f"prices of {at.date()}."
    )
