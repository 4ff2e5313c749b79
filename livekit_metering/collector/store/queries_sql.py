"""SQL for the read side, shared by SQLite ("?" parameters) and PostgreSQL ("$n" parameters)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

from ...records import Resource, Unit
from .base import GROUPS, ClosedMonth, SessionFilter, SessionRow, UsageRow, epoch_ms, from_ms

__all__ = ["MONTH_COLUMNS", "closed_month", "session_query", "session_row", "usage_query", "usage_row"]

MONTH_COLUMNS = "month, number, plan, issued_ms, total, document"


def closed_month(row: Sequence[Any], statements: Mapping[str, str] | None = None) -> ClosedMonth:
    month, number, plan, issued_ms, total, document = row
    return ClosedMonth(month, number, plan, int(issued_ms), total, document, dict(statements or {}))


SESSION_COLS = (
    "session_id, room, room_sid, agent_name, customer, start_ms, end_ms, closed, end_cause,"
    " agent_billable, agent_unit, records, has_agent"
)


class _Params:
    def __init__(self, style: str) -> None:
        self.style = style
        self.args: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.args.append(value)
        return "?" if self.style == "?" else f"${len(self.args)}"


def session_query(project: str, flt: SessionFilter, style: str) -> tuple[str, list[Any]]:
    p = _Params(style)
    where = [f"project = {p(project)}"]
    if flt.since is not None:
        where.append(f"end_ms >= {p(epoch_ms(flt.since))}")
    if flt.until is not None:
        where.append(f"start_ms < {p(epoch_ms(flt.until))}")
    for col, value in (("room", flt.room), ("agent_name", flt.agent), ("customer", flt.customer)):
        if value is not None:
            where.append(f"{col} = {p(value)}")
    sql = f"SELECT {SESSION_COLS} FROM sessions WHERE {' AND '.join(where)} ORDER BY start_ms DESC, session_id"
    sql += f" LIMIT {p(flt.limit)}"
    return sql, p.args


def session_row(row: Sequence[Any]) -> SessionRow:
    return SessionRow(
        session_id=row[0],
        room=row[1],
        room_sid=row[2],
        agent_name=row[3],
        customer=row[4],
        start=from_ms(int(row[5])),
        end=from_ms(int(row[6])),
        closed=bool(row[7]),
        end_cause=row[8],
        agent_billable=int(row[9]),
        agent_unit=row[10],
        records=int(row[11]),
        has_agent=bool(row[12]),
    )


def _day_ms(day: date) -> int:
    return epoch_ms(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))


def usage_query(
    project: str, since: date, until: date, group_by: str, style: str, *, key: str | None = None
) -> tuple[str, list[Any]]:
    """Summed usage per day; ``key``: only that group key's (a customer's, say)."""
    dim, col = GROUPS[group_by]
    p = _Params(style)
    if group_by == "room":
        where = f"project = {p(project)} AND start_ms >= {p(_day_ms(since))} AND start_ms < {p(_day_ms(until))}"
        if key is not None:
            where += f" AND room = {p(key)}"
        return (
            "SELECT room, resource, unit, model, provider, SUM(billable), SUM(raw), COUNT(*), language, day"
            f" FROM records WHERE {where}"
            " GROUP BY room, resource, unit, model, provider, language, day"
            " ORDER BY room, resource, unit, model, provider, language, day"
        ), p.args
    where = f"project = {p(project)} AND dim = {p(dim)}"
    where += f" AND day >= {p(since.isoformat())} AND day < {p(until.isoformat())}"
    if key is not None:
        where += f" AND {col} = {p(key)}"
    return (
        f"SELECT {col}, resource, unit, model, provider, SUM(billable), SUM(raw), SUM(records), language, day"
        f" FROM rollup WHERE {where}"
        f" GROUP BY {col}, resource, unit, model, provider, language, day"
        f" ORDER BY {col}, resource, unit, model, provider, language, day"
    ), p.args


def usage_row(row: Sequence[Any]) -> UsageRow:
    return UsageRow(
        key=str(row[0]),
        resource=Resource(row[1]),
        unit=Unit(row[2]),
        model=row[3],
        provider=row[4],
        billable=int(row[5]),
        raw=int(row[6]),
        records=int(row[7]),
        language=row[8],
        day=row[9],
    )
