"""Kill -9 of a collector process right after it acknowledged: every acknowledged record is there
after restart (the SQLite commit is fsynced before the answer). SIGTERM finishes in-flight requests
before the store closes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from collector_helpers import body_of, get, post, rec

from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, free_port, wait_healthy

pytestmark = pytest.mark.slow

ROUNDS = 15


def _start(db: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LIVEKIT_API_KEY": TEST_KEY, "LIVEKIT_API_SECRET": TEST_SECRET}
    cmd = [sys.executable, "-c", "from livekit_metering.cli import main; main()", "serve", "--port", str(port)]
    return subprocess.Popen(
        [*cmd, "--database", f"sqlite:///{db}", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _stored_ids(http: aiohttp.ClientSession, url: str, sessions: list[str]) -> set[str]:
    ids: set[str] = set()
    for sid in sessions:
        status, doc = await get(http, url, f"/v1/sessions/{sid}/records")
        assert status == 200
        ids |= {r["id"] for r in doc["records"]}
    return ids


async def test_kill_9_right_after_an_ack_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "metering.db"
    acked: set[str] = set()
    sessions: list[str] = []
    async with aiohttp.ClientSession() as http:
        for round_no in range(ROUNDS):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = _start(db, port)
            try:
                await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
                sid = f"K{round_no}"
                sessions.append(sid)
                batches = [[rec(sid, f"llm-{b}-{i}", raw=i + 1) for i in range(200)] for b in range(4)]
                # Several batches in flight; the process dies the moment the first answer arrives.
                tasks = [asyncio.create_task(post(http, url, body_of(batch))) for batch in batches]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                proc.send_signal(signal.SIGKILL)
                for task in tasks:
                    try:
                        status, doc = await task
                    except aiohttp.ClientError:
                        continue  # cut off by the kill: not acknowledged, may or may not be stored
                    if status == 200:
                        acked |= {r["id"] for r in doc["results"] if r["status"] == "accepted"}
                assert done
            finally:
                proc.kill()
                proc.wait()
        assert acked, "no batch was ever acknowledged"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(db, port)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            stored = await _stored_ids(http, url, sessions)
        finally:
            proc.kill()
            proc.wait()
    assert acked <= stored


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, workers: int) -> None:
    db = tmp_path / "metering.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        proc = _start(db, port, workers)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            batches = [[rec("T", f"llm-{b}-{i}") for i in range(500)] for b in range(6)]
            # Each batch twice: with two workers, the copies race on the shared SQLite file.
            tasks = [asyncio.create_task(post(http, url, body_of(batch))) for batch in batches for _ in range(2)]
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*tasks, return_exceptions=True)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.wait()
        acked = {r["id"] for a in answers if not isinstance(a, BaseException) and a[0] == 200 for r in a[1]["results"]}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(db, port)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            assert acked <= await _stored_ids(http, url, ["T"])
        finally:
            proc.kill()
            proc.wait()


async def test_two_workers_both_take_connections_store_each_id_once_and_count_together(tmp_path: Path) -> None:
    """serve --workers 2: the kernel spreads new connections over both processes, batches sent twice
    at once through different workers are stored once (the workers share the SQLite file), and
    /metrics from either worker counts both."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path / "metering.db", port, workers=2)
    try:
        await wait_healthy(url, alive=lambda: proc.poll() is None)
        listing = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        children = {int(p) for p in (await asyncio.to_thread(listing.read_text)).split()}
        pids = set()
        for _ in range(32):  # a new connection each time; all 32 on one worker: odds of 1 in 2^31
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(f"{url}/healthz") as resp:
                    pids.add((await resp.json())["pid"])
        assert pids == children and len(children) == 2

        batches = [[rec("W", f"llm-{b}-{i}", raw=i + 1) for i in range(300)] for b in range(8)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            answers = await asyncio.gather(*(post(http, url, body_of(batch)) for batch in batches for _ in range(2)))
            statuses = [r["status"] for status, doc in answers for r in doc["results"] if status == 200]
            assert len(statuses) == 2 * 8 * 300
            assert (statuses.count("accepted"), statuses.count("duplicate")) == (8 * 300, 8 * 300)
            assert len(await _stored_ids(http, url, ["W"])) == 8 * 300
        # Each scrape reaches one worker or the other; every one reports both workers' counts.
        for _ in range(8):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(f"{url}/metrics") as resp:
                    text = await resp.text()
            assert 'metering_records_total{status="accepted"} 2400.0' in text
            assert 'metering_records_total{status="duplicate"} 2400.0' in text
    finally:
        proc.kill()
        proc.wait()
