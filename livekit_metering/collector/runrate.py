"""A month's usage so far and the recent daily run-rate, the ground of quotas and the forecast.

The run-rate window is the last ``days`` whole UTC days before today plus today so far:
[midnight ``days`` days ago, now), never before the project's first day of usage (a project two
days old has a two-day rate, not a seven-day one diluted by days it did not exist). The window may
reach back into the previous month: on the 2nd, yesterday's usage says more about the rate than
this morning's alone. The store keeps usage per UTC day, so a window starting at a midnight holds
exactly the usage since then; today's usage so far is divided by the part of today gone by.

For a past month, "now" is its end: nothing is left to project, and the rate is that of its last
days.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, localcontext

from ..pricing.invoice import month_bounds
from .store.base import Store, UsageRow, epoch_ms

__all__ = ["MonthUsage", "Window", "load_month", "window_of"]

_DAY_MS = 86_400_000


def _midnight(when: datetime) -> datetime:
    return datetime(when.year, when.month, when.day, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Window:
    """A month [start, end), the instant it is looked at (``now``, within it) and the run-rate
    window [since, now)."""

    month: str
    start: datetime
    end: datetime
    now: datetime
    since: datetime

    @property
    def elapsed_ms(self) -> int:
        return epoch_ms(self.now) - epoch_ms(self.since)

    @property
    def left_ms(self) -> int:
        """What is left of the month after ``now``."""
        return epoch_ms(self.end) - epoch_ms(self.now)

    @property
    def rate_days(self) -> Decimal:
        return Decimal(self.elapsed_ms) / _DAY_MS

    @property
    def days_left(self) -> Decimal:
        return Decimal(self.left_ms) / _DAY_MS

    def per_day(self, amount: Decimal) -> Decimal:
        """``amount`` used over the window, as a daily rate (0 when the window is empty)."""
        if self.elapsed_ms <= 0:
            return Decimal(0)
        with localcontext() as ctx:
            ctx.prec = 40
            return amount * _DAY_MS / self.elapsed_ms

    def rest_of_month(self, amount: Decimal) -> Decimal:
        """What the window's rate of ``amount`` adds up to over the rest of the month (one division)."""
        if self.elapsed_ms <= 0:
            return Decimal(0)
        with localcontext() as ctx:
            ctx.prec = 40
            return amount * self.left_ms / self.elapsed_ms

    def when_used(self, amount: Decimal, recent: Decimal) -> datetime | None:
        """The instant ``amount`` more is used at the window's rate (``recent`` used over it), or None
        when the rate is zero or that is after the month's end."""
        if recent <= 0 or self.elapsed_ms <= 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 40
            ms = amount * self.elapsed_ms / recent
        if ms >= self.left_ms:
            return None
        return self.now + timedelta(milliseconds=int(ms))  # ms is below a month: int() is exact enough


def window_of(month: str, now: datetime, *, days: int = 7, first_day: date | None = None) -> Window:
    """The window of ``month`` (``YYYY-MM``) looked at at ``now``; ``first_day``: the project's first
    day of usage. Raises ValueError for a month that has not begun."""
    start, end = month_bounds(month)
    if now < start:
        raise ValueError(f"month {month} has not begun")
    now = min(now, end)
    since = _midnight(now) - timedelta(days=days)
    if first_day is not None:
        since = max(since, datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc))
    return Window(month=month, start=start, end=end, now=now, since=min(since, now))


@dataclass(frozen=True)
class MonthUsage:
    """The usage rows (per UTC day) of a month so far, and those of the run-rate window."""

    window: Window
    month: Sequence[UsageRow]
    recent: Sequence[UsageRow]


async def load_month(store: Store, project: str, window: Window) -> MonthUsage:
    """One read of the store: every day from the window's start to the month's end."""
    first = min(window.since, window.start).date()
    rows = await store.usage(project, first, window.end.date(), "resource")
    return month_usage(rows, window)


def month_usage(rows: Iterable[UsageRow], window: Window) -> MonthUsage:
    """Split per-day rows into the month's and the window's (a row can be in both)."""
    month_first, since = window.start.date().isoformat(), window.since.date().isoformat()
    last = (window.now - timedelta(milliseconds=1)).date().isoformat()  # the day of the last instant counted
    month: list[UsageRow] = []
    recent: list[UsageRow] = []
    for row in rows:
        if month_first <= row.day <= last:
            month.append(row)
        if since <= row.day <= last and window.elapsed_ms > 0:
            recent.append(row)
    return MonthUsage(window, month, recent)
