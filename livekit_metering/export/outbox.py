"""The outbox: the exporter that makes records durable on disk, then ships them to the collector.

``export`` commits the records to a SQLite file before it returns (tens of microseconds, no network)
and the records leave memory. A background sender drains the file to the collector and deletes only
what the collector confirmed. What is not sent when the process ends stays in the file; the next
process of the host that opens it sends it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

from ..records import MeterRecord
from .backoff import Backoff
from .client import CollectorClient
from .health import OutboxHealth
from .sender import Sender
from .store import OutboxStore

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "Outbox", "default_outbox_path"]

logger = logging.getLogger("livekit_metering")

# livekit-agents gives shutdown callbacks about 10 s before SIGKILL (FINDINGS.md §5), shared with
# the framework's own callbacks and room cleanup: take half of it at most.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0


def default_outbox_path() -> Path:
    """``$XDG_CACHE_HOME/livekit-metering/outbox-<host>.sqlite3``: one file per worker host.

    The host name is in the file name so that a cache directory on a shared home never puts two
    hosts on one SQLite file (SQLite locking is not safe over network filesystems).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()) or "localhost"
    return Path(base) / "livekit-metering" / f"outbox-{host}.sqlite3"


class Outbox:
    """A durable exporter: records go to a SQLite file first, then to the collector at ``url``.

    Without ``url`` it only keeps records on disk (another process, or a later one, may send them).
    ``api_key`` / ``api_secret`` default to LIVEKIT_API_KEY / LIVEKIT_API_SECRET and sign each request.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        max_records: int = 500_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_batch: int = 1000,
        max_batch_bytes: int = 1024 * 1024,
        gzip_min_bytes: int = 32 * 1024,
        interval: float = 1.0,
        request_timeout: float = 10.0,
        backoff: Backoff | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.path = Path(path) if path is not None else default_outbox_path()
        self.url = url
        self.shutdown_timeout = shutdown_timeout
        self._store_options = {"max_records": max_records, "max_bytes": max_bytes}
        client: CollectorClient | None = None
        if url:  # first, so a bad URL is refused before any file is created
            key = api_key if api_key is not None else os.environ.get("LIVEKIT_API_KEY")
            secret = api_secret if api_secret is not None else os.environ.get("LIVEKIT_API_SECRET")
            client = CollectorClient(
                url, api_key=key, api_secret=secret, gzip_min_bytes=gzip_min_bytes, timeout=request_timeout
            )
        self._store = OutboxStore(self.path, max_records=max_records, max_bytes=max_bytes)
        self._sender: Sender | None = None
        if client is not None:
            if not client.signs:
                logger.warning(
                    "livekit-metering: no LIVEKIT_API_KEY / LIVEKIT_API_SECRET; records are sent to %s unsigned",
                    client.url,
                )
            self._sender = Sender(
                self._store,
                client,
                max_batch=max_batch,
                max_batch_bytes=max_batch_bytes,
                interval=interval,
                backoff=backoff,
            )
        self._pid = os.getpid()
        self._since_wake = 0
        self._wake_every = max(1, max_batch // 2)
        self._lock = threading.Lock()
        self._closed = False
        _live.add(self)
        if self._sender is not None:
            self._sender.start()  # records left by an earlier process go out without waiting for new ones

    # -- Exporter ----------------------------------------------------------------------------------

    def export(self, batch: Sequence[MeterRecord]) -> None:
        """Commit ``batch`` to the outbox file. Returns once it is on disk; never touches the network."""
        if self._closed:
            raise RuntimeError(f"outbox {self.path} is closed; create a new Outbox to record more")
        if os.getpid() != self._pid:
            self._after_fork()
        self._store.put(batch)
        sender = self._sender
        if sender is None:
            return
        if not sender.running:
            sender.start()
        self._since_wake += len(batch)
        if self._since_wake >= self._wake_every:
            # A full batch is waiting: send now rather than at the next poll. Rare, so its cost
            # (a write to the sender loop's self-pipe) stays off the per-record path.
            self._since_wake = 0
            sender.wake()

    def shutdown(self, timeout: float | None = None) -> None:
        """Send what is pending within ``timeout`` s (default ``shutdown_timeout``), then stop the sender.

        What could not be sent stays on disk. Logs the outbox health. ``export`` still works
        afterwards (the sender restarts), so a shared outbox survives one session's shutdown.
        """
        with self._lock:
            if self._closed:
                return
            budget = self.shutdown_timeout if timeout is None else timeout
            sender = self._sender
            flushed = sender.stop(budget) if sender is not None else False
            health = self.health()
            if sender is not None and health.pending and sender.last_error:
                logger.warning(
                    "livekit-metering outbox at shutdown: %s; the unsent records stay in %s for the next process",
                    health,
                    self.path,
                )
            elif sender is not None and health.pending:
                # Another process of this host leads the sending (or it was only a short budget): normal.
                logger.info("livekit-metering outbox at shutdown: %s; they stay in %s to be sent", health, self.path)
            else:
                logger.info("livekit-metering outbox at shutdown: %s (flushed=%s)", health, flushed)

    async def ashutdown(self, *, timeout: float | None = None) -> None:
        """``shutdown`` without blocking the event loop: for a livekit-agents shutdown callback
        (``ctx.add_shutdown_callback(outbox.ashutdown)``), which shares the loop with the others.
        ``timeout`` is keyword-only so livekit-agents does not pass the shutdown reason as it."""
        await asyncio.to_thread(self.shutdown, timeout)

    # -- more --------------------------------------------------------------------------------------

    def flush(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Send everything pending now; True when the outbox is empty within ``timeout`` s. Blocks: call it
        from a thread (``asyncio.to_thread``) when on an event loop."""
        if self._sender is None:
            return False
        if not self._sender.running:
            self._sender.start()
        return self._sender.flush(timeout)

    def health(self) -> OutboxHealth:
        """Pending count and bytes, age of the oldest pending record, dropped and dead-letter counts."""
        sender = self._sender
        return self._store.health(
            sent=sender.sent if sender else 0,
            last_error=sender.last_error if sender else None,
        )

    def dead_letters(self) -> list[tuple[str, str, str, str]]:
        """Records the collector refused, as (id, status, reason, record JSON)."""
        return self._store.dead_letters()

    def close(self) -> None:
        """Shut down and close the file."""
        self.shutdown()
        with self._lock:
            self._closed = True
            self._store.close()
            _live.discard(self)

    def _after_fork(self) -> None:
        # SQLite connections and threads do not survive fork(): open our own in the child.
        self._pid = os.getpid()
        self._store = OutboxStore(self.path, **self._store_options)
        if self._sender is not None:
            old = self._sender
            self._sender = Sender(
                self._store,
                old.client.__class__(
                    old.client.url,
                    api_key=old.client._key,
                    api_secret=old.client._secret,
                    gzip_min_bytes=old.client.gzip_min_bytes,
                    timeout=old.client.timeout,
                ),
                max_batch=old.max_batch,
                max_batch_bytes=old.max_batch_bytes,
                interval=old.interval,
                backoff=Backoff(old.backoff.base, old.backoff.cap),
            )

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, url={self.url!r})"


_live: weakref.WeakSet[Outbox] = weakref.WeakSet()


@atexit.register
def _shutdown_live_outboxes() -> None:
    # A plain script that never calls shutdown() still gets its flush (within the budget).
    for outbox in list(_live):
        if outbox._pid == os.getpid():
            try:
                outbox.shutdown()
            except Exception:
                logger.exception("livekit-metering: outbox shutdown at exit failed")
