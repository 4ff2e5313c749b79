"""SQLite store: the zero set-up default. One connection, used from one dedicated thread.

Durability: WAL journal with ``synchronous=FULL``, so a commit is fsynced to the WAL before the
collector acknowledges it: it survives a process kill and a power loss. (``NORMAL`` in WAL mode
survives a process kill but may lose the last commits on power loss, which would break "ack only
after a durable commit".) ``BEGIN IMMEDIATE`` takes the write lock before reading what is stored,
so two processes sharing one file cannot both insert an id.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from ...records import MeterRecord, Resource, Status, Unit
from .base import (
    GROUPS,
    Outcome,
    SessionFilter,
    SessionRow,
    Store,
    Stored,
    UsageRow,
    billable_of,
    day_of,
    epoch_ms,
    from_ms,
)
from .batch import plan_batch

__all__ = ["SqliteStore"]

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: records, roll-ups, sessions, webhook ids
    """
    CREATE TABLE records (
        project TEXT NOT NULL, id TEXT NOT NULL, session_id TEXT NOT NULL,
        resource TEXT NOT NULL, unit TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
        agent_name TEXT NOT NULL, customer TEXT NOT NULL, room TEXT NOT NULL, room_sid TEXT NOT NULL,
        status TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, day TEXT NOT NULL,
        billable INTEGER NOT NULL, raw INTEGER NOT NULL, by_webhook INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (project, id)
    );
    CREATE INDEX records_session ON records (project, session_id);
    CREATE INDEX records_start ON records (project, start_ms);
    CREATE INDEX records_open ON records (project, room_sid)
        WHERE resource = 'agent_session' AND (status = 'checkpoint' OR by_webhook = 1);
    CREATE TABLE rollup (
        project TEXT NOT NULL, day TEXT NOT NULL, resource TEXT NOT NULL, unit TEXT NOT NULL,
        model TEXT NOT NULL, agent_name TEXT NOT NULL, customer TEXT NOT NULL, provider TEXT NOT NULL,
        billable INTEGER NOT NULL, raw INTEGER NOT NULL, records INTEGER NOT NULL,
        PRIMARY KEY (project, day, resource, unit, model, agent_name, customer, provider)
    );
    CREATE TABLE sessions (
        project TEXT NOT NULL, session_id TEXT NOT NULL, room TEXT NOT NULL, room_sid TEXT NOT NULL,
        agent_name TEXT NOT NULL, customer TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
        records INTEGER NOT NULL, has_agent INTEGER NOT NULL, closed INTEGER NOT NULL, end_cause TEXT NOT NULL,
        agent_billable INTEGER NOT NULL, agent_unit TEXT NOT NULL,
        PRIMARY KEY (project, session_id)
    );
    CREATE INDEX sessions_start ON sessions (project, start_ms);
    CREATE TABLE webhooks (
        project TEXT NOT NULL, id TEXT NOT NULL, event TEXT NOT NULL, received_ms INTEGER NOT NULL,
        PRIMARY KEY (project, id)
    );
    """,
]

_RECORD_COLS = (
    "project, id, session_id, resource, unit, model, provider, agent_name, customer, room, room_sid, "
    "status, start_ms, end_ms, day, billable, raw, by_webhook, body"
)


def record_row(project: str, item: Stored) -> tuple[Any, ...]:
    r = item.record
    return (
        project,
        r.id,
        r.session_id,
        r.resource.value,
        r.unit.value,
        r.model,
        r.provider,
        r.agent_name,
        r.customer,
        r.room,
        r.room_sid,
        r.status.value,
        epoch_ms(r.start),
        epoch_ms(r.end),
        day_of(r.start),
        billable_of(r),
        r.raw,
        1 if item.by_webhook else 0,
        r.model_dump_json(),
    )


def _stored(body: str, by_webhook: Any) -> Stored:
    return Stored(MeterRecord.model_validate_json(body), bool(by_webhook))


class SqliteStore(Store):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise RuntimeError("the store is not open; use `async with store:` or await store.open()")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metering-sqlite")
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA cache_size=-65536")  # 64 MB page cache: keeps the id index hot while ingesting
        self._db = db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)
        self._pool = None

    # -- writes ----------------------------------------------------------------------------------

    async def ingest(self, project: str, items: Sequence[Stored]) -> list[Outcome]:
        if not items:
            return []
        return await self._run(self._ingest_sync, project, items)

    def _ingest_sync(self, project: str, items: Sequence[Stored]) -> list[Outcome]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = list({item.record.id for item in items})
            existing: dict[str, Stored] = {}
            for chunk in range(0, len(ids), 900):
                part = ids[chunk : chunk + 900]
                marks = ",".join("?" * len(part))
                for rid, body, hook in db.execute(
                    f"SELECT id, body, by_webhook FROM records WHERE project = ? AND id IN ({marks})",
                    (project, *part),
                ):
                    existing[rid] = _stored(body, hook)
            plan = plan_batch(items, existing)
            if plan.inserts:
                db.executemany(
                    f"INSERT INTO records ({_RECORD_COLS}) VALUES ({','.join('?' * 19)})",
                    [record_row(project, item) for item in plan.inserts],
                )
            if plan.updates:
                db.executemany(
                    "UPDATE records SET resource=?2, unit=?3, model=?4, provider=?5, agent_name=?6, customer=?7,"
                    " room=?8, room_sid=?9, status=?10, start_ms=?11, end_ms=?12, day=?13, billable=?14, raw=?15,"
                    " by_webhook=?16, body=?17, session_id=?18 WHERE project=?1 AND id=?19",
                    [_update_row(project, item) for item in plan.updates],
                )
            if plan.rollups:
                db.executemany(
                    "INSERT INTO rollup VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
                    " billable = billable + excluded.billable, raw = raw + excluded.raw,"
                    " records = records + excluded.records",
                    plan.rollup_rows(project),
                )
            if plan.sessions:
                db.executemany(_SESSION_UPSERT, plan.session_rows(project))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return plan.outcomes

    async def mark_webhook(self, project: str, event_id: str, event: str) -> bool:
        def mark() -> bool:
            import time

            cur = self.db.execute(
                "INSERT INTO webhooks VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                (project, event_id, event, int(time.time() * 1000)),
            )
            return cur.rowcount == 1

        return await self._run(mark)

    # -- reads -----------------------------------------------------------------------------------

    async def open_agent_sessions(
        self, project: str, *, session_id: str | None = None, room_sid: str | None = None, room: str | None = None
    ) -> list[Stored]:
        sql = (
            "SELECT body, by_webhook FROM records WHERE project = ? AND resource = 'agent_session'"
            " AND (status = 'checkpoint' OR by_webhook = 1)"
        )
        args: list[Any] = [project]
        for col, value in (("session_id", session_id), ("room_sid", room_sid), ("room", room)):
            if value is not None:
                sql += f" AND {col} = ?"
                args.append(value)

        def read() -> list[Stored]:
            return [_stored(body, hook) for body, hook in self.db.execute(sql, args)]

        return await self._run(read)

    async def sessions(self, project: str, flt: SessionFilter) -> list[SessionRow]:
        sql, args = _session_query(project, flt, "?")

        def read() -> list[SessionRow]:
            return [_session_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def session_records(self, project: str, session_ids: Sequence[str]) -> list[MeterRecord]:
        def read() -> list[MeterRecord]:
            out: list[MeterRecord] = []
            for sid in session_ids:
                rows = self.db.execute(
                    "SELECT body FROM records WHERE project = ? AND session_id = ? ORDER BY start_ms, id",
                    (project, sid),
                )
                out.extend(MeterRecord.model_validate_json(body) for (body,) in rows)
            return out

        return await self._run(read)

    async def usage(self, project: str, since: date, until: date, group_by: str) -> list[UsageRow]:
        sql, args = usage_query(project, since, until, group_by, "?")

        def read() -> list[UsageRow]:
            return [usage_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def count(self, project: str) -> int:
        def read() -> int:
            return int(self.db.execute("SELECT COUNT(*) FROM records WHERE project = ?", (project,)).fetchone()[0])

        return await self._run(read)


def _update_row(project: str, item: Stored) -> tuple[Any, ...]:
    row = record_row(project, item)
    # (project, resource..body) then session_id, id: matches the numbered parameters above.
    return (project, *row[3:], row[2], row[1])


_SESSION_UPSERT = """
INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET
    room = CASE WHEN room = '' THEN excluded.room ELSE room END,
    room_sid = CASE WHEN room_sid = '' THEN excluded.room_sid ELSE room_sid END,
    agent_name = CASE WHEN agent_name = '' THEN excluded.agent_name ELSE agent_name END,
    customer = CASE WHEN customer = '' THEN excluded.customer ELSE customer END,
    start_ms = MIN(start_ms, excluded.start_ms),
    end_ms = MAX(end_ms, excluded.end_ms),
    records = records + excluded.records,
    has_agent = MAX(has_agent, excluded.has_agent),
    closed = CASE WHEN excluded.has_agent THEN excluded.closed ELSE closed END,
    end_cause = CASE WHEN excluded.has_agent THEN excluded.end_cause ELSE end_cause END,
    agent_billable = CASE WHEN excluded.has_agent THEN excluded.agent_billable ELSE agent_billable END,
    agent_unit = CASE WHEN excluded.has_agent THEN excluded.agent_unit ELSE agent_unit END
"""

SESSION_COLS = (
    "session_id, room, room_sid, agent_name, customer, start_ms, end_ms, closed, end_cause,"
    " agent_billable, agent_unit, records"
)


def _session_query(project: str, flt: SessionFilter, mark: str) -> tuple[str, list[Any]]:
    """SQL for the sessions list; ``mark`` is "?" (SQLite) or "$" (PostgreSQL numbered parameters)."""
    args: list[Any] = [project]

    def p(value: Any) -> str:
        args.append(value)
        return "?" if mark == "?" else f"${len(args)}"

    where = ["project = " + ("?" if mark == "?" else "$1")]
    if flt.since is not None:
        where.append(f"end_ms >= {p(epoch_ms(flt.since))}")
    if flt.until is not None:
        where.append(f"start_ms < {p(epoch_ms(flt.until))}")
    for col, value in (("room", flt.room), ("agent_name", flt.agent), ("customer", flt.customer)):
        if value is not None:
            where.append(f"{col} = {p(value)}")
    sql = f"SELECT {SESSION_COLS} FROM sessions WHERE {' AND '.join(where)} ORDER BY start_ms DESC, session_id"
    sql += f" LIMIT {p(flt.limit)}"
    return sql, args


def _session_row(row: Sequence[Any]) -> SessionRow:
    return SessionRow(
        session_id=row[0],
        room=row[1],
        room_sid=row[2],
        agent_name=row[3],
        customer=row[4],
        start=from_ms(row[5]),
        end=from_ms(row[6]),
        closed=bool(row[7]),
        end_cause=row[8],
        agent_billable=int(row[9]),
        agent_unit=row[10],
        records=int(row[11]),
    )


session_row = _session_row
session_query = _session_query


def usage_query(project: str, since: date, until: date, group_by: str, mark: str) -> tuple[str, list[Any]]:
    col = GROUPS[group_by]
    ph = ["?", "?", "?"] if mark == "?" else ["$1", "$2", "$3"]
    if group_by == "room":
        args: list[Any] = [project, _day_ms(since), _day_ms(until)]
        sql = (
            "SELECT room, resource, unit, model, provider, SUM(billable), SUM(raw), COUNT(*) FROM records"
            f" WHERE project = {ph[0]} AND start_ms >= {ph[1]} AND start_ms < {ph[2]}"
            " GROUP BY room, resource, unit, model, provider ORDER BY room, resource, unit, model, provider"
        )
        return sql, args
    args = [project, since.isoformat(), until.isoformat()]
    sql = (
        f"SELECT {col}, resource, unit, model, provider, SUM(billable), SUM(raw), SUM(records) FROM rollup"
        f" WHERE project = {ph[0]} AND day >= {ph[1]} AND day < {ph[2]}"
        f" GROUP BY {col}, resource, unit, model, provider ORDER BY {col}, resource, unit, model, provider"
    )
    return sql, args


def _day_ms(day: date) -> int:
    from datetime import datetime, timezone

    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


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
    )


_ = Status  # re-exported names used by type checkers only
