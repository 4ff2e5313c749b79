"""SQLite store: the zero set-up default. One connection, used from one dedicated thread.

Durability: WAL journal with ``synchronous=FULL``, so a commit is fsynced to the WAL before the
collector acknowledges it: it survives a process kill and a power loss. (``NORMAL`` in WAL mode
survives a process kill but may lose the last commits on power loss, which would break "ack only
after a durable commit".) ``BEGIN IMMEDIATE`` takes the write lock before reading what is stored,
so two processes sharing one file cannot both insert an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

from ...records import MeterRecord, Resource
from .base import (
    MAX_STORED,
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
from .batch import BatchPlan, Deltas, plan_batch
from .queries_sql import MONTH_COLUMNS, closed_month, session_query, session_row, usage_query, usage_row
from .rows import NAMES, READ_COLUMNS, record_row, stored_from_row

__all__ = ["SqliteStore"]

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: records, roll-ups, sessions, webhook ids
    """
    CREATE TABLE records (
        project TEXT NOT NULL, id TEXT NOT NULL, session_id TEXT NOT NULL,
        resource TEXT NOT NULL, unit TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
        agent_name TEXT NOT NULL, customer TEXT NOT NULL, room TEXT NOT NULL, room_sid TEXT NOT NULL,
        worker_id TEXT NOT NULL, language TEXT NOT NULL, policy TEXT NOT NULL, quantity TEXT NOT NULL,
        status TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, day TEXT NOT NULL,
        billable INTEGER NOT NULL, raw INTEGER NOT NULL, by_webhook INTEGER NOT NULL,
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
        language TEXT NOT NULL, billable INTEGER NOT NULL, raw INTEGER NOT NULL, records INTEGER NOT NULL,
        PRIMARY KEY (project, dim, day, key, resource, unit, model, provider, language)
    ) WITHOUT ROWID;
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
    # 2: open usages (checkpoints) by room and by age; closed months, their invoices and statements
    """
    ALTER TABLE webhooks ADD COLUMN room_sid TEXT NOT NULL DEFAULT '';
    ALTER TABLE webhooks ADD COLUMN reported_ms INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX webhooks_rooms ON webhooks (project, room_sid) WHERE event = 'room_finished';
    CREATE INDEX records_checkpoints ON records (project, room_sid) WHERE status = 'checkpoint';
    CREATE INDEX records_stale ON records (end_ms) WHERE status = 'checkpoint';
    CREATE TABLE invoices (
        project TEXT NOT NULL, month TEXT NOT NULL, number TEXT, seq INTEGER, plan TEXT NOT NULL,
        issued_ms INTEGER NOT NULL, total TEXT, document TEXT NOT NULL,
        PRIMARY KEY (project, month)
    );
    CREATE UNIQUE INDEX invoices_number ON invoices (project, number);
    CREATE TABLE statements (
        project TEXT NOT NULL, number TEXT NOT NULL, customer TEXT NOT NULL, document TEXT NOT NULL,
        PRIMARY KEY (project, number, customer)
    );
    """,
    # 3: a roll-up sum past 2**63 - 1 would silently become a float in SQLite: refuse it instead.
    """
    CREATE TRIGGER rollup_exact_insert BEFORE INSERT ON rollup
        WHEN typeof(NEW.billable) != 'integer' OR typeof(NEW.raw) != 'integer'
        BEGIN SELECT RAISE(ABORT, 'rollup out of range'); END;
    CREATE TRIGGER rollup_exact_update BEFORE UPDATE ON rollup
        WHEN typeof(NEW.billable) != 'integer' OR typeof(NEW.raw) != 'integer'
        BEGIN SELECT RAISE(ABORT, 'rollup out of range'); END;
    """,
]

_INSERT = f"INSERT INTO records ({', '.join(NAMES)})"
_UPDATE = (
    "UPDATE records SET "
    + ", ".join(f"{name} = ?{i + 1}" for i, name in enumerate(NAMES) if name not in ("project", "id"))
    + " WHERE project = ?1 AND id = ?2"
)
_ROLLUP = (
    "INSERT INTO rollup (project, dim, key, day, resource, unit, model, provider, language, billable, raw, records)"
)
_ROLLUP_CONFLICT = (
    "ON CONFLICT DO UPDATE SET"
    " billable = billable + excluded.billable, raw = raw + excluded.raw, records = records + excluded.records"
)
_SESSION_UPSERT = "INSERT INTO sessions"
_SESSION_CONFLICT = """
ON CONFLICT DO UPDATE SET
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


def _statements(script: str) -> list[str]:
    """A migration's statements: each ends with ";" at the end of a line (a trigger's inner ";" does not)."""
    return [part.strip() for part in script.split(";\n") if part.strip()]


_LIMIT = "a stored total would leave the exact 64-bit range"


@contextlib.contextmanager
def _savepoint(db: sqlite3.Connection, name: str) -> Iterator[None]:
    """Undo everything since entering on an exception; an int too large for SQLite or a roll-up out
    of range (the migration-3 triggers) becomes StoreLimit."""
    db.execute(f"SAVEPOINT {name}")
    try:
        yield
    except (OverflowError, sqlite3.IntegrityError) as exc:
        db.execute(f"ROLLBACK TO {name}")
        if isinstance(exc, OverflowError) or "rollup out of range" in str(exc):
            raise StoreLimit(f"{_LIMIT} ({MAX_STORED:,} base units); nothing of this batch was stored") from None
        raise
    except BaseException:
        db.execute(f"ROLLBACK TO {name}")
        raise
    finally:
        db.execute(f"RELEASE {name}")


def _insert(db: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
    """``head VALUES (..), (..), .. tail``: as many rows per statement as SQLite takes parameters.

    One statement for a batch rather than one per row (executemany) spends a third less time in
    SQLite per record, and its rows apply in order, as executemany's would.
    """
    if not rows:
        return
    width = len(rows[0])
    per = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        db.execute(_values_sql(head, width, len(chunk), tail), [value for row in chunk for value in row])


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, count: int, tail: str) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * count)} {tail}"


def _select(db: sqlite3.Connection, project: str, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """The stored rows (as READ_COLUMNS) of those ``ids`` that exist, by id."""
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in range(0, len(ids), 900):
        part = ids[chunk : chunk + 900]
        marks = ",".join("?" * len(part))
        sql = f"SELECT {READ_COLUMNS} FROM records WHERE project = ? AND id IN ({marks})"
        for row in db.execute(sql, (project, *part)):
            found[row[0]] = row
    return found


def _write_deltas(db: sqlite3.Connection, project: str, deltas: Deltas) -> None:
    _insert(db, _ROLLUP, deltas.rollup_rows(project), _ROLLUP_CONFLICT)
    _insert(db, _SESSION_UPSERT, deltas.session_rows(project), _SESSION_CONFLICT)


class _Prepared(NamedTuple):
    """A batch planned against the rows a connection saw (``seen``), with the rows to write."""

    plan: BatchPlan
    seen: dict[str, tuple[Any, ...]]
    inserts: list[tuple[Any, ...]]
    updates: list[tuple[Any, ...]]

    @staticmethod
    def of(db: sqlite3.Connection, project: str, items: Sequence[Stored]) -> _Prepared:
        seen = _select(db, project, list({item.record.id for item in items}))
        plan = plan_batch(items, {rid: stored_from_row(row) for rid, row in seen.items()})
        inserts = [record_row(project, item) for item in plan.inserts]
        return _Prepared(plan, seen, inserts, [record_row(project, item) for item in plan.updates])

    def write(self, db: sqlite3.Connection) -> None:
        _insert(db, _INSERT, self.inserts)
        if self.updates:
            db.executemany(_UPDATE, self.updates)


_Pending = tuple[Sequence[Stored], _Prepared | None, "asyncio.Future[list[Outcome]]"]


class SqliteStore(Store):
    """Writes run on the event loop except the two calls that may wait (taking the write lock and the
    fsync of COMMIT), which run in a thread. Keeping the Python work of a batch on one thread avoids
    the GIL hand-offs a worker thread would cost on every row; an asyncio lock keeps one write
    transaction at a time. Reads use their own connection in their own thread (WAL readers never
    block the writer, and never see a half-written batch)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._reads: ThreadPoolExecutor | None = None
        self._waits: ThreadPoolExecutor | None = None
        self._write_lock = asyncio.Lock()
        self._pending: list[tuple[str, Sequence[Stored], _Prepared | None, asyncio.Future[list[Outcome]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock_file: BinaryIO | None = None
        self._planner: sqlite3.Connection | None = None  # reads on the event loop, outside transactions

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._reads is None:
            raise RuntimeError("the store is not open; use `async with store:` or await store.open()")
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn, *args)

    async def _wait(self, fn: Callable[[], object]) -> None:
        """Run a call that may block (lock wait, fsync) in a thread; finish it even if cancelled."""
        if self._waits is None:
            raise RuntimeError("the store is not open")
        future = asyncio.get_running_loop().run_in_executor(self._waits, fn)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            await future  # the statement is running; never touch the connection under it
            raise

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """One write transaction, committed (fsynced) on exit, rolled back on an exception.

        Collector processes sharing the file (``serve --workers``) queue on a file lock rather than
        in SQLite's busy handler, which sleeps 1 to 100 ms between tries: the next writer starts as
        soon as the last one commits."""
        db = self._writer
        if db is None:
            raise RuntimeError("the store is closed")
        lock = self._lock_file

        def begin() -> None:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                db.execute("BEGIN IMMEDIATE")
            except BaseException:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                raise

        try:
            await self._wait(begin)
        except BaseException:  # cancelled: the wait still ran begin() to its end
            if db.in_transaction:
                db.execute("ROLLBACK")
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            raise
        try:
            yield db
            await self._wait(lambda: db.execute("COMMIT"))
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def db(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("the store is not open")
        return self._reader

    # -- lifecycle -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA cache_size=-32768")  # 32 MB of page cache keeps the id index hot while ingesting
        return db

    async def open(self) -> None:
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metering-sqlite-read")
        self._waits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metering-sqlite-commit")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = await self._run(open, self.path + "-writer.lock", "a+b")  # held until close
        self._writer = await self._run(self._connect)
        async with self._transaction() as db:
            self._migrate(db)
        # An in-memory database is private to its connection: read through the writer then.
        self._reader = self._writer if self.path == ":memory:" else await self._run(self._connect)
        # An in-memory database has one connection, which the commit thread may be using: plan under the lock.
        self._planner = None if self.path == ":memory:" else await self._run(self._connect)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        for version, script in enumerate(MIGRATIONS, start=1):
            if version > current:
                for statement in _statements(script):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)  # write what was handed over
        async with self._write_lock:
            for conn in {id(c): c for c in (self._reader, self._writer, self._planner) if c is not None}.values():
                await self._run(conn.close)
            self._reader = self._writer = self._planner = None
            for pool in (self._reads, self._waits):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._reads = self._waits = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # -- writes ----------------------------------------------------------------------------------

    async def ingest(self, project: str, items: Sequence[Stored]) -> list[Outcome]:
        """Group commit: batches that arrive while a commit is in progress are written together in
        the next transaction (each in its own savepoint) and share one fsync."""
        if not items:
            return []
        if self._writer is None:
            raise RuntimeError("the store is closed")
        # Plan before taking the write lock, against the last commit: the work under the lock (which
        # collector processes sharing the file take in turn) is then mostly SQLite's own.
        prepared = None if self._planner is None else _Prepared.of(self._planner, project, items)
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._pending.append((project, items, prepared, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)  # a cancelled request does not cancel the shared commit

    async def _flush(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            async with self._write_lock:
                db = self._writer
                if db is None:
                    for *_, future in group:
                        future.set_exception(RuntimeError("the store is closed"))
                    return
                by_project: dict[str, list[_Pending]] = {}
                for project, items, prepared, future in group:
                    by_project.setdefault(project, []).append((items, prepared, future))
                done: list[tuple[asyncio.Future[list[Outcome]], list[Outcome]]] = []
                try:
                    async with self._transaction():  # durable (fsynced) before anyone is told "accepted"
                        for project, batches in by_project.items():
                            done += self._write_project(db, project, batches)
                except BaseException as exc:
                    # Nothing of the group was committed: every batch still waiting fails with it.
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("interrupted"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
            for future, outcomes in done:
                if not future.done():
                    future.set_result(outcomes)

    def _write_project(
        self, db: sqlite3.Connection, project: str, batches: list[_Pending]
    ) -> list[tuple[asyncio.Future[list[Outcome]], list[Outcome]]]:
        """Write one project's batches of a group commit, each in its own savepoint, then their roll-up
        and session deltas at once. A batch that fails fails alone; when the shared roll-ups would leave
        the exact range, the project's batches are planned and written again one by one, so only a batch
        that takes a sum out of range is refused. Other projects never see either."""
        written: list[tuple[asyncio.Future[list[Outcome]], Sequence[Stored], list[Outcome]]] = []
        try:
            with _savepoint(db, "project"):
                merged = Deltas()
                for items, prepared, future in batches:
                    try:
                        with _savepoint(db, "batch"):
                            plan = self._write(db, project, items, prepared)
                    except Exception as exc:
                        future.set_exception(exc)
                        continue
                    written.append((future, items, plan.outcomes))
                    merged.merge(plan.deltas)
                _write_deltas(db, project, merged)
        except StoreLimit:
            done = []
            for future, items, _ in written:
                try:
                    with _savepoint(db, "batch"):
                        plan = self._write(db, project, items, None)
                        _write_deltas(db, project, plan.deltas)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    done.append((future, plan.outcomes))
            return done
        return [(future, outcomes) for future, _, outcomes in written]

    @staticmethod
    def _write(db: sqlite3.Connection, project: str, items: Sequence[Stored], prepared: _Prepared | None) -> BatchPlan:
        """Write one batch inside the open transaction. A plan prepared before it still holds when the
        rows it saw are unchanged and the ids it found new are still new (their insert fails
        otherwise); else the batch is planned again here."""
        if prepared is not None and (not prepared.seen or _select(db, project, list(prepared.seen)) == prepared.seen):
            db.execute("SAVEPOINT prepared")
            try:
                prepared.write(db)
            except sqlite3.IntegrityError:  # an id arrived meanwhile (another batch or process)
                db.execute("ROLLBACK TO prepared")
            else:
                return prepared.plan
            finally:
                db.execute("RELEASE prepared")
        again = _Prepared.of(db, project, items)
        again.write(db)
        return again.plan  # its roll-up and session deltas are written once for the whole group

    async def ingest_webhook(self, project: str, mark: WebhookMark, items: Sequence[Stored]) -> list[Outcome] | None:
        async with self._write_lock, self._transaction() as db:
            if mark.id:
                cur = db.execute(
                    "INSERT INTO webhooks (project, id, event, received_ms, room_sid, reported_ms)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (project, mark.id, mark.event, int(time.time() * 1000), mark.room_sid, mark.reported_ms),
                )
                if cur.rowcount != 1:
                    return None
            if not items:
                return []
            plan = self._write(db, project, items, None)
            _write_deltas(db, project, plan.deltas)
            return plan.outcomes

    async def close_month(self, project: str, month: str, build: Callable[[int], ClosedMonth]) -> ClosedMonth | None:
        async with self._write_lock, self._transaction() as db:
            if db.execute("SELECT 1 FROM invoices WHERE project = ? AND month = ?", (project, month)).fetchone():
                return None
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM invoices WHERE project = ?", (project,)).fetchone()
            closed = build(int(seq[0]))
            db.execute(
                "INSERT INTO invoices VALUES (?,?,?,?,?,?,?,?)",
                (project, month, closed.number, seq[0] if closed.number else None, closed.plan, closed.issued_ms,
                 closed.total, closed.document),
            )  # fmt: skip
            if closed.number:
                db.executemany(
                    "INSERT INTO statements VALUES (?,?,?,?)",
                    [(project, closed.number, who, doc) for who, doc in sorted(closed.statements.items())],
                )
            return closed

    # -- reads -----------------------------------------------------------------------------------

    async def open_agent_sessions(
        self, project: str, *, session_id: str | None = None, room_sid: str | None = None, room: str | None = None
    ) -> list[Stored]:
        sql = (
            f"SELECT {READ_COLUMNS} FROM records WHERE project = ? AND resource = 'agent_session'"
            " AND (status = 'checkpoint' OR by_webhook = 1)"
        )
        args: list[Any] = [project]
        for col, value in (("session_id", session_id), ("room_sid", room_sid), ("room", room)):
            if value is not None:
                sql += f" AND {col} = ?"
                args.append(value)

        def read() -> list[Stored]:
            return [stored_from_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def stale_checkpoints(
        self, before: datetime, *, by_webhook: bool, limit: int = 1000
    ) -> list[tuple[str, Stored]]:
        sql = (
            f"SELECT project, {READ_COLUMNS} FROM records INDEXED BY records_stale"
            " WHERE status = 'checkpoint' AND end_ms < ? AND by_webhook = ? LIMIT ?"
        )

        def read() -> list[tuple[str, Stored]]:
            rows = self.db.execute(sql, (epoch_ms(before), int(by_webhook), limit))
            return [(row[0], stored_from_row(row[1:])) for row in rows]

        return await self._run(read)

    async def open_usages(self, project: str, room_sid: str, resources: Sequence[Resource]) -> list[Stored]:
        marks = ",".join("?" * len(resources))
        sql = (
            f"SELECT {READ_COLUMNS} FROM records INDEXED BY records_checkpoints"
            f" WHERE project = ? AND room_sid = ? AND status = 'checkpoint' AND resource IN ({marks})"
        )
        args = (project, room_sid, *(r.value for r in resources))

        def read() -> list[Stored]:
            return [stored_from_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def closed_months(self, project: str, *, limit: int = 1000) -> list[ClosedMonth]:
        def read() -> list[ClosedMonth]:
            rows = self.db.execute(
                f"SELECT {MONTH_COLUMNS} FROM invoices WHERE project = ? ORDER BY month DESC LIMIT ?", (project, limit)
            )
            return [closed_month(row) for row in rows]

        return await self._run(read)

    async def issued_invoice(self, project: str, number: str) -> ClosedMonth | None:
        def read() -> ClosedMonth | None:
            row = self.db.execute(
                f"SELECT {MONTH_COLUMNS} FROM invoices WHERE project = ? AND number = ?", (project, number)
            ).fetchone()
            if row is None:
                return None
            docs = self.db.execute(
                "SELECT customer, document FROM statements WHERE project = ? AND number = ?", (project, number)
            )
            return closed_month(row, dict(docs.fetchall()))

        return await self._run(read)

    async def sessions(self, project: str, flt: SessionFilter) -> list[SessionRow]:
        sql, args = session_query(project, flt, "?")

        def read() -> list[SessionRow]:
            return [session_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def session_records(self, project: str, session_ids: Sequence[str]) -> list[MeterRecord]:
        def read() -> list[MeterRecord]:
            out: list[Stored] = []
            for sid in session_ids:
                # INDEXED BY: without statistics the planner may pick the start-time index and scan.
                rows = self.db.execute(
                    f"SELECT {READ_COLUMNS} FROM records INDEXED BY records_session"
                    " WHERE project = ? AND session_id = ?",
                    (project, sid),
                )
                out.extend(sorted((stored_from_row(row) for row in rows), key=lambda s: (s.start_ms, s.record.id)))
            return [s.record for s in out]

        return await self._run(read)

    async def usage(
        self, project: str, since: date, until: date, group_by: str, *, key: str | None = None
    ) -> list[UsageRow]:
        sql, args = usage_query(project, since, until, group_by, "?", key=key)

        def read() -> list[UsageRow]:
            return [usage_row(row) for row in self.db.execute(sql, args)]

        return await self._run(read)

    async def room_finished_ms(self, project: str, room_sid: str) -> int | None:
        def read() -> int | None:
            row = self.db.execute(
                "SELECT MIN(reported_ms) FROM webhooks WHERE project = ? AND room_sid = ? AND event = 'room_finished'",
                (project, room_sid),
            ).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._run(read)

    async def first_usage_day(self, project: str) -> date | None:
        def read() -> date | None:
            row = self.db.execute("SELECT MIN(day) FROM rollup WHERE project = ? AND dim = ''", (project,)).fetchone()
            return date.fromisoformat(row[0]) if row[0] else None

        return await self._run(read)

    async def count(self, project: str) -> int:
        def read() -> int:
            return int(self.db.execute("SELECT COUNT(*) FROM records WHERE project = ?", (project,)).fetchone()[0])

        return await self._run(read)
