"""The sender: a thread with its own event loop that drains the outbox file into the collector.

A thread rather than a task on the agent's loop: it works the same in a livekit job process and in a
plain script, its SQLite reads, deletes and WAL checkpoints never run on the agent's loop, and it
outlives whichever loop happened to create it.

Only one process per outbox file sends at a time (an advisory ``flock`` on ``<outbox>.sender.lock``,
released by the kernel when the process dies, even by SIGKILL). The others only write; the leader
sends their records too, and a new leader takes over within one poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import IO

from .backoff import Backoff
from .client import BatchRefused, CollectorClient, RetryableError
from .gil import EVERY, hand_over
from .store import OutboxStore, Settlement

__all__ = ["Sender"]

logger = logging.getLogger("livekit_metering")

_CONFIRMED = frozenset({"accepted", "duplicate"})
_CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints while records flow
_SHUTDOWN_ATTEMPTS = 4  # failed attempts in a row after which a shutdown stops waiting (records stay on disk)


class _LeaderLock:
    """A non-blocking exclusive flock; without fcntl (Windows) every process sends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def acquire(self) -> bool:
        if self._handle is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        handle = open(self.path, "ab")  # held open for as long as we lead
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None


class Sender:
    """Batches pending records by count and bytes, posts them, and settles each by the collector's answer.

    - accepted / duplicate: deleted from the outbox (only the exact version that was sent);
    - rejected / conflict: moved to the dead-letter table with the reason, never retried blindly;
    - connection errors, timeouts, 429, 5xx: kept, retried after a full-jitter backoff or Retry-After;
    - 400 / 413 for a whole batch: the batch is split until the bad record stands alone, then dead-lettered;
    - 401 / 403 and other 4xx (a wrong key or URL): kept and retried with backoff, logged as an error,
      so fixing the configuration delivers them.
    """

    def __init__(
        self,
        store: OutboxStore,
        client: CollectorClient,
        *,
        max_batch: int = 1000,
        max_batch_bytes: int = 1024 * 1024,
        interval: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.sent = 0
        self.dead_lettered = 0
        self.last_error: str | None = None
        self._lock = _LeaderLock(str(store.path) + ".sender.lock")
        self._batch_limit = max_batch
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._ready = threading.Event()
        self._urgent = False  # a flush or stop wants an attempt now, even during a backoff
        self._stopping = False
        self._deadline: float | None = None  # monotonic; set by flush/stop
        # Flush waiters: (done, result, generation). Only a claim that started after a flush request
        # may report that request's records sent: records exported just before it must be included.
        self._waiters: list[tuple[threading.Event, list[bool], int]] = []
        self._generation = 0
        self._waiters_lock = threading.Lock()
        self._last_checkpoint = 0.0
        self._flush_failures = 0
        self._max_flush_failures: int | None = None
        self._failing_since: float | None = None
        self._last_warning = 0.0

    # -- control, from any thread ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._urgent = False
        self._deadline = None
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name="livekit-metering-sender", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def wake(self) -> None:
        """New records are waiting: send now instead of at the next poll (never cuts a backoff short)."""
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(kick.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def flush(self, timeout: float, *, max_failures: int | None = None) -> bool:
        """Send everything pending now; wait at most ``timeout`` s. True when the outbox was emptied.

        False also when another process leads the sending: the records are safe on disk and it sends them.
        """
        if not self.running:
            return False
        done = threading.Event()
        result = [False]
        with self._waiters_lock:
            self._generation += 1
            waiter = (done, result, self._generation)
            self._waiters.append(waiter)
        self._deadline = time.monotonic() + timeout
        self._flush_failures = 0
        self._max_flush_failures = max_failures
        self._urgent = True
        self.wake()
        done.wait(timeout + 0.5)
        with self._waiters_lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return result[0]

    def stop(self, timeout: float) -> bool:
        """Flush for at most ``timeout`` seconds, then stop the thread; what is left stays on disk."""
        if not self.running:
            return False
        # At shutdown, a collector that keeps failing is not worth the rest of the budget.
        flushed = self.flush(timeout, max_failures=_SHUTDOWN_ATTEMPTS)
        self._stopping = True
        self._urgent = True
        self.wake()
        if self._thread is not None:
            self._thread.join(1.0)
        return flushed

    # -- the thread --------------------------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run(loop))
        except Exception:
            logger.exception("livekit-metering sender stopped on an unexpected error; records stay on disk")
        finally:
            self._finish_waiters(False)
            self._lock.release()
            self._loop = None
            self._kick = None
            loop.close()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._kick = asyncio.Event()
        self._loop = loop
        self._ready.set()
        try:
            while not self._stopping:
                try:
                    await self._step()
                except Exception as exc:
                    # A locked or failing outbox file, or a bug: keep the thread alive and retry later.
                    logger.exception("livekit-metering sender step failed; retrying after a backoff")
                    self._failed(f"{type(exc).__name__}: {exc}")
                    await self._back_off(self.backoff.next())
        finally:
            self.client.close()

    async def _step(self) -> None:
        if not self._lock.acquire():
            # Another process sends this file's records, ours included.
            self._finish_waiters(False)
            self._maybe_checkpoint()
            await self._sleep(self.interval, wakeable=True)
            return
        generation = self._generation
        limit = self._batch_limit
        batch = self.store.claim(limit, self.max_batch_bytes)
        if not batch:
            self._finish_waiters(True, upto=generation)
            self._maybe_checkpoint(force=True)
            await self._sleep(self.interval, wakeable=True)
            return
        timeout = self.client.timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                self._finish_waiters(False)
                self._deadline = None
                return
        try:
            # Blocks this thread's loop, which has nothing else to run; flush and stop see its end.
            results = self.client.send([p.id for p in batch], [p.body for p in batch], timeout=timeout)
        except RetryableError as exc:
            self._failed(str(exc))
            await self._back_off(self.backoff.next(exc.retry_after), server_asked=exc.retry_after is not None)
            return
        except BatchRefused as exc:
            if exc.status in (401, 403):
                self._failed(f"{exc}; check LIVEKIT_API_KEY / LIVEKIT_API_SECRET", level=logging.ERROR)
                await self._back_off(self.backoff.next())
                return
            if exc.status not in (400, 413):
                # 404, 405...: a wrong URL or a proxy in the way, not a bad record. Keep everything.
                self._failed(f"{exc}; check LIVEKIT_METERING_URL ({self.client.url})", level=logging.ERROR)
                await self._back_off(self.backoff.next())
                return
            self._failed(str(exc))
            if len(batch) > 1:
                self._batch_limit = max(1, len(batch) // 2)  # find the record that makes the batch fail
            else:
                reason = f"HTTP {exc.status}: {exc}"
                refused = Settlement(batch[0].id, batch[0].version, dead=True, status="refused", reason=reason)
                self.store.settle([refused])
                self.dead_lettered += 1
                logger.warning("livekit-metering: record %s moved to dead letters: %s", batch[0].id, reason)
            return
        settlements = []
        for n, (pending, result) in enumerate(zip(batch, results, strict=True)):
            if n % EVERY == EVERY - 1:
                hand_over()  # blocks only this thread's loop, which has nothing else to do meanwhile
            if result.status in _CONFIRMED:
                settlements.append(Settlement(pending.id, pending.version))
            else:
                settlements.append(Settlement(pending.id, pending.version, True, result.status, result.reason))
                logger.warning(
                    "livekit-metering: the collector answered %s for record %s: %s (moved to dead letters)",
                    result.status,
                    pending.id,
                    result.reason,
                )
        self.store.settle(settlements)
        dead = sum(1 for s in settlements if s.dead)
        self.sent += len(settlements) - dead
        self.dead_lettered += dead
        self._recovered()
        self._batch_limit = min(self.max_batch, self._batch_limit * 2)
        self._maybe_checkpoint()
        if len(batch) < limit and sum(p.size for p in batch) < self.max_batch_bytes // 2 and not self._waiters:
            # Caught up: wait for a fuller batch (export wakes us every max_batch // 2 records) or the
            # poll interval, rather than post the few records written meanwhile at once. Every request
            # is ~1 ms of Python on this thread, and it holds the GIL against the agent's event loop.
            await self._sleep(self.interval, wakeable=True)

    async def _back_off(self, delay: float, *, server_asked: bool = False) -> None:
        if self._deadline is not None:
            self._flush_failures += 1
        if self._deadline is not None and (
            time.monotonic() + delay >= self._deadline
            or (self._max_flush_failures is not None and self._flush_failures >= self._max_flush_failures)
        ):
            # The flush budget cannot cover the wait, or the collector keeps failing: leave the rest
            # on disk for later (or for the next process) rather than hold up a shutdown for nothing.
            self._flush_failures = 0
            self._finish_waiters(False)
            self._deadline = None
            self._urgent = False
            if self._stopping:
                return
        # A flush cuts our own backoff short, never a wait the collector asked for (Retry-After).
        await self._sleep(delay, wakeable=False, urgent=not server_asked)

    async def _sleep(self, seconds: float, *, wakeable: bool, urgent: bool = True) -> None:
        """Wait, checkpointing the WAL now and then; stopping always interrupts, a flush if ``urgent``,
        new records if ``wakeable``."""
        assert self._kick is not None
        end = time.monotonic() + seconds
        while not self._stopping:
            if self._urgent and urgent:
                self._urgent = False
                return
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._kick.wait(), min(remaining, _CHECKPOINT_EVERY))
            except asyncio.TimeoutError:
                self._maybe_checkpoint()
                continue
            # Cleared once seen, not before waiting: a wake-up that came during the last step (records
            # exported while a batch was in flight) must end this wait at once, not be wiped out.
            self._kick.clear()
            if wakeable:
                return

    def _maybe_checkpoint(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint >= _CHECKPOINT_EVERY:
            self._last_checkpoint = now
            try:
                self.store.checkpoint()
            except Exception as exc:  # a busy or locked database only delays the checkpoint
                logger.debug("livekit-metering: WAL checkpoint skipped: %s", exc)

    def _finish_waiters(self, ok: bool, *, upto: int | None = None) -> None:
        with self._waiters_lock:
            if upto is None:
                waiters, self._waiters = self._waiters, []
            else:
                waiters = [w for w in self._waiters if w[2] <= upto]
                self._waiters = [w for w in self._waiters if w[2] > upto]
            if not self._waiters:
                self._deadline = None
        for done, result, _ in waiters:
            result[0] = ok
            done.set()

    def _failed(self, message: str, *, level: int = logging.WARNING) -> None:
        self.last_error = message
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            logger.log(level, "livekit-metering: cannot ship records yet (kept on disk, will retry): %s", message)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            logger.info(
                "livekit-metering: shipping records again after %.1f s of failures",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self._last_warning = 0.0
        self.last_error = None
        self._flush_failures = 0
        self.backoff.reset()
