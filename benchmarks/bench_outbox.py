"""Benchmark of the outbox: what recording costs the agent, and how fast an outage drains.

    .venv/bin/python benchmarks/bench_outbox.py [--records 20000] [--drain 100000]

Measures, with each record committed to the SQLite WAL before ``export`` returns:

1. per-record ``export`` cost (median, p99, max) on an asyncio event loop, while the sender drains
   concurrently into a loopback collector (so the sender's deletes, checkpoints and the GIL compete);
2. the longest event-loop stall seen by a 1 ms ticker task while recording under that load;
3. drain throughput after an outage: ``--drain`` records written while the collector is down, then
   the collector comes up and the time until the outbox is empty gives records/s.

The loopback collector runs in its own process and does the minimum a collector must (parse the
batch, keep the ids, answer per record), so the numbers are the sending side's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livekit_metering.export import Backoff, Outbox
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(port: int) -> None:
    """A minimal collector: gunzip, parse, remember ids, answer accepted/duplicate per record."""
    import gzip

    from aiohttp import web

    seen: set[str] = set()

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        results = []
        for item in json.loads(body)["records"]:
            rid = item["id"]
            results.append({"id": rid, "status": "duplicate" if rid in seen else "accepted"})
            seen.add(rid)
        return web.json_response({"results": results})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/records", ingest)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True, auto_decompress=False)


def start_collector(port: int) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(port,), daemon=True)
    process.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("benchmark collector did not start")


def make_records(n: int, prefix: str) -> list[MeterRecord]:
    policy = get_policy(None)
    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
    return [
        policy.record(
            id=f"{prefix}-{i // 40}/llm-{i}/llm_output",
            session_id=f"{prefix}-{i // 40}",
            resource=Resource.LLM_OUTPUT,
            raw=100 + i,
            start=t0,
            end=t0 + timedelta(seconds=1),
            model="openai/gpt-4.1-mini",
            provider="openai",
            room="room-bench",
            agent_name="bench-agent",
        )
        for i in range(n)
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def record_under_load(outbox: Outbox, records: list[MeterRecord]) -> tuple[list[float], float]:
    """Export one record at a time from a task, beside a 1 ms ticker that measures loop stalls."""
    costs: list[float] = []
    worst_stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst_stall
        period = 0.001
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(period)
            worst_stall = max(worst_stall, time.perf_counter() - before - period)

    tick = asyncio.create_task(ticker())
    for i, record in enumerate(records):
        start = time.perf_counter_ns()
        outbox.export([record])
        costs.append((time.perf_counter_ns() - start) / 1000)
        if i % 10 == 9:
            # A voice agent records a handful of usages per turn, not a tight loop: let the loop run.
            await asyncio.sleep(0.0005)
    done = True
    await tick
    return costs, worst_stall * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records timed one by one")
    parser.add_argument("--drain", type=int, default=100_000, help="records written during the outage")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        key, secret = "bench", "bench-secret-0123456789abcdef0123456789"
        # Baseline: the collector is down, so the sender only sleeps in its backoff.
        down_url = f"http://127.0.0.1:{free_port()}"
        down = Outbox(Path(tmp) / "down.sqlite3", url=down_url, api_key=key, api_secret=secret)
        quiet = make_records(args.records, "quiet")
        gc.collect()
        gc.freeze()
        quiet_costs, quiet_stall_us = asyncio.run(record_under_load(down, quiet))
        down.shutdown(timeout=0)
        del quiet

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        collector = start_collector(port)
        try:
            outbox = Outbox(Path(tmp) / "outbox.sqlite3", url=url, api_key=key, api_secret=secret)
            timed = make_records(args.records, "timed")
            # The benchmark holds every record in memory (an agent does not): keep the garbage
            # collector from walking them in the timed section, or its pauses dominate the stalls.
            gc.collect()
            gc.freeze()
            outbox.export(make_records(500, "warm"))
            costs, stall_us = asyncio.run(record_under_load(outbox, timed))
            drained = outbox.flush(30)
            sent = outbox.health().sent
            outbox.close()
        finally:
            collector.kill()
            collector.join()

        outage_path = Path(tmp) / "outage.sqlite3"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        backlog = make_records(args.drain, "outage")
        writer = Outbox(outage_path)  # no URL: the collector is down, records wait on disk
        for start in range(0, len(backlog), 100):
            writer.export(backlog[start : start + 100])
        pending = writer.health().pending
        writer.close()
        collector = start_collector(port)
        try:
            began = time.perf_counter()
            sender = Outbox(outage_path, url=url, api_key=key, api_secret=secret, backoff=Backoff(0.05, 0.5))
            emptied = sender.flush(300)
            elapsed = time.perf_counter() - began
            sender.close()
        finally:
            collector.kill()
            collector.join()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, sqlite {__import__('sqlite3').sqlite_version}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (a shared machine inflates the tails)")
    print("export, one record per call, committed (WAL, synchronous=NORMAL):")
    for label, values, stall in (
        ("collector down, sender idle", quiet_costs, quiet_stall_us),
        ("sender draining concurrently", costs, stall_us),
    ):
        print(
            f"  {label}: n={len(values)}  median={statistics.median(values):.1f} us  "
            f"p99={pct(values, 0.99):.1f} us  p99.9={pct(values, 0.999):.1f} us  max={max(values):.1f} us  "
            f"worst loop stall (1 ms ticker)={stall:.0f} us"
        )
    print(f"  delivered during the run: {sent} (drained={drained})")
    print(
        f"drain after an outage: {pending} records in {elapsed:.2f} s = {pending / elapsed:,.0f} records/s "
        f"(emptied={emptied})"
    )


if __name__ == "__main__":
    main()
