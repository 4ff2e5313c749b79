"""The query API as plain methods: sessions, a session's records, usage and cost, invoice preview.

Handlers only parse parameters into these calls; everything is scoped to one project.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..records import parse_utc, rfc3339
from .config import Limits
from .pricing import PLANS, Pricer, aggregate_record
from .store.base import GROUPS, SessionFilter, Store, UsageRow

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


def _name(name: str, value: str | None) -> str | None:
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

    async def sessions(self, project: str, params: Mapping[str, str], plan: str = "ship") -> dict[str, Any]:
        limit = self._limit(params.get("limit"))
        flt = SessionFilter(
            since=parse_time("since", params.get("since")),
            until=parse_time("until", params.get("until")),
            room=_name("room", params.get("room")),
            agent=_name("agent", params.get("agent")),
            customer=_name("customer", params.get("customer")),
            limit=limit,
        )
        rows = await self.store.sessions(project, flt)
        costs: dict[str, Decimal | None] = {row.session_id: Decimal(0) for row in rows}
        for record in await self.store.session_records(project, [row.session_id for row in rows]):
            price = self.pricer.price_of(record, plan)
            so_far = costs.get(record.session_id)
            costs[record.session_id] = None if price is None or so_far is None else so_far + price
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
                    "cost": money(costs.get(row.session_id)),
                    "records": row.records,
                }
            )
        return {"sessions": out}

    async def session_records(self, project: str, session_id: str, plan: str = "ship") -> dict[str, Any]:
        records = await self.store.session_records(project, [_name("session id", session_id) or ""])
        return {"records": [{**r.to_json(), "cost": money(self.pricer.price_of(r, plan))} for r in records]}

    async def usage(self, project: str, params: Mapping[str, str], plan: str = "ship") -> dict[str, Any]:
        group_by = params.get("group_by") or "resource"
        if group_by not in GROUPS:
            raise BadQuery(f"group_by={group_by[:20]!r} is not one of {sorted(GROUPS)}")
        now = datetime.now(timezone.utc)
        since = parse_time("since", params.get("since")) or _month_start(now)
        until = parse_time("until", params.get("until")) or now
        if until < since:
            raise BadQuery("until is before since")
        rows = await self.store.usage(project, _day_floor(since), _day_ceil(until), group_by)
        return self.usage_json(group_by, rows, plan)

    def usage_json(self, group_by: str, rows: list[UsageRow], plan: str) -> dict[str, Any]:
        # Rows are priced per (key, resource, unit, model) and shown per (key, resource, unit).
        merged: dict[tuple[str, str, str], dict[str, Any]] = {}
        total = Decimal(0)
        unpriced: set[str] = set()
        for row in rows:
            cost = self.pricer.price_of(aggregate_record(row), plan) if row.billable else Decimal(0)
            if cost is None:
                unpriced.add(row.model or row.resource.value)
            else:
                total += cost
            slot = merged.setdefault(
                (row.key, row.resource.value, row.unit.value),
                {"quantity": Decimal(0), "cost": Decimal(0)},
            )
            slot["quantity"] += row.quantity
            slot["cost"] = None if cost is None or slot["cost"] is None else slot["cost"] + cost
        return {
            "group_by": group_by,
            "rows": [
                {
                    "key": key,
                    "resource": resource,
                    "unit": unit,
                    "quantity": format(slot["quantity"].normalize(), "f"),
                    "cost": money(slot["cost"]),
                }
                for (key, resource, unit), slot in merged.items()
            ],
            "total": format(total, "f"),
            "unpriced": sorted(unpriced),
        }

    async def invoice(self, project: str, params: Mapping[str, str]) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        month = params.get("month") or f"{now.year:04d}-{now.month:02d}"
        plan = params.get("plan") or "ship"
        if not re.fullmatch(r"(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])", month) or month > "9998-12":
            raise BadQuery(f"month={month[:20]!r} must look like 2026-11 (from 1970-01 to 9998-12)")
        if plan not in PLANS:
            raise BadQuery(f"plan={plan[:20]!r} is not one of {list(PLANS)}")
        first = date.fromisoformat(f"{month}-01")
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        rows = await self.store.usage(project, first, after, "resource")
        return self.pricer.invoice(rows, plan, month)

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
