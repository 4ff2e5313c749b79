"""The outbox file: a SQLite database in WAL mode holding the records not yet confirmed by the collector.

Durability trade-off: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A commit appends to the WAL
file with a write() but no fsync, so a commit costs ~15 µs instead of a disk flush. A record committed
this way survives the death of the process (SIGKILL, OOM kill, crash): the bytes are in the kernel's
page cache and SQLite replays the WAL on the next open. It does not survive a power cut or kernel
crash of the host in the last moments before the next checkpoint; those are rare next to killed
job processes, and waiting for an fsync on every record would block the agent's event loop.

The writer connection never checkpoints (``wal_autocheckpoint=0``): a checkpoint copies pages and
fsyncs, which is what stalls. The sender's thread checkpoints instead (PASSIVE, never blocking writers),
and only its connection shrinks a grown WAL file. Under sustained writes a PASSIVE checkpoint never
fully catches up, so the WAL restarts from its start only when the writers pause and grows meanwhile
(~100 MB for 20,000 records written flat out); disk blocks are reserved ahead of it (fallocate,
64 MB past its end) because on ext4 a write that allocates blocks waits for a concurrent fsync of the
same file. Durability is unchanged: every checkpoint still fsyncs the WAL and the database, and a
restart of the WAL still fsyncs its header, in a commit the sender makes right after a complete
checkpoint so that an export rarely pays it. In-process, writes wait on a Python lock rather than
SQLite's busy handler, and the sender deletes in small transactions, so the writer's waits stay short.
Between its transactions (and every 64 rows it reads) the sender sleeps briefly: each statement lets
go of the GIL and takes it straight back, which otherwise starves the agent's thread for milliseconds.

Several processes of one host may share the file (livekit-agents runs each job in its own process);
SQLite's locking serializes their writes, and a per-record ``version`` makes every delete exact.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar, cast

from ..records import MeterRecord
from .gil import hand_over
from .health import OutboxHealth

__all__ = ["OutboxStore", "PendingRecord", "Settlement"]

logger = logging.getLogger("livekit_metering")

_T = TypeVar("_T")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id      TEXT PRIMARY KEY,
    body    TEXT NOT NULL,
    final   INTEGER NOT NULL,
    end_ms  INTEGER NOT NULL,
    raw     INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id      TEXT NOT NULL,
    body    TEXT NOT NULL,
    status  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    records INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    dead    INTEGER NOT NULL
);
INSERT OR IGNORE INTO stats VALUES (1, 0, 0, 0, 0);
-- Counters kept by triggers, so the cap check is one row read, whatever the number of writers.
CREATE TRIGGER IF NOT EXISTS pending_insert AFTER INSERT ON pending BEGIN
    UPDATE stats SET records = records + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS pending_delete AFTER DELETE ON pending BEGIN
    UPDATE stats SET records = records - 1, bytes = bytes - OLD.size;
END;
CREATE TRIGGER IF NOT EXISTS pending_update AFTER UPDATE OF size ON pending BEGIN
    UPDATE stats SET bytes = bytes + NEW.size - OLD.size;
END;
"""

# A newer form of a pending id replaces the older one only when MeterRecord.supersedes() would say
# so: the stored form is a checkpoint, and the new one is final or a later running figure. A final
# form is never replaced, so it cannot be lost to a late checkpoint. ``version`` changes on every
# replacement, so a collector answer about the older form never deletes the newer one.
# The cap is checked in the statement itself (one statement, one GIL release on the agent's thread);
# at the cap nothing is written and ``put`` takes the slow path below.
_UPSERT_UNDER_CAP = """
INSERT INTO pending (id, body, final, end_ms, raw, size, created)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 FROM stats WHERE records < ?8 AND bytes + ?6 <= ?9
ON CONFLICT (id) DO UPDATE SET
    body = excluded.body, final = excluded.final, end_ms = excluded.end_ms, raw = excluded.raw,
    size = excluded.size, version = pending.version + 1
WHERE pending.final = 0
  AND (excluded.final = 1 OR (excluded.end_ms, excluded.raw) > (pending.end_ms, pending.raw))
"""
_SUPERSEDE_ONLY = """
UPDATE pending SET body = ?2, final = ?3, end_ms = ?4, raw = ?5, size = ?6, version = version + 1
WHERE id = ?1 AND final = 0 AND (?3 = 1 OR (?4, ?5) > (end_ms, raw))
"""

_PAGE_SIZE = 1024
# A WAL grown past this is cut back to it when the sender's connection restarts it in a settle.
_WAL_LIMIT = 64 * 1024 * 1024
# Disk blocks reserved past the end of the WAL: more than a second of flat-out writes (~50 MB/s at
# 1 KB pages), the sender's checkpoint interval, at which it tops the reserve up.
_WAL_RESERVE = 64 * 1024 * 1024
# Sender write transactions are cut into chunks so the event loop never waits long for the lock.
_SETTLE_CHUNK = 25
# The dead-letter table keeps the most recent refusals for inspection; the total is a counter.
DEAD_LETTER_KEEP = 10_000


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_FALLOCATE = _fallocate()
_FALLOC_FL_KEEP_SIZE = 1


def _reserve_ahead(path: Path, size: int) -> None:
    """Reserve disk blocks for ``size`` bytes past the end of ``path``, without changing its size or bytes.

    A write into reserved blocks needs no block allocation, so the event loop's commit does not wait
    for a concurrent fsync of the WAL that allocates blocks (ext4's i_data_sem: 2-20 ms stalls).
    fallocate never touches existing data, so it is safe while other processes write the file.
    Best effort: nothing happens where it is unsupported.
    """
    if _FALLOCATE is None:
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return  # no WAL yet
    try:
        stat = os.fstat(fd)
        if stat.st_blocks * 512 < stat.st_size + size // 2:  # top up once half the reserve is used
            _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, 0, stat.st_size + size)
    finally:
        os.close(fd)


class PendingRecord(NamedTuple):
    id: str
    version: int
    body: str
    size: int


class Settlement(NamedTuple):
    """What to do with one sent record: ``delete`` when confirmed, else ``dead`` with the reason."""

    id: str
    version: int
    dead: bool = False
    status: str = ""
    reason: str = ""


def _retrying(statement: Callable[[], _T], *, wait: float = 30.0) -> _T:
    """Run ``statement`` (one that starts a transaction), retrying while another process holds the
    write lock (20 µs steps up to 1 ms). A statement refused as busy has changed nothing."""
    delay = 20e-6
    deadline = time.monotonic() + wait
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(
                    f"the outbox file stayed locked for {wait:.0f} s by another process; records were not written"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.001)


def _begin(conn: sqlite3.Connection) -> None:
    _retrying(lambda: conn.execute("BEGIN IMMEDIATE"))


class OutboxStore:
    """The records on disk. ``put`` is called on the agent's event loop; the rest from the sender."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int = 500_000,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be positive: they bound the outbox on disk")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self.max_bytes = max_bytes
        # One lock for every write transaction of this process: a writer waiting on it wakes as soon
        # as the sender commits, instead of sleeping in SQLite's busy handler (1 ms or more).
        self._write_lock = threading.Lock()
        # Set while put() waits for that lock. threading.Lock is not fair: a sender that releases it
        # and takes it again for its next chunk usually wins before the woken writer runs (the event
        # loop waited out six chunks, 4.6 ms, in the benchmark). The sender waits while this is set.
        self._writer_waiting = False
        self._read_lock = threading.Lock()
        self._writer = self._connect()
        # The writer runs on the agent's event loop: SQLite's busy handler sleeps 1 ms and more per
        # retry, so it gets none and waits for another process's transaction in finer steps (_begin).
        self._writer.execute("PRAGMA busy_timeout=0")
        # Shrinking a grown WAL (ftruncate of a large file) costs tens of ms of kernel time and
        # happens in the commit of whichever connection restarts the log: never the writer's.
        self._writer.execute("PRAGMA journal_size_limit=-1")
        self._reader = self._connect()
        _reserve_ahead(Path(str(self.path) + "-wal"), _WAL_RESERVE)
        self._warned_full = False
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new file (before WAL mode writes its header): a one-record commit then
        # appends ~5 KB of WAL instead of ~15 KB (three or four changed pages), a third of the disk writes.
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"outbox {self.path} was written by a newer livekit-metering (schema {version}); "
                "upgrade this process or point it at another outbox path"
            )
        if version < _SCHEMA_VERSION:
            # Every statement is idempotent, so two processes creating the file at once is harmless.
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        return conn

    # -- the agent's side ------------------------------------------------------------------------

    def put(self, batch: Sequence[MeterRecord]) -> int:
        """Commit the batch to disk; return how many records were dropped because the outbox is full."""
        now = time.time()
        rows: list[tuple[str, str, int, int, int, int, float]] = []
        for record in batch:
            body = record.model_dump_json()
            end_ms = int(record.end.timestamp() * 1000)
            rows.append((record.id, body, int(record.is_final), end_ms, record.raw, len(body), now))
        caps = (self.max_records, self.max_bytes)
        if not self._write_lock.acquire(blocking=False):
            self._writer_waiting = True
            try:
                self._write_lock.acquire()
            finally:
                self._writer_waiting = False
        try:
            conn = self._writer
            if len(rows) == 1:
                # The common case: the statement is its own transaction (no BEGIN / COMMIT round trips).
                # Nothing written (at the cap, or a stale form) means the exact path below decides.
                row = rows[0] + caps
                if _retrying(lambda: conn.execute(_UPSERT_UNDER_CAP, row).rowcount):
                    self._warned_full = False
                    return 0
            dropped = self._put_rows(conn, rows, caps)
        finally:
            self._write_lock.release()
        if dropped and not self._warned_full:
            self._warned_full = True
            logger.warning(
                "livekit-metering outbox %s is full (%d records / %d bytes at most): dropped %d record(s); "
                "the collector is unreachable or too slow. Further drops are counted in health().dropped.",
                self.path,
                self.max_records,
                self.max_bytes,
                dropped,
            )
        elif not dropped:
            self._warned_full = False
        return dropped

    def _put_rows(
        self, conn: sqlite3.Connection, rows: list[tuple[str, str, int, int, int, int, float]], caps: tuple[int, int]
    ) -> int:
        """One transaction for the batch; returns how many records the caps refused."""
        dropped = 0
        _begin(conn)
        try:
            for row in rows:
                if conn.execute(_UPSERT_UNDER_CAP, row + caps).rowcount:
                    continue
                if conn.execute(_SUPERSEDE_ONLY, row[:6]).rowcount:
                    continue  # at the cap a newer form of a pending id still replaces the old one
                # Refused: a stale form of a pending id is no loss; a new record is counted, never silent.
                if conn.execute("SELECT 1 FROM pending WHERE id = ?", (row[0],)).fetchone() is None:
                    dropped += 1
            if dropped:
                conn.execute("UPDATE stats SET dropped = dropped + ?", (dropped,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return dropped

    # -- the sender's side ------------------------------------------------------------------------

    def claim(self, max_count: int, max_bytes: int) -> list[PendingRecord]:
        """The oldest pending records, up to ``max_count`` and about ``max_bytes`` (at least one)."""
        out: list[PendingRecord] = []
        total = 0
        with self._read_lock:
            cursor = self._reader.execute(
                "SELECT id, version, body, size FROM pending ORDER BY rowid LIMIT ?", (max_count,)
            )
            for row in cursor:
                if out and total + row[3] > max_bytes:
                    break
                if len(out) % 64 == 63:
                    # Each row releases the GIL and takes it back before the agent's thread can (a GIL
                    # convoy: its event loop waited out whole claims, 2-4 ms): a real sleep lets it run.
                    hand_over()
                out.append(PendingRecord(*row))
                total += row[3]
            cursor.close()
        return out

    def settle(self, settlements: Iterable[Settlement]) -> None:
        """Delete confirmed records and move refused ones to ``dead_letter``, if still at that version."""
        items = list(settlements)
        now = time.time()
        for start in range(0, len(items), _SETTLE_CHUNK):
            chunk = items[start : start + _SETTLE_CHUNK]
            self._let_writer_in()
            with self._write_lock, self._read_lock:
                conn = self._reader
                conn.execute("BEGIN IMMEDIATE")
                try:
                    dead = [(s.status, s.reason, now, s.id, s.version) for s in chunk if s.dead]
                    if dead:
                        moved = conn.executemany(
                            "INSERT INTO dead_letter (id, body, status, reason, at) "
                            "SELECT id, body, ?, ?, ? FROM pending WHERE id = ? AND version = ?",
                            dead,
                        ).rowcount
                        conn.execute("UPDATE stats SET dead = dead + ?", (moved,))
                        conn.execute(
                            "DELETE FROM dead_letter WHERE rowid <= (SELECT max(rowid) FROM dead_letter) - ?",
                            (DEAD_LETTER_KEEP,),
                        )
                    # One statement, not executemany: SQLite runs it without taking the GIL back per
                    # row, so the agent's thread waits for this lock as briefly as possible.
                    pairs = ",".join(["(?,?)"] * len(chunk))
                    conn.execute(
                        "DELETE FROM pending WHERE rowid IN (SELECT p.rowid FROM (VALUES "
                        + pairs
                        + ") v JOIN pending p ON p.id = v.column1 AND p.version = v.column2)",
                        [value for s in chunk for value in (s.id, s.version)],
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    def _let_writer_in(self) -> None:
        """Before a sender transaction: give the agent's thread the GIL, and the lock if it waits for it.

        Each statement releases the GIL and takes it back at once, before the agent's thread (woken,
        but not yet running) can: back-to-back chunks starve it, for milliseconds (GIL convoy). A real
        sleep leaves the GIL free long enough for it to run. Then wait (1 ms at most) while it waits
        for the write lock.
        """
        hand_over()
        deadline = time.monotonic() + 0.001
        while self._writer_waiting and time.monotonic() < deadline:
            hand_over()

    def checkpoint(self) -> None:
        """Copy the WAL into the database without blocking writers (called off the event loop).

        A PASSIVE checkpoint under steady writes never quite catches up (frames appended during its
        fsyncs are left over), so the WAL restarts from its start only once the writers pause, and
        until then it grows. Its next blocks are reserved first, so that growth allocates nothing.
        Finishing the leftover with the writers paused was tried and is worse: its two fsyncs, and
        the fsync of the WAL header by the commit that restarts it, hold up the event loop for 1-2 ms.
        When a checkpoint does complete, this thread makes that restarting commit itself.
        """
        _reserve_ahead(Path(str(self.path) + "-wal"), _WAL_RESERVE)
        with self._read_lock:
            busy, log, done = self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or log <= 0 or done < log:
            return
        # All of the WAL is in the database: the next commit restarts it from its start, and fsyncs
        # its header first (1-1.5 ms here). Take that commit now, on this thread, unless the agent's
        # thread waits: otherwise its next export pays it.
        self._let_writer_in()
        with self._write_lock, self._read_lock:
            conn = self._reader
            # Not also shrinking a grown WAL in this commit: that ftruncate takes tens of ms, and an
            # export arriving meanwhile would wait for it (9 ms stalls in the benchmark).
            conn.execute("PRAGMA journal_size_limit=-1")
            conn.execute("PRAGMA busy_timeout=0")  # another process writing: it restarts the WAL instead
            try:
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")  # writes page 1: one WAL frame
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            finally:
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")

    # -- anyone ------------------------------------------------------------------------------------

    def health(self, *, sent: int = 0, last_error: str | None = None) -> OutboxHealth:
        with self._read_lock:
            conn = self._reader
            conn.execute("BEGIN")  # one snapshot for all three reads
            try:
                records, size, dropped, dead = conn.execute(
                    "SELECT records, bytes, dropped, dead FROM stats"
                ).fetchone()
                oldest = conn.execute("SELECT created FROM pending ORDER BY rowid LIMIT 1").fetchone()
            finally:
                conn.execute("COMMIT")
        return OutboxHealth(
            path=str(self.path),
            pending=records,
            pending_bytes=size,
            oldest_pending_age_s=None if oldest is None else max(0.0, time.time() - oldest[0]),
            dropped=dropped,
            dead_letters=dead,
            sent=sent,
            last_error=last_error,
        )

    def dead_letters(self) -> list[tuple[str, str, str, str]]:
        """The refused records kept (the latest ``DEAD_LETTER_KEEP``) as (id, status, reason, body), oldest first."""
        with self._read_lock:
            rows = self._reader.execute("SELECT id, status, reason, body FROM dead_letter ORDER BY rowid").fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def retry_dead_letters(self) -> tuple[int, int]:
        """Put the kept dead letters back in the outbox, to be sent again once their cause is fixed (a
        collector that lacked a rate policy, say). Returns (records requeued, dropped by the caps);
        they no longer count in ``health().dead_letters``."""
        with self._read_lock:
            rows = self._reader.execute("SELECT rowid, body FROM dead_letter ORDER BY rowid").fetchall()
        if not rows:
            return 0, 0
        dropped = self.put([MeterRecord.model_validate_json(body) for _, body in rows])
        self._forget_dead_letters(rows[-1][0], len(rows))
        return len(rows), dropped

    def clear_dead_letters(self) -> int:
        """Delete the kept dead letters (their records are given up) and reset the dead-letter count."""
        with self._read_lock:
            last, count = self._reader.execute("SELECT max(rowid), count(*) FROM dead_letter").fetchone()
        self._forget_dead_letters(last or 0, None)
        return int(count)

    def _forget_dead_letters(self, last_rowid: int, count: int | None) -> None:
        with self._write_lock:
            conn = self._writer
            _begin(conn)
            try:
                conn.execute("DELETE FROM dead_letter WHERE rowid <= ?", (last_rowid,))
                if count is None:
                    conn.execute("UPDATE stats SET dead = 0")
                else:
                    conn.execute("UPDATE stats SET dead = max(0, dead - ?)", (count,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock, self._read_lock:
            try:
                self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass
            self._writer.close()
            self._reader.close()
