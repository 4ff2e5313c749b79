"""Shared fixtures. External services come from the environment that .ci/run sets up:

LIVEKIT_METERING_TEST_PG        a PostgreSQL URL (a server the tests may create databases on)
LIVEKIT_METERING_TEST_CHROMIUM  a Chromium executable
LIVEKIT_METERING_TEST_SERVER    a livekit-server binary (the end-to-end tests start it on loopback)
LIVEKIT_METERING_REQUIRE_SERVICES=1 makes a missing service a failure instead of a skip (CI sets it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _service(env: str, what: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        if os.environ.get("LIVEKIT_METERING_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{what} is required in CI but {env} is not set")
        pytest.skip(f"{what} not available: set {env}")
    return value


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a PostgreSQL server for the tests."""
    return _service("LIVEKIT_METERING_TEST_PG", "PostgreSQL")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("LIVEKIT_METERING_TEST_CHROMIUM") or shutil.which("chromium") or ""
    if path:
        os.environ.setdefault("LIVEKIT_METERING_TEST_CHROMIUM", path)
    return _service("LIVEKIT_METERING_TEST_CHROMIUM", "Chromium")


@pytest.fixture(scope="session")
def livekit_server_binary() -> str:
    """A livekit-server executable (.ci/run installs the pinned version with ``go install``)."""
    return _service("LIVEKIT_METERING_TEST_SERVER", "LiveKit server")


@pytest.fixture(scope="module")
def pg_database(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test module, dropped afterwards."""
    from collector_helpers import fresh_pg_database

    with fresh_pg_database(pg_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: each test using it runs on SQLite and on (an emptied) PostgreSQL."""
    from collector_helpers import reset_pg

    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/metering.db"
    url: str = request.getfixturevalue("pg_database")
    asyncio.run(reset_pg(url))
    return url


def _processes_using(base: str) -> dict[int, str]:
    """Processes (not this one) whose command line names a path under ``base``, or whose working
    directory is there: every collector, worker and job a test starts names its temporary directory."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to read
            continue
        if f"{base}/" in cmdline or cwd == base or cwd.startswith(f"{base}/"):
            found[int(entry.name)] = cmdline[:200]
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite leaves no process behind: one still running at the end that uses this run's
    temporary directory fails the run (and is killed)."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    if not Path("/proc/self/cmdline").exists():  # not Linux: nothing to look at
        return
    deadline = time.monotonic() + 5  # a collector stopped by the last test may still be exiting
    while (left := _processes_using(base)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left behind: {left}"


@pytest.fixture(autouse=True)
def _cloud_deployed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs in tests run on fake servers (``ws://fake``), which hosting detection takes for your own
    LiveKit server; unless a test says otherwise, they are metered as agents deployed to LiveKit Cloud."""
    monkeypatch.setenv("LIVEKIT_METERING_HOSTING", "cloud")
