"""PostgreSQL store (asyncpg). Several collector processes may share one database.

Concurrency: each batch runs in one transaction that locks the stored rows of its ids
(``SELECT ... FOR UPDATE``, in id order) and inserts new ids with ``INSERT ... ON CONFLICT DO
NOTHING RETURNING id``. When another process inserted one of those ids first, fewer rows come back:
the transaction rolls back and runs again, now seeing (and locking) the other process's rows. So
two processes receiving the same batch at the same time store it once and roll it up once.
Deadlocks between overlapping batches are retried the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from ...records import MeterRecord, Resource
from .base import (
    ClosedMonth,
    Outcome,
    SessionFilter,
    SessionRow,
    Store,
    Stored,
    StoreLimit,
    UsageRow,
    WebhookMark,
    epoch_ms,
)
from .batch import plan_batch
from .queries_sql import MONTH_COLUMNS, closed_month, session_query, session_row, usage_query, usage_row
from .rows import COLUMNS, NAMES, READ_COLUMNS, record_row, stored_from_row

__all__ = ["PostgresStore"]

log = logging.getLogger("livekit_metering.collector")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE records (
        project TEXT NOT NULL, id TEXT NOT NULL, session_id TEXT NOT NULL,
        resource TEXT NOT NULL, unit TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
        agent_name TEXT NOT NULL, customer TEXT NOT NULL, room TEXT NOT NULL, room_sid TEXT NOT NULL,
        worker_id TEXT NOT NULL, language TEXT NOT NULL, policy TEXT NOT NULL, quantity TEXT NOT NULL,
        status TEXT NOT NULL, start_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL, day TEXT NOT NULL,
        billable BIGINT NOT NULL, raw BIGINT NOT NULL, by_webhook INTEGER NOT NULL,
        attributes TEXT NOT NULL, meta TEXT NOT NULL,
        PRIMARY KEY (project, id)
    );
    CREATE INDEX records_session ON records (project, session_id);
    CREATE INDEX records_start ON records (project, start_ms);
    CREATE INDEX records_open ON records (project, room_sid)
        WHERE resource = 'agent_session' AND (status = 'checkpoint' OR by_webhook = 1);
    CREATE TABLE rollup (
        project TEXT NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, day TEXT NOT NULL,
        resource TEXT NOT NULL, unit TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
        language TEXT NOT NULL, billable BIGINT NOT NULL, raw BIGINT NOT NULL, records BIGINT NOT NULL,
        PRIMARY KEY (project, dim, day, key, resource, unit, model, provider, language)
    );
    CREATE TABLE sessions (
        project TEXT NOT NULL, session_id TEXT NOT NULL, room TEXT NOT NULL, room_sid TEXT NOT NULL,
        agent_name TEXT NOT NULL, customer TEXT NOT NULL, start_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL,
        records BIGINT NOT NULL, has_agent BOOLEAN NOT NULL, closed BOOLEAN NOT NULL, end_cause TEXT NOT NULL,
        agent_billable BIGINT NOT NULL, agent_unit TEXT NOT NULL,
        PRIMARY KEY (project, session_id)
    );
    CREATE INDEX sessions_start ON sessions (project, start_ms);
    CREATE TABLE webhooks (
        project TEXT NOT NULL, id TEXT NOT NULL, event TEXT NOT NULL, received_ms BIGINT NOT NULL,
        PRIMARY KEY (project, id)
    );
    """,
    # 2: open usages (checkpoints) by room and by age; closed months, their invoices and statements
    """
    ALTER TABLE webhooks ADD COLUMN room_sid TEXT NOT NULL DEFAULT '';
    ALTER TABLE webhooks ADD COLUMN reported_ms BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX webhooks_rooms ON webhooks (project, room_sid) WHERE event = 'room_finished';
    CREATE INDEX records_checkpoints ON records (project, room_sid) WHERE status = 'checkpoint';
    CREATE INDEX records_stale ON records (end_ms) WHERE status = 'checkpoint';
    CREATE TABLE invoices (
        project TEXT NOT NULL, month TEXT NOT NULL, number TEXT, seq INTEGER, plan TEXT NOT NULL,
        issued_ms BIGINT NOT NULL, total TEXT, document TEXT NOT NULL,
        PRIMARY KEY (project, month)
    );
    CREATE UNIQUE INDEX invoices_number ON invoices (project, number);
    CREATE TABLE statements (
        project TEXT NOT NULL, number TEXT NOT NULL, customer TEXT NOT NULL, document TEXT NOT NULL,
        PRIMARY KEY (project, number, customer)
    );
    """,
]

_INSERT = (
    f"INSERT INTO records ({', '.join(NAMES)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{kind}[]" for i, (_, kind) in enumerate(COLUMNS))
    + ") ON CONFLICT DO NOTHING RETURNING id"
)
_UPDATE = (
    "UPDATE records SET "
    + ", ".join(f"{name} = ${i + 1}" for i, name in enumerate(NAMES) if name not in ("project", "id"))
    + " WHERE project = $1 AND id = $2"
)
_ROLLUP = (
    "INSERT INTO rollup AS r"
    " (project, dim, key, day, resource, unit, model, provider, language, billable, raw, records)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
    " ON CONFLICT (project, dim, day, key, resource, unit, model, provider, language) DO UPDATE SET"
    " billable = r.billable + excluded.billable, raw = r.raw + excluded.raw, records = r.records + excluded.records"
)
_SESSION = """
INSERT INTO sessions AS s VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)
ON CONFLICT (project, session_id) DO UPDATE SET
    room = CASE WHEN s.room = '' THEN excluded.room ELSE s.room END,
    room_sid = CASE WHEN s.room_sid = '' THEN excluded.room_sid ELSE s.room_sid END,
    agent_name = CASE WHEN s.agent_name = '' THEN excluded.agent_name ELSE s.agent_name END,
    customer = CASE WHEN s.customer = '' THEN excluded.customer ELSE s.customer END,
    start_ms = LEAST(s.start_ms, excluded.start_ms),
    end_ms = GREATEST(s.end_ms, excluded.end_ms),
    records = s.records + excluded.records,
    has_agent = s.has_agent OR excluded.has_agent,
    closed = CASE WHEN excluded.has_agent THEN excluded.closed ELSE s.closed END,
    end_cause = CASE WHEN excluded.has_agent THEN excluded.end_cause ELSE s.end_cause END,
    agent_billable = CASE WHEN excluded.has_agent THEN excluded.agent_billable ELSE s.agent_billable END,
    agent_unit = CASE WHEN excluded.has_agent THEN excluded.agent_unit ELSE s.agent_unit END
"""
_MIGRATION_LOCK = 7_242_019_001  # pg_advisory_xact_lock key: one process migrates at a time
_ISSUE_LOCK = 7_242_019  # with the project's hash: one process closes a project's month at a time
_ATTEMPTS = 20


class _Raced(Exception):
    """Another transaction inserted one of our ids first: run the batch again."""


class PostgresStore(Store):
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self.url = url
        self._min, self._max = min_size, max_size
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the store is not open; use `async with store:` or await store.open()")
        return self._pool

    async def open(self) -> None:
        # synchronous_commit on, whatever the server's default: a batch is acknowledged only after its
        # commit is flushed to the WAL on disk.
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=self._min,
            max_size=self._max,
            timeout=10,
            server_settings={"synchronous_commit": "on"},
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ingest(self, project: str, items: Sequence[Stored]) -> list[Outcome]:
        if not items:
            return []
        for attempt in range(_ATTEMPTS):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await self._ingest_tx(conn, project, items)
            except (_Raced, asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                log.debug("ingest retry", extra={"attempt": attempt + 1, "why": type(exc).__name__})
            except asyncpg.DataError as exc:  # a value the columns cannot hold: a bigint sum out of range
                raise StoreLimit(
                    f"the store cannot hold this batch ({str(exc)[:120]}); nothing of it was stored"
                ) from None
        raise RuntimeError(f"ingest did not settle after {_ATTEMPTS} attempts (heavy contention)")

    async def _ingest_tx(self, conn: Any, project: str, items: Sequence[Stored]) -> list[Outcome]:
        ids = sorted({item.record.id for item in items})
        existing = {
            row[0]: stored_from_row(tuple(row))
            for row in await conn.fetch(
                f"SELECT {READ_COLUMNS} FROM records WHERE project = $1 AND id = ANY($2::text[])"
                " ORDER BY id FOR UPDATE",
                project,
                ids,
            )
        }
        plan = plan_batch(items, existing)
        if plan.inserts:
            rows = sorted((record_row(project, item) for item in plan.inserts), key=lambda r: r[1])
            columns = [list(col) for col in zip(*rows, strict=True)]
            inserted = await conn.fetch(_INSERT, *columns)
            if len(inserted) != len(rows):
                raise _Raced()
        if plan.updates:
            await conn.executemany(_UPDATE, [record_row(project, item) for item in plan.updates])
        if plan.deltas.rollups:
            await conn.executemany(_ROLLUP, plan.deltas.rollup_rows(project))
        if plan.deltas.sessions:
            await conn.executemany(_SESSION, plan.deltas.session_rows(project))
        return plan.outcomes

    async def ingest_webhook(self, project: str, mark: WebhookMark, items: Sequence[Stored]) -> list[Outcome] | None:
        for attempt in range(_ATTEMPTS):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if mark.id:
                        row = await conn.fetchrow(
                            "INSERT INTO webhooks (project, id, event, received_ms, room_sid, reported_ms)"
                            " VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING RETURNING id",
                            project,
                            mark.id,
                            mark.event,
                            int(time.time() * 1000),
                            mark.room_sid,
                            mark.reported_ms,
                        )
                        if row is None:
                            return None
                    return await self._ingest_tx(conn, project, items) if items else []
            except (_Raced, asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                log.debug("webhook ingest retry", extra={"attempt": attempt + 1, "why": type(exc).__name__})
        raise RuntimeError(f"webhook ingest did not settle after {_ATTEMPTS} attempts (heavy contention)")

    async def close_month(self, project: str, month: str, build: Callable[[int], ClosedMonth]) -> ClosedMonth | None:
        async with self.pool.acquire() as conn, conn.transaction():
            # One issuer per project at a time, across every collector sharing the database.
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _ISSUE_LOCK, project)
            if await conn.fetchval("SELECT 1 FROM invoices WHERE project = $1 AND month = $2", project, month):
                return None
            seq = int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) + 1 FROM invoices WHERE project = $1", project))
            closed = build(seq)
            await conn.execute(
                "INSERT INTO invoices VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                project, month, closed.number, seq if closed.number else None, closed.plan, closed.issued_ms,
                closed.total, closed.document,
            )  # fmt: skip
            if closed.number:
                await conn.executemany(
                    "INSERT INTO statements VALUES ($1,$2,$3,$4)",
                    [(project, closed.number, who, doc) for who, doc in sorted(closed.statements.items())],
                )
            return closed

    async def open_agent_sessions(
        self, project: str, *, session_id: str | None = None, room_sid: str | None = None, room: str | None = None
    ) -> list[Stored]:
        sql = (
            f"SELECT {READ_COLUMNS} FROM records WHERE project = $1 AND resource = 'agent_session'"
            " AND (status = 'checkpoint' OR by_webhook = 1)"
        )
        args: list[Any] = [project]
        for col, value in (("session_id", session_id), ("room_sid", room_sid), ("room", room)):
            if value is not None:
                args.append(value)
                sql += f" AND {col} = ${len(args)}"
        rows = await self.pool.fetch(sql, *args)
        return [stored_from_row(tuple(row)) for row in rows]

    async def stale_checkpoints(
        self, before: datetime, *, by_webhook: bool, limit: int = 1000
    ) -> list[tuple[str, Stored]]:
        rows = await self.pool.fetch(
            f"SELECT project, {READ_COLUMNS} FROM records"
            " WHERE status = 'checkpoint' AND end_ms < $1 AND by_webhook = $2 LIMIT $3",
            epoch_ms(before),
            int(by_webhook),
            limit,
        )
        return [(row[0], stored_from_row(tuple(row)[1:])) for row in rows]

    async def open_usages(self, project: str, room_sid: str, resources: Sequence[Resource]) -> list[Stored]:
        rows = await self.pool.fetch(
            f"SELECT {READ_COLUMNS} FROM records WHERE project = $1 AND room_sid = $2 AND status = 'checkpoint'"
            " AND resource = ANY($3::text[])",
            project,
            room_sid,
            [r.value for r in resources],
        )
        return [stored_from_row(tuple(row)) for row in rows]

    async def closed_months(self, project: str, *, limit: int = 1000) -> list[ClosedMonth]:
        rows = await self.pool.fetch(
            f"SELECT {MONTH_COLUMNS} FROM invoices WHERE project = $1 ORDER BY month DESC LIMIT $2", project, limit
        )
        return [closed_month(tuple(row)) for row in rows]

    async def issued_invoice(self, project: str, number: str) -> ClosedMonth | None:
        row = await self.pool.fetchrow(
            f"SELECT {MONTH_COLUMNS} FROM invoices WHERE project = $1 AND number = $2", project, number
        )
        if row is None:
            return None
        docs = await self.pool.fetch(
            "SELECT customer, document FROM statements WHERE project = $1 AND number = $2", project, number
        )
        return closed_month(tuple(row), {d[0]: d[1] for d in docs})

    async def sessions(self, project: str, flt: SessionFilter) -> list[SessionRow]:
        sql, args = session_query(project, flt, "$")
        return [session_row(tuple(row)) for row in await self.pool.fetch(sql, *args)]

    async def session_records(self, project: str, session_ids: Sequence[str]) -> list[MeterRecord]:
        if not session_ids:
            return []
        rows = await self.pool.fetch(
            f"SELECT {READ_COLUMNS} FROM records WHERE project = $1 AND session_id = ANY($2::text[])"
            " ORDER BY session_id, start_ms, id",
            project,
            list(session_ids),
        )
        return [stored_from_row(tuple(row)).record for row in rows]

    async def usage(
        self, project: str, since: date, until: date, group_by: str, *, key: str | None = None
    ) -> list[UsageRow]:
        sql, args = usage_query(project, since, until, group_by, "$", key=key)
        return [usage_row(tuple(row)) for row in await self.pool.fetch(sql, *args)]

    async def room_finished_ms(self, project: str, room_sid: str) -> int | None:
        found = await self.pool.fetchval(
            "SELECT MIN(reported_ms) FROM webhooks WHERE project = $1 AND room_sid = $2 AND event = 'room_finished'",
            project,
            room_sid,
        )
        return None if found is None else int(found)

    async def first_usage_day(self, project: str) -> date | None:
        day = await self.pool.fetchval("SELECT MIN(day) FROM rollup WHERE project = $1 AND dim = ''", project)
        return date.fromisoformat(day) if day else None

    async def count(self, project: str) -> int:
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM records WHERE project = $1", project))
