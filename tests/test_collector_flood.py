"""A real ``serve`` process under load nobody signed: 100 connections that announce 8 MiB bodies
with a bad token and trickle them in. The collector answers each from its headers (401) without
buffering a byte, keeps answering /healthz and ingesting signed batches, and its resident memory
stays within 50 MB of its idle figure. Signed clients that vanish halfway through a large body are
logged at INFO and leave no memory behind."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from collector_helpers import body_of, get, post, rec, start_serve, stop_serve

from livekit_metering.collector.testing import free_port, sign, wait_healthy

pytestmark = pytest.mark.slow

FLOOD = 100  # connections
ANNOUNCED = 8 * 1024 * 1024  # the Content-Length each one claims
CHUNK, EVERY = 16 * 1024, 0.05  # what each sends, how often: 32 MB/s in all
SECONDS = 8.0
MB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def idle_rss(pid: int) -> int:
    samples = []
    for _ in range(5):
        samples.append(rss(pid))
        await asyncio.sleep(0.1)
    return int(statistics.median(samples))


async def trickle(host: str, port: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """One flooding client: connect, announce a large body with a bad token, send it slowly, and
    connect again whenever the collector hangs up."""
    head = (
        "POST /v1/records HTTP/1.1\r\nHost: collector\r\nAuthorization: Bearer not-a-valid-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
    ).encode()
    chunk = b"x" * CHUNK
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(EVERY)
            continue
        stats["connections"] += 1
        try:
            writer.write(head)
            sent = 0
            while not stop.is_set() and sent < ANNOUNCED:
                writer.write(chunk)
                await writer.drain()
                sent += CHUNK
                stats["bytes"] += CHUNK
                if reader.at_eof() or writer.is_closing():
                    break
                await asyncio.sleep(EVERY)
            if (await asyncio.wait_for(reader.read(12), 0.01 if stop.is_set() else 5)).startswith(b"HTTP/1.1 401"):
                stats["401"] += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(EVERY)


async def abandon_signed_upload(host: str, port: int, token: str, half: bytes) -> None:
    """A signed client that sends half of an 8 MiB body and goes away."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST /v1/records HTTP/1.1\r\nHost: collector\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {2 * len(half)}\r\n\r\n"
        ).encode()
    )
    writer.write(half)
    await writer.drain()
    writer.transport.abort()


async def test_an_unsigned_trickling_flood_costs_no_memory_and_stops_nothing(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    host = urlsplit(url).hostname or "127.0.0.1"
    log = tmp_path / "collector.log"
    with log.open("wb") as stderr:
        proc = start_serve(tmp_path / "metering.db", port, stderr=stderr)
    try:
        await wait_healthy(url, alive=lambda: proc.poll() is None)
        async with aiohttp.ClientSession() as http:
            for b in range(5):  # warm up every path the test takes, then take the idle figure
                assert (await post(http, url, body_of([rec("WARM", f"llm-{b}-{i}") for i in range(50)])))[0] == 200
            idle = await idle_rss(proc.pid)

            stop = asyncio.Event()
            stats = {"connections": 0, "bytes": 0, "401": 0}
            flood = [asyncio.create_task(trickle(host, port, stop, stats)) for _ in range(FLOOD)]
            peak, health, ingested = idle, [], 0
            began = time.monotonic()
            batch_no = 0
            while time.monotonic() - began < SECONDS:
                peak = max(peak, rss(proc.pid))
                started = time.monotonic()
                async with http.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    assert resp.status == 200
                health.append(time.monotonic() - started)
                status, doc = await post(http, url, body_of([rec("SIGNED", f"llm-{batch_no}-{i}") for i in range(50)]))
                assert status == 200 and {r["status"] for r in doc["results"]} == {"accepted"}, doc
                ingested += 50
                batch_no += 1
                peak = max(peak, rss(proc.pid))
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*flood)
            after_flood = await idle_rss(proc.pid)

            # Signed uploads abandoned halfway: read, then let go (and said so at INFO, not ERROR).
            body = b'{"records": [' + b" " * (8 * MB - 15) + b"]}"
            token = sign(body)
            await asyncio.gather(*(abandon_signed_upload(host, port, token, body[: 4 * MB]) for _ in range(20)))
            await asyncio.sleep(1.0)
            abandoned_peak = rss(proc.pid)
            after_abandoned = await idle_rss(proc.pid)

            status, doc = await get(http, url, "/v1/sessions/SIGNED/records")
            assert status == 200 and len(doc["records"]) == ingested
    finally:
        stop_serve(proc)

    figures = {
        "idle_mb": round(idle / MB, 1),
        "flood_peak_mb": round(peak / MB, 1),
        "after_flood_mb": round(after_flood / MB, 1),
        "abandoned_peak_mb": round(abandoned_peak / MB, 1),
        "after_abandoned_mb": round(after_abandoned / MB, 1),
        "flood_connections": stats["connections"],
        "flood_mb_sent": round(stats["bytes"] / MB, 1),
        "flood_401s": stats["401"],
        "signed_records": ingested,
        "healthz_max_s": round(max(health), 3),
    }
    print("flood:", json.dumps(figures))
    assert stats["connections"] >= FLOOD and stats["401"] > 0, figures
    assert peak - idle <= 50 * MB, figures
    assert after_abandoned - idle <= 50 * MB, figures
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] in ("error", "critical")], log.read_text()[-3000:]
    assert any(line["msg"] == "client went away while sending its body" for line in lines)
