"""``livekit-metering serve``: configuration from options and environment, then the app on its sockets.

Everything that can be wrong with the command line is found before anything is created or
served: the options, the keys, the port (bound here, so a port another process holds is refused,
not shared), then the database (opened and migrated once, here, before any worker starts). Each
problem is one line saying what to change (:class:`ServeError`).

SIGINT/SIGTERM stop it gracefully: it stops listening, lets the requests in flight finish (bodies
still arriving included; each is acknowledged only after its commit), answers 503 to new requests on
kept-alive connections, then closes connections and the store. Nothing acknowledged is lost, and
nothing half-received was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from .app import DRAIN, CollectorConfig, create_app
from .auth import BadKeys, KeyRing
from .config import Limits
from .logs import configure_logging
from .metrics import share_between_processes
from .settings import Settings, SettingsError
from .store.base import open_store, redacted

__all__ = ["ServeError", "build_config", "prepare_database", "run_serve"]

log = logging.getLogger("livekit_metering.collector")

SHUTDOWN_TIMEOUT = 30.0  # seconds the requests in flight at SIGTERM may take to finish


class ServeError(Exception):
    """The collector cannot start as configured; the message says what to set."""


def build_config(
    *,
    database: str = "sqlite:///metering.db",
    keys: str | None = None,
    prices: str | None = None,
    max_body_bytes: int | None = None,
    max_batch: int | None = None,
    max_past_days: int | None = None,
    max_future_seconds: int | None = None,
    close_stale_after_minutes: int = 15,
    max_token_minutes: float | None = None,
    body_timeout_seconds: float | None = None,
    dashboard_session_hours: float | None = None,
    config: str | None = None,
    plan: str | None = None,
    policy: str | None = None,
    livekit_url: str | None = None,
    invoice_grace_hours: float = 24,
    close_joins_after_hours: float = 24,
) -> CollectorConfig:
    try:
        ring = KeyRing.from_env()
        if keys:
            ring = ring.merged(KeyRing.load(keys))
    except BadKeys as exc:
        raise ServeError(str(exc)) from None
    if not len(ring):
        raise ServeError(
            "no API keys: set LIVEKIT_API_KEY and LIVEKIT_API_SECRET, or pass --keys keys.toml "
            '([keys.<API key>] secret = "...", project = "...")'
        )
    for name, value in (
        ("--max-body-bytes", max_body_bytes),
        ("--max-batch", max_batch),
        ("--max-past-days", max_past_days),
        ("--max-future-seconds", max_future_seconds),
        ("--max-token-minutes", max_token_minutes),
        ("--body-timeout-seconds", body_timeout_seconds),
        ("--dashboard-session-hours", dashboard_session_hours),
    ):
        if value is not None and value <= 0:
            raise ServeError(f"{name} must be positive, not {value}")
    defaults = Limits()
    limits = Limits(
        max_body_bytes=max_body_bytes or defaults.max_body_bytes,
        max_inflated_bytes=max(defaults.max_inflated_bytes, 4 * (max_body_bytes or 0)),
        max_batch=max_batch or defaults.max_batch,
        max_past=timedelta(days=max_past_days) if max_past_days else defaults.max_past,
        max_future=timedelta(seconds=max_future_seconds) if max_future_seconds else defaults.max_future,
        max_token_lifetime=timedelta(minutes=max_token_minutes) if max_token_minutes else defaults.max_token_lifetime,
        body_timeout=timedelta(seconds=body_timeout_seconds) if body_timeout_seconds else defaults.body_timeout,
        dashboard_session=(
            timedelta(hours=dashboard_session_hours) if dashboard_session_hours else defaults.dashboard_session
        ),
    )
    if prices and not Path(prices).is_file():
        raise ServeError(f"no price file at {prices}")
    try:
        open_store(database)  # only checks the URL: nothing is opened or created yet
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    stale = timedelta(minutes=close_stale_after_minutes) if close_stale_after_minutes > 0 else None
    try:
        settings = Settings.load(config) if config else Settings()
        settings = settings.with_overrides(plan=plan, policy=policy, livekit_url=livekit_url)
    except SettingsError as exc:
        raise ServeError(str(exc)) from None
    if not 0 <= invoice_grace_hours <= 24 * 31:
        raise ServeError("--invoice-grace-hours must be between 0 and 744 (31 days)")
    if close_joins_after_hours < 0:
        raise ServeError("--close-joins-after-hours must be 0 (never) or more")
    return CollectorConfig(
        database=database,
        keys=ring,
        limits=limits,
        prices=prices,
        close_stale_after=stale,
        settings=settings,
        invoice_grace=timedelta(hours=invoice_grace_hours),
        close_joins_after=timedelta(hours=close_joins_after_hours) if close_joins_after_hours else None,
    )


def prepare_database(url: str, timeout: float = 30.0) -> None:
    """Open the store once and run its migrations, then close it: the workers then open a database
    that is already set up (two workers switching a fresh SQLite file to WAL at once could fail
    with "database is locked"), and an unreachable database is one line, before anything serves."""

    async def prepare() -> None:
        store = open_store(url)
        await asyncio.wait_for(store.open(), timeout)
        await store.close()

    try:
        asyncio.run(prepare())
    except asyncio.TimeoutError:
        raise ServeError(f"cannot open the database {redacted(url)}: no answer within {timeout:.0f} s") from None
    except Exception as exc:  # asyncpg, OSError, sqlite3: each says what went wrong in its message
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ServeError(f"cannot open the database {redacted(url)}: {reason[:300]}") from None


def _tune_gc() -> None:
    """Collect the young generation every 50,000 allocations instead of 700.

    Ingest builds ten objects or so per record and frees them with its batch; with the default
    thresholds the cyclic collector ran so often that it doubled the cost of validating a batch
    (10 µs instead of 5 µs a record). Reference counting still frees everything acyclic at once,
    so memory stays flat. Objects alive at start (modules, price book) are frozen out of the scans.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _listen(host: str, port: int, workers: int) -> list[socket.socket]:
    """The listening sockets, one per worker. A port another process holds is refused: the first
    bind is exclusive (no SO_REUSEPORT), so it fails if anyone listens there, even a collector whose
    workers share the port among themselves; only then is the port shared by this collector's workers."""
    try:
        first = socket.create_server((host, port), backlog=1024)
        if workers == 1:
            return [first]
        first.close()
        return [socket.create_server((host, port), reuse_port=True, backlog=1024) for _ in range(workers)]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is in use by another process: stop it, or choose another --port"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_serve(config: CollectorConfig, *, host: str = "127.0.0.1", port: int = 8790, workers: int = 1) -> None:
    """Serve until SIGINT/SIGTERM. ``workers`` > 1 forks that many processes, each with its own
    SO_REUSEPORT socket on the port, so the kernel spreads connections across them (on one shared
    socket, one process tends to accept them all) and validation runs on several cores. They share
    the store (SQLite queues their commits on a file lock, PostgreSQL row-locks them) and their
    metrics (/metrics from any worker sums all of them), and exit when the parent dies."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port must be from 1 to 65535, not {port}")
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, not {workers}")
    socks = _listen(host, port, workers)
    try:
        prepare_database(config.database)
    except ServeError:
        for sock in socks:
            sock.close()
        raise
    configure_logging()
    _tune_gc()
    log.info("listening", extra={"host": host, "port": port, "workers": workers})
    if workers == 1:
        asyncio.run(_serve(create_app(config), socks[0]))
        return
    metrics_dir = tempfile.mkdtemp(prefix="livekit-metering-metrics-")
    share_between_processes(metrics_dir)
    # Each worker watches the read end of this pipe: when the parent dies, however it dies, the
    # kernel closes the write end, the read end reports end-of-file, and the worker stops gracefully.
    lifeline, parent_end = os.pipe()
    children: list[int] = []
    try:
        for mine in socks:
            pid = os.fork()
            if pid == 0:  # a worker: serves its own socket, stops gracefully on SIGTERM
                code = 0
                try:
                    os.close(parent_end)
                    for other in socks:
                        if other is not mine:
                            other.close()
                    asyncio.run(_serve(create_app(config), mine, lifeline=lifeline))
                except KeyboardInterrupt:
                    pass
                except BaseException:
                    log.exception("worker failed")
                    code = 1
                os._exit(code)
            children.append(pid)
    finally:
        os.close(lifeline)
        for sock in socks:
            sock.close()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    os.close(parent_end)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        raise SystemExit(status)


async def _serve(app: web.Application, sock: socket.socket, *, lifeline: int | None = None) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT (or, with ``lifeline``, until the parent
    process is gone: the read end of a pipe whose write end only the parent holds reports end-of-file),
    then drain (see ``app.Drain``) for at most SHUTDOWN_TIMEOUT before closing."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if lifeline is not None:

        def parent_gone() -> None:
            loop.remove_reader(lifeline)
            log.warning("the parent process is gone; stopping")
            stop.set()

        loop.add_reader(lifeline, parent_gone)
    # After the drain, what is still running has had SHUTDOWN_TIMEOUT already: a few more seconds.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        await stop.wait()
        drain = app[DRAIN]
        drain.closing = True
        await site.stop()  # no new connections
        if drain.active:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain.idle.wait(), SHUTDOWN_TIMEOUT)
    finally:
        await runner.cleanup()
