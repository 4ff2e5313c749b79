"""``livekit-metering serve`` as an operator runs it: a mistake is one line and a non-zero exit, with
nothing created; a port another process holds is refused rather than shared; workers do not outlive
their parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest
from collector_helpers import children_of, start_serve, stop_serve
from typer.testing import CliRunner

from livekit_metering.cli import app
from livekit_metering.collector import serve
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, free_port, wait_healthy


def _fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, env: dict[str, str] | None = None
) -> str:
    """Run ``serve`` in an empty directory: a non-zero exit, one line on stderr, the directory still empty."""
    monkeypatch.chdir(tmp_path)

    def serving(*args: object, **kw: object) -> None:
        raise AssertionError("serve started serving instead of refusing")

    monkeypatch.setattr(serve, "_serve", serving)
    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["serve", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), (
        result.exit_code,
        result.output,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "serve created files before refusing to start"
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--port", "99999"], {}, "--port must be from 1 to 65535"),
        (["--workers", "0"], {}, "--workers must be at least 1"),
        (["--database", "mysql://x/y"], {}, "unsupported database mysql://"),
        (["--database", "postgresql://postgres@127.0.0.1:1/none"], {}, "cannot open the database"),
        ([], {"LIVEKIT_API_SECRET": "abc"}, "LIVEKIT_API_SECRET has 3 characters"),
        (["--max-token-minutes", "0"], {}, "--max-token-minutes must be positive"),
    ],
    ids=["port 99999", "workers 0", "mysql", "unreachable postgres", "short secret", "token minutes 0"],
)
def test_a_mistake_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], words: str
) -> None:
    # The database is metering.db in the empty directory: none of these may create it.
    line = _fails_cleanly(tmp_path, monkeypatch, "--port", str(free_port()), *args, env=env)
    assert words in line, line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_refused_before_the_database_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = _fails_cleanly(tmp_path, monkeypatch, "--port", str(port), "--workers", workers)
    assert f"port {port} on 127.0.0.1 is in use by another process" in line


def test_help_shows_the_keys_file_syntax() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "[keys.<API key>]" in result.output


async def _pids_behind(url: str, connections: int = 24) -> set[int]:
    pids = set()
    for _ in range(connections):  # a new connection each time: the kernel picks a listener for each
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(f"{url}/healthz") as resp:
                pids.add((await resp.json())["pid"])
    return pids


@pytest.mark.slow
async def test_a_second_collector_on_the_same_port_refuses_instead_of_sharing_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_serve(tmp_path / "first.db", port, "--workers", "2")
    try:
        await wait_healthy(url, alive=lambda: first.poll() is None)
        workers = await asyncio.to_thread(children_of, first.pid)
        second = start_serve(tmp_path / "second.db", port, "--workers", "2", stderr=subprocess.PIPE)
        try:
            _, err = await asyncio.to_thread(second.communicate, timeout=60)
        finally:
            stop_serve(second)
        assert second.returncode != 0 and f"port {port} on 127.0.0.1 is in use" in err.decode()
        assert not (tmp_path / "second.db").exists()
        assert await _pids_behind(url) <= workers  # every connection still reaches the first collector
    finally:
        stop_serve(first)


@pytest.mark.slow
async def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp_path / "metering.db", port, "--workers", "2")
    try:
        await wait_healthy(url, alive=lambda: proc.poll() is None)
        workers = await asyncio.to_thread(children_of, proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers are on their own now
        proc.wait()
        for _ in range(200):  # 20 s at most; an idle worker stops in well under a second
            if not any(_alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)]
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz"):
                pass
    finally:
        stop_serve(proc)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Forked(Exception):
    pass


def test_the_database_is_set_up_before_the_first_worker_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers switching a fresh SQLite file to WAL at once could fail with "database is locked":
    the parent sets the database up (WAL, every migration) before it forks anyone."""
    import sqlite3

    from livekit_metering.collector.store.sqlite import MIGRATIONS

    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    for process_wide in ("configure_logging", "_tune_gc", "share_between_processes"):
        monkeypatch.setattr(serve, process_wide, lambda *a: None)
    db = tmp_path / "fresh.db"
    seen: dict[str, object] = {}

    def fork() -> int:
        with sqlite3.connect(db) as conn:
            seen["journal"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
            seen["version"] = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        raise _Forked

    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(_Forked):
        serve.run_serve(serve.build_config(database=f"sqlite:///{db}"), port=free_port(), workers=2)
    assert seen == {"journal": "wal", "version": len(MIGRATIONS)}
