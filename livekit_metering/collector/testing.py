"""Run a real collector on 127.0.0.1 inside a test (or a script): ``async with run_collector(...) as url``."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from ..export.client import sign_body
from .app import CollectorConfig, create_app
from .auth import KeyRing
from .config import Limits

__all__ = ["TEST_KEY", "TEST_SECRET", "free_port", "run_collector", "sign", "signed_headers", "wait_healthy"]

TEST_KEY = "APItestkey"
TEST_SECRET = "test-secret-test-secret-test-secret"


@asynccontextmanager
async def run_collector(
    database: str | Path | None = None,
    keys: Mapping[str, tuple[str, str]] | KeyRing | None = None,
    *,
    limits: Limits | None = None,
    port: int = 0,
    close_stale_after: timedelta | None = None,
    invoice_grace: timedelta | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """Start the collector app on 127.0.0.1 (a free port by default) and yield its base URL.

    ``database``: a store URL (``sqlite:///...``, ``postgresql://...``); by default a SQLite file in a
    temporary directory removed afterwards. ``keys`` maps API key -> (secret, project); by default
    ``TEST_KEY``/``TEST_SECRET`` in project "default". Sign requests with :func:`sign`. The stale-session
    sweep is off unless ``close_stale_after`` is given (test records are often hours old), and months
    are closed only when ``invoice_grace`` is given. Other ``CollectorConfig`` fields (``settings``,
    ``clock``, ``sweep_every``, ...) pass through ``options``.
    """
    ring = keys if isinstance(keys, KeyRing) else KeyRing(keys or {TEST_KEY: (TEST_SECRET, "default")})
    with tempfile.TemporaryDirectory(prefix="collector-") as scratch:
        url = str(database) if database is not None else f"sqlite:///{scratch}/metering.db"
        config = CollectorConfig(
            database=url,
            keys=ring,
            limits=limits or Limits(),
            close_stale_after=close_stale_after,
            invoice_grace=invoice_grace,
            **options,
        )
        async with _serve(config, port) as base:
            yield base


@asynccontextmanager
async def _serve(config: CollectorConfig, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()


def sign(
    body: bytes | None = None, *, key: str = TEST_KEY, secret: str = TEST_SECRET, ttl: timedelta = timedelta(minutes=5)
) -> str:
    """``export.client.sign_body`` with the test key pair by default."""
    return sign_body(body, key, secret, ttl=ttl)


def signed_headers(body: bytes, **kw: Any) -> dict[str, str]:
    return {"Authorization": sign(body, **kw), "Content-Type": "application/json"}


def batch_body(records: Iterable[Any]) -> bytes:
    """``{"records": [...]}`` for MeterRecords or their JSON forms."""
    items = [r if isinstance(r, dict) else r.to_json() for r in records]
    return json.dumps({"records": items}).encode()


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A TCP (or ``SOCK_DGRAM``: UDP) port free on 127.0.0.1 right now, for a server started in another process."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_healthy(url: str, *, alive: Callable[[], bool] = lambda: True, timeout: float = 30.0) -> None:
    """Wait until the collector at ``url`` answers /healthz (migrations done); ``alive`` says whether
    its process still runs, so a collector that died during start-up fails at once."""
    import asyncio

    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the collector for {url} exited during start-up")
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the collector at {url} did not start within {timeout:.0f} s")
