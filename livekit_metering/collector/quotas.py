"""Plan quotas: per included quota, how much of it a month has used, what is left, and when the
recent run-rate (``runrate.py``) uses it up.

A quota is what a plan includes each month: a resource's included quantity (shared by the
resources of one ``pool``: transcode, audio transcode and Stream import) and the plan's LiveKit
Inference credits in USD. On Build the quotas are hard caps: LiveKit refuses service past them;
on the paid plans usage past them is billed at the overage price.

* ``used`` counts what the invoice counts: the month's billable usage (rounded per usage) billed
  by LiveKit (not your own server's, not a provider's own plugin); credits count LiveKit Inference
  at the plan's list prices, exactly (the invoice rounds each model's line to cents).
* ``exhausted_on``: the UTC day the usage reached the quota; ``exhausts_at``: when the run-rate
  reaches it, if that is before the month ends (quotas reset on the 1st). Phone numbers are rented
  per month: they have no run-rate.
* ``level``: ``ok``, ``warning`` from 80 % used, ``exhausted`` from 100 %.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

from ..pricing import PriceBook
from ..pricing.rows import INFERENCE_RESOURCES
from ..records import Resource, rfc3339
from .pricing import aggregate_record
from .runrate import MonthUsage, Window
from .store.base import UsageRow

__all__ = ["CREDITS", "WARN_AT", "Quota", "month_quotas", "quotas_json"]

CREDITS = "inference_credits"
WARN_AT = Decimal("0.8")
_PER_DAY_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class Quota:
    """One included quota in its price unit (``usd`` for credits)."""

    name: str
    resources: tuple[str, ...]
    unit: str
    included: Decimal
    used: Decimal
    per_day: Decimal | None  # None: not used at a rate (number-months)
    hard_cap: bool
    exhausted_on: date | None = None
    exhausts_at: datetime | None = None

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.included - self.used)

    @property
    def ratio(self) -> Decimal:
        return self.used / self.included

    @property
    def level(self) -> str:
        if self.used >= self.included:
            return "exhausted"
        return "warning" if self.used >= self.included * WARN_AT else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "quota": self.name,
            "resources": list(self.resources),
            "unit": self.unit,
            "included": _number(self.included),
            "used": _number(self.used),
            "remaining": _number(self.remaining),
            # Rounded down: 79.999 % is not shown as the 80 % that warns.
            "percent": format((self.ratio * 100).quantize(Decimal("0.01"), rounding=ROUND_DOWN), "f"),
            "level": self.level,
            "hard_cap": self.hard_cap,
            "per_day": None if self.per_day is None else _number(_places(self.per_day)),
            "exhausted_on": None if self.exhausted_on is None else self.exhausted_on.isoformat(),
            "exhausts_at": None if self.exhausts_at is None else rfc3339(self.exhausts_at),
            "exhausts_on": None if self.exhausts_at is None else self.exhausts_at.date().isoformat(),
        }


def _number(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _places(value: Decimal) -> Decimal:
    return value.quantize(_PER_DAY_PLACES, rounding=ROUND_HALF_UP)


@dataclass
class _Pool:
    name: str
    unit: str
    size: int
    included: Decimal  # in base units
    resources: list[str]
    monthly: bool


def month_quotas(book: PriceBook, plan: str, usage: MonthUsage) -> list[Quota]:
    """Every quota of ``plan`` (with the prices in effect at the window's ``now``), in resource order."""
    the_plan = book.plan(plan)
    window = usage.window
    today = max(window.start, window.now - timedelta(milliseconds=1)).date()  # the quotas in effect now
    pools: dict[str, _Pool] = {}
    pool_of: dict[Resource, str] = {}
    for resource in Resource:
        if resource in INFERENCE_RESOURCES:
            continue
        row = book.row(resource, plan=the_plan.id, at=today)
        if row is None or row.included <= 0:
            continue
        pool = pools.get(row.quota_pool)
        if pool is None:
            pool = pools[row.quota_pool] = _Pool(
                row.quota_pool, row.per, row.unit_size, row.included * row.unit_size, [], row.per == "number_month"
            )
        pool.resources.append(resource.value)
        pool_of[resource] = row.quota_pool

    def pool_key(row: UsageRow) -> str | None:
        if row.resource not in pool_of or book.row_of(aggregate_record(row), the_plan.id) is None:
            return None  # not a quota's resource, or not billed by LiveKit (your own server)
        return pool_of[row.resource]

    out: list[Quota] = []
    for pool in pools.values():
        month = [r for r in usage.month if pool_key(r) == pool.name]
        used = Decimal(sum(r.billable for r in month))
        recent = Decimal(sum(r.billable for r in usage.recent if pool_key(r) == pool.name))
        out.append(
            _quota(
                pool.name,
                tuple(pool.resources),
                pool.unit,
                Decimal(pool.size),
                pool.included,
                used,
                None if pool.monthly else recent,
                the_plan.hard_caps,
                window,
                [(r.day, Decimal(r.billable)) for r in month],
            )
        )
    if the_plan.inference_credits > 0:
        costs = [(r.day, _inference_cost(book, the_plan.id, r)) for r in usage.month]
        recent_cost = sum((_inference_cost(book, the_plan.id, r) for r in usage.recent), Decimal(0))
        used = sum((cost for _, cost in costs), Decimal(0))
        out.append(
            _quota(
                CREDITS,
                tuple(r.value for r in INFERENCE_RESOURCES),
                "usd",
                Decimal(1),
                the_plan.inference_credits,
                used,
                recent_cost,
                the_plan.hard_caps,
                window,
                costs,
            )
        )
    return out


def _inference_cost(book: PriceBook, plan: str, row: UsageRow) -> Decimal:
    """LiveKit Inference usage at list prices (what the credits pay for); 0 for anything else."""
    if row.resource not in INFERENCE_RESOURCES or row.provider.strip().lower() not in ("", "livekit"):
        return Decimal(0)
    return book.price_of(aggregate_record(row), plan) or Decimal(0)


def _quota(
    name: str,
    resources: tuple[str, ...],
    unit: str,
    size: Decimal,
    included: Decimal,
    used: Decimal,
    recent: Decimal | None,
    hard_cap: bool,
    window: Window,
    by_day: Iterable[tuple[str, Decimal]],
) -> Quota:
    """A quota from base amounts (``size`` base units make one ``unit``)."""
    exhausted_on: date | None = None
    exhausts_at: datetime | None = None
    if used >= included:
        total = Decimal(0)
        for day, amount in sorted(by_day):
            total += amount
            if total >= included:
                exhausted_on = date.fromisoformat(day)
                break
    elif recent is not None:
        exhausts_at = window.when_used(included - used, recent)
    return Quota(
        name=name,
        resources=resources,
        unit=unit,
        included=included / size,
        used=used / size,
        per_day=None if recent is None else window.per_day(recent) / size,
        hard_cap=hard_cap,
        exhausted_on=exhausted_on,
        exhausts_at=exhausts_at,
    )


def quotas_json(book: PriceBook, plan: str, usage: MonthUsage, quotas: list[Quota]) -> dict[str, Any]:
    window = usage.window
    hard = book.plan(plan).hard_caps
    return {
        "month": window.month,
        "plan": book.plan(plan).id,
        "as_of": rfc3339(window.now),
        "hard_caps": hard,
        "note": (
            "Build's quotas are hard caps: LiveKit refuses service past them"
            if hard
            else "usage past a quota is billed at the plan's overage price"
        ),
        "run_rate": {"since": rfc3339(window.since), "until": rfc3339(window.now), "days": _number(window.rate_days)},
        "quotas": [q.to_json() for q in quotas],
    }
