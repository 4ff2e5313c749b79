"""The query API as plain methods: sessions, a session's records, usage and cost, invoice preview.

Handlers only parse parameters into these calls; everything is scoped to one project.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..pricing import Costing, PriceKey, price_key, price_usage
from ..records import parse_utc, rfc3339
from .config import Limits
from .pricing import PLANS, Pricer, usage_price_key
from .store.base import GROUPS, SessionFilter, Store, UsageRow, billable_of

__all__ = ["BadQuery", "Queries", "parse_time"]


class BadQuery(ValueError):
    """A query parameter is wrong (HTTP 400); the message names it and the accepted form."""


def money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


# Queries take times in these years: every day and month arithmetic on them stays in range.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 1, 1, tzinfo=timezone.utc)


def parse_time(name: str, value: str | None) -> datetime | None:
    """RFC 3339 time or a YYYY-MM-DD date (midnight UTC), from 1970 to 9998."""
    if value is None or value == "":
        return None
    try:
        # A "+" in a query string arrives as a space: "+00:00" must survive unencoded use.
        when = parse_utc(value[:64].replace(" ", "+"))
    except (ValueError, OverflowError) as exc:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise BadQuery(f"{name}: {str(exc)[:200]}") from None
    if not EARLIEST <= when < LATEST:
        raise BadQuery(f"{name} must be from 1970-01-01 to 9998-12-31")
    return when


def name_param(name: str, value: str | None) -> str | None:
    """A name to match (room, agent, customer, session id): as records hold them, at most 256
    characters and no NUL (which PostgreSQL text cannot hold)."""
    if not value:
        return None
    if len(value) > 256 or "\x00" in value:
        raise BadQuery(f"{name} must be at most 256 characters, without NUL")
    return value


def _month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=timezone.utc)


def _day_floor(when: datetime) -> date:
    return when.astimezone(timezone.utc).date()


def _day_ceil(when: datetime) -> date:
    day = when.astimezone(timezone.utc)
    floor = day.date()
    midnight = datetime(floor.year, floor.month, floor.day, tzinfo=timezone.utc)
    return floor if day == midnight else floor + timedelta(days=1)


class Queries:
    def __init__(self, store: Store, pricer: Pricer, limits: Limits) -> None:
        self.store = store
        self.pricer = pricer
        self.limits = limits

    async def sessions(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        limit = self._limit(params.get("limit"))
        flt = SessionFilter(
            since=parse_time("since", params.get("since")),
            until=parse_time("until", params.get("until")),
            room=name_param("room", params.get("room")),
            agent=name_param("agent", params.get("agent")),
            customer=name_param("customer", params.get("customer")),
            limit=limit,
        )
        costing = Costing(self.pricer.book, self._plan(params))
        rows = await self.store.sessions(project, flt)
        # Each session's usage summed per price key and day, then priced: as /v1/usage prices it.
        sums: dict[str, dict[PriceKey, int]] = {row.session_id: {} for row in rows}
        for record in await self.store.session_records(project, [row.session_id for row in rows]):
            mine = sums[record.session_id]
            key = price_key(record)
            mine[key] = mine.get(key, 0) + billable_of(record)
        out = []
        for row in rows:
            out.append(
                {
                    "session_id": row.session_id,
                    "room": row.room,
                    "room_sid": row.room_sid,
                    "agent_name": row.agent_name,
                    "customer": row.customer,
                    "start": rfc3339(row.start),
                    "end": rfc3339(row.end),
                    "state": ("closed" if row.closed else "open") if row.has_agent else "usage",
                    "end_cause": row.end_cause,
                    "billed_minutes": format(row.billed_minutes.normalize(), "f"),
                    **costing.cost(sums[row.session_id].items()).json_fields(),
                    "records": row.records,
                }
            )
        return {"sessions": out}

    async def session_records(self, project: str, session_id: str, plan: str = "ship") -> dict[str, Any]:
        records = await self.store.session_records(project, [name_param("session id", session_id) or ""])
        return {"records": [{**r.to_json(), "cost": money(self.pricer.price_of(r, plan))} for r in records]}

    async def usage(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        group_by = params.get("group_by") or "resource"
        if group_by not in GROUPS:
            raise BadQuery(f"group_by={group_by[:20]!r} is not one of {sorted(GROUPS)}")
        plan = self._plan(params)
        now = datetime.now(timezone.utc)
        since = parse_time("since", params.get("since")) or _month_start(now)
        until = parse_time("until", params.get("until")) or now
        if until < since:
            raise BadQuery("until is before since")
        rows = await self.store.usage(project, _day_floor(since), _day_ceil(until), group_by)
        return self.usage_json(group_by, rows, plan)

    def usage_json(self, group_by: str, rows: list[UsageRow], plan: str) -> dict[str, Any]:
        """Rows summed per (key, resource, unit, model, day), priced, shown per (key, resource, unit): each
        with its priced cost and the names of its unpriced usage."""
        sums = ((row.key, usage_price_key(row), row.billable) for row in rows)
        return price_usage(sums, Costing(self.pricer.book, plan), group_by).to_json()

    async def invoice(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        month = params.get("month") or f"{now.year:04d}-{now.month:02d}"
        plan = self._plan(params)
        if not re.fullmatch(r"(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])", month) or month > "9998-12":
            raise BadQuery(f"month={month[:20]!r} must look like 2026-11 (from 1970-01 to 9998-12)")
        first = date.fromisoformat(f"{month}-01")
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        rows = await self.store.usage(project, first, after, "resource")
        return self.pricer.invoice(rows, plan, month)

    def _plan(self, params: Mapping[str, str]) -> str:
        plan = params.get("plan") or "ship"
        if plan not in PLANS:
            raise BadQuery(f"plan={plan[:20]!r} is not one of {list(PLANS)}")
        return plan

    def _limit(self, value: str | None) -> int:
        if not value:
            return 100
        try:
            limit = int(value) if len(value) <= 12 else 0
        except ValueError:
            raise BadQuery(f"limit={value[:20]!r} must be an integer") from None
        if not 1 <= limit <= self.limits.max_query_limit:
            raise BadQuery(f"limit must be between 1 and {self.limits.max_query_limit}")
        return limit
