"""Kill -9 of a collector process right after it acknowledged: every acknowledged record is there
after restart (the SQLite commit is fsynced before the answer). SIGTERM finishes in-flight requests
before the store closes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, children_of, get, post, rec, start_serve, stop_serve

from livekit_metering.collector.testing import free_port, sign, wait_healthy

pytestmark = pytest.mark.slow

ROUNDS = 15


def _start(db: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    return start_serve(db, port, "--workers", str(workers))


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
                stop_serve(proc)
        assert acked, "no batch was ever acknowledged"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(db, port)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            stored = await _stored_ids(http, url, sessions)
        finally:
            stop_serve(proc)
    assert acked <= stored


async def _in_flight(http: aiohttp.ClientSession, url: str) -> int:
    """Requests the collector is handling now, over all its workers (this scrape excluded)."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    [line] = [line for line in text.splitlines() if line.startswith("metering_requests_in_flight ")]
    return int(float(line.split()[1])) - 1


async def _send_head_and_half(url: str, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(
        (
            f"POST /v1/records HTTP/1.1\r\nHost: collector\r\nAuthorization: {sign(body)}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body[: len(body) // 2]
    )
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """The status and JSON of the response; (0, {}) when the connection closed without one."""
    first = (await reader.readline()).split()
    if len(first) < 2:
        return 0, {}
    status = int(first[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, json.loads(await reader.readexactly(length))


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, workers: int) -> None:
    """Requests the collector is in the middle of at SIGTERM (their bodies still arriving) are all
    answered 200, and every record in them is stored; then the process exits 0."""
    db = tmp_path / "metering.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    batches = [[rec("T", f"llm-{b}-{i}") for i in range(500)] for b in range(6)]
    bodies = [body_of(batch) for batch in batches]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        proc = _start(db, port, workers)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            streams = [await _send_head_and_half(url, body) for body in bodies]
            for _ in range(400):  # until the collector has every request's headers (20 s at most)
                if await _in_flight(http, url) == len(bodies):
                    break
                await asyncio.sleep(0.05)
            assert await _in_flight(http, url) == len(bodies)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)  # the collector is shutting down now: no new connections
            for (_, writer), body in zip(streams, bodies, strict=True):
                writer.write(body[len(body) // 2 :])
            answers = await asyncio.gather(*(_answer(reader) for reader, _ in streams))
            for _, writer in streams:
                writer.close()
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            stop_serve(proc)
        assert [status for status, _ in answers] == [200] * len(bodies)
        assert {r["status"] for _, doc in answers for r in doc["results"]} == {"accepted"}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(db, port)
        try:
            await wait_healthy(url, alive=lambda p=proc: p.poll() is None)
            assert await _stored_ids(http, url, ["T"]) == {r.id for batch in batches for r in batch}
        finally:
            stop_serve(proc)


async def test_two_workers_both_take_connections_store_each_id_once_and_count_together(tmp_path: Path) -> None:
    """serve --workers 2: the kernel spreads new connections over both processes, batches sent twice
    at once through different workers are stored once (the workers share the SQLite file), and
    /metrics from either worker counts both."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path / "metering.db", port, workers=2)
    try:
        await wait_healthy(url, alive=lambda: proc.poll() is None)
        children = await asyncio.to_thread(children_of, proc.pid)
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
        stop_serve(proc)
