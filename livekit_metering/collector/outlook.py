"""What the month is coming to, for the API, ``/metrics`` and the log: plan quotas, the month-end
forecast, and a customer's month-to-date spend (which the agent's customer budget checks).

* ``GET /v1/quotas`` and ``GET /v1/forecast`` (``month``, ``plan``: the project's by default,
  ``days``: the run-rate window, 7 by default): ``quotas.py``, ``forecast.py``.
* ``GET /v1/spend?customer=...``: the month's usage so far at the plan's list prices, before
  included quotas and credits (as a customer's statement counts it); ``exclude_session`` leaves
  out one session's records (the agent's customer budget adds its running session itself).
* The sweep logs a warning when a quota crosses 80 % and again at 100 %, once per level, quota and
  month (per collector process: a restart may say it once more).
* ``/metrics`` carries the same figures as gauges, computed at most every ``cache_for`` (10 s) for
  all projects, so scrapes cost one month's read per project, however often they come.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from ..records import rfc3339
from .forecast import forecast_json
from .pricing import PLANS, Pricer, aggregate_record
from .queries import BadQuery, name_param
from .quotas import Quota, month_quotas, quotas_json
from .runrate import MonthUsage, load_month, window_of
from .store.base import Store

__all__ = ["Outlook"]

log = logging.getLogger("livekit_metering.collector")

_MONTH = re.compile(r"(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])")
_LEVELS = {"ok": 0, "warning": 1, "exhausted": 2}
MAX_WINDOW_DAYS = 31


def _month_of(when: datetime) -> str:
    return f"{when.year:04d}-{when.month:02d}"


class Outlook:
    def __init__(
        self,
        store: Store,
        pricer: Pricer,
        plan_of: Callable[[str], str],
        clock: Callable[[], datetime],
        *,
        cache_for: timedelta = timedelta(seconds=10),
    ) -> None:
        self.store = store
        self.book = pricer.book
        self.plan_of = plan_of
        self.clock = clock
        self.cache_for = cache_for
        self._levels: dict[tuple[str, str, str, str], int] = {}  # (project, month, plan, quota) -> level logged
        self._gauges: tuple[float, bytes] | None = None
        self._gauges_lock = asyncio.Lock()

    # -- queries ---------------------------------------------------------------------------------

    def _params(self, project: str, params: Mapping[str, str]) -> tuple[str, str, int]:
        now = self.clock()
        month = params.get("month") or _month_of(now)
        if not _MONTH.fullmatch(month) or month > "9998-12":
            raise BadQuery(f"month={month[:20]!r} must look like 2026-11 (from 1970-01 to 9998-12)")
        plan = params.get("plan") or self.plan_of(project)
        if plan not in PLANS:
            raise BadQuery(f"plan={plan[:20]!r} is not one of {list(PLANS)}")
        days = params.get("days") or "7"
        if not re.fullmatch(r"[0-9]{1,2}", days) or not 1 <= int(days) <= MAX_WINDOW_DAYS:
            raise BadQuery(f"days={days[:20]!r} must be a whole number of days from 1 to {MAX_WINDOW_DAYS}")
        return month, plan, int(days)

    async def _usage(self, project: str, month: str, days: int) -> MonthUsage:
        first = await self.store.first_usage_day(project)
        try:
            window = window_of(month, self.clock(), days=days, first_day=first)
        except ValueError as exc:
            raise BadQuery(f"month={month}: {exc}; ask for this month or an earlier one") from None
        return await load_month(self.store, project, window)

    async def quotas(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        month, plan, days = self._params(project, params)
        usage = await self._usage(project, month, days)
        return quotas_json(self.book, plan, usage, month_quotas(self.book, plan, usage))

    async def forecast(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        month, plan, days = self._params(project, params)
        return forecast_json(self.book, plan, await self._usage(project, month, days))

    async def spend(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        """A customer's (or, without ``customer``, the project's) month-to-date at list prices;
        ``exclude_session``: without that session's records (the agent adds its own running total)."""
        customer = name_param("customer", params.get("customer")) or ""
        session = name_param("exclude_session", params.get("exclude_session")) or ""
        now = self.clock()
        plan = params.get("plan") or self.plan_of(project)
        if plan not in PLANS:
            raise BadQuery(f"plan={plan[:20]!r} is not one of {list(PLANS)}")
        window = window_of(_month_of(now), now)
        if customer:
            rows = await self.store.usage(project, window.start.date(), window.end.date(), "customer", key=customer)
        else:
            rows = await self.store.usage(project, window.start.date(), window.end.date(), "resource")
        cost, unpriced = Decimal(0), set()
        for row in rows:
            price = self.book.price_of(aggregate_record(row), plan) if row.billable else Decimal(0)
            if price is None:
                unpriced.add(row.model or row.resource.value)
            else:
                cost += price
        if session:  # the running session counts its own records: leave out what it has shipped so far
            for record in await self.store.session_records(project, [session]):
                if record.customer == customer and window.start <= record.start < window.end:
                    cost -= self.book.price_of(record, plan) or Decimal(0)
        return {
            "customer": customer,
            "month": window.month,
            "plan": plan,
            "as_of": rfc3339(now),
            "cost": format(cost, "f"),
            "unpriced": sorted(unpriced),
        }

    # -- warnings and gauges ----------------------------------------------------------------------

    async def check(self, project: str) -> list[Quota]:
        """This month's quotas of ``project`` on its plan; logs each quota's rise to 80 % and to 100 %."""
        month = _month_of(self.clock())
        plan = self.plan_of(project)
        usage = await self._usage(project, month, 7)
        quotas = month_quotas(self.book, plan, usage)
        for quota in quotas:
            key = (project, month, plan, quota.name)
            level = _LEVELS[quota.level]
            if level > self._levels.get(key, 0):
                self._levels[key] = level
                what = "exhausted" if quota.level == "exhausted" else "at 80 %"
                consequence = (
                    "LiveKit refuses service past it (hard cap)"
                    if quota.hard_cap
                    else "usage past it is billed at the overage price"
                )
                log.warning(
                    f"quota {what}: {quota.name} of project {project!r} has used {quota.to_json()['percent']} % of "
                    f"the {plan} plan's {_plain(quota.included)} {quota.unit} in {month}; {consequence}",
                    extra={"project": project, "month": month, "plan": plan, **quota.to_json()},
                )
        return quotas

    async def gauges(self, projects: Iterable[str]) -> bytes:
        """Prometheus text for every project's quotas and forecast (cached for ``cache_for``)."""
        async with self._gauges_lock:
            cached = self._gauges
            if cached is not None and time.monotonic() - cached[0] < self.cache_for.total_seconds():
                return cached[1]
            month = _month_of(self.clock())
            figures = []
            for project in projects:
                plan = self.plan_of(project)
                usage = await self._usage(project, month, 7)
                figures.append(
                    (project, plan, month, month_quotas(self.book, plan, usage), forecast_json(self.book, plan, usage))
                )
            registry = CollectorRegistry()
            registry.register(_Gauges(figures))
            text = generate_latest(registry)
            self._gauges = (time.monotonic(), text)
            return text


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class _Gauges(PromCollector):
    """The figures of one scrape as gauge families."""

    def __init__(self, figures: list[tuple[str, str, str, list[Quota], dict[str, Any]]]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["project", "plan", "month", "quota", "unit"]
        used = GaugeMetricFamily("metering_quota_used", "A plan quota's usage this month, in its unit.", labels=labels)
        included = GaugeMetricFamily("metering_quota_included", "A plan quota's monthly allowance.", labels=labels)
        remaining = GaugeMetricFamily("metering_quota_remaining", "What is left of a plan quota.", labels=labels)
        ratio = GaugeMetricFamily(
            "metering_quota_used_ratio", "Used / included (alert at 0.8 and 1).", labels=[*labels, "hard_cap"]
        )
        exhausts = GaugeMetricFamily(
            "metering_quota_exhausts_timestamp_seconds",
            "When the recent run-rate uses the quota up, if before the month ends (Unix time).",
            labels=labels,
        )
        to_date = GaugeMetricFamily(
            "metering_invoice_month_to_date_usd",
            "The invoice preview of the month so far (0 when nothing is due).",
            labels=["project", "plan", "month"],
        )
        projected = GaugeMetricFamily(
            "metering_invoice_forecast_usd",
            "The month-end forecast of the invoice (GET /v1/forecast; 0 when nothing is due).",
            labels=["project", "plan", "month"],
        )
        for project, plan, month, quotas, forecast in self.figures:
            for q in quotas:
                names = [project, plan, month, q.name, q.unit]
                used.add_metric(names, float(q.used))
                included.add_metric(names, float(q.included))
                remaining.add_metric(names, float(q.remaining))
                ratio.add_metric([*names, str(q.hard_cap).lower()], float(q.ratio))
                if q.exhausts_at is not None:
                    exhausts.add_metric(names, q.exhausts_at.timestamp())
            to_date.add_metric([project, plan, month], float(forecast["month_to_date"]["total"] or 0))
            projected.add_metric([project, plan, month], float(forecast["total"] or 0))
        return [used, included, remaining, ratio, exhausts, to_date, projected]
