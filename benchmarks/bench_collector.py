"""Collector benchmark: ingest throughput over HTTP on loopback, month-to-date query time, memory.

    .venv/bin/python benchmarks/bench_collector.py                 # 1M records (about two minutes)
    .venv/bin/python benchmarks/bench_collector.py --records 200000  # quicker
    .venv/bin/python benchmarks/bench_collector.py --database postgresql://postgres@127.0.0.1:54329/bench

Both servers run as subprocesses on 127.0.0.1 with durable commits (SQLite WAL, synchronous=FULL):

* the collector (``livekit-metering serve``): signature check, per-record validation, dedupe,
  roll-ups and sessions in the same transaction;
* a bare aiohttp handler that only parses the JSON and inserts (id, body) rows into SQLite.

The client sends pre-built batches of 500 records (time-ordered ids, like LiveKit job ids) over
8 connections (as from 8 agent hosts), each request signed. The collector runs with 1 and then 2
worker processes (``serve --workers``), each on a fresh store; the kernel spreads connections
over the workers, so with few connections one worker can get most of them. The last collector
then loads the rest, and the benchmark times the month-to-date usage query and the invoice preview
at the full record count and reads the collector's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, free_port, sign, wait_healthy
from livekit_metering.rates import get_policy
from livekit_metering.records import Resource

BARE_SERVER = r"""
import json, sqlite3, sys
from aiohttp import web
db = sqlite3.connect(sys.argv[2], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
async def ingest(request):
    doc = json.loads(await request.read())
    rows = [(r["id"], json.dumps(r)) for r in doc["records"]]
    db.execute("BEGIN")
    db.executemany("INSERT OR IGNORE INTO records VALUES (?, ?)", rows)
    db.execute("COMMIT")
    return web.json_response({"results": [{"id": r[0], "status": "accepted"} for r in rows]})
async def healthz(request):
    return web.json_response({"status": "ok"})
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/records", ingest); app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

RESOURCES = [
    (Resource.AGENT_SESSION, 95_000, ""),
    (Resource.STT, 61_000, "deepgram/nova-3"),
    (Resource.LLM_INPUT, 1800, "openai/gpt-4.1-mini"),
    (Resource.LLM_INPUT_CACHED, 900, "openai/gpt-4.1-mini"),
    (Resource.LLM_OUTPUT, 240, "openai/gpt-4.1-mini"),
    (Resource.TTS, 700, "cartesia/sonic-2"),
    (Resource.LLM_INPUT, 2100, "openai/gpt-4.1-mini"),
    (Resource.LLM_OUTPUT, 310, "openai/gpt-4.1-mini"),
    (Resource.TTS, 850, "cartesia/sonic-2"),
    (Resource.CONNECTION, 95_000, ""),
]


def make_records(n: int, now: datetime) -> list[dict[str, Any]]:
    """``n`` records of 10-record sessions spread over the month so far, as wire JSON."""
    policy = get_policy()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max((now - month_start).total_seconds() - 600, 60)
    sessions = max(n // len(RESOURCES), 1)
    out: list[dict[str, Any]] = []
    for s in range(sessions):
        sid = f"AJ_{s:09d}"  # time-ordered, like job ids handed out over time
        start = month_start + timedelta(seconds=span * s / sessions)
        t = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for u, (resource, raw, model) in enumerate(RESOURCES):
            rule = policy.rule(resource)
            out.append(
                {
                    "id": f"{sid}/u{u}/{resource.value}",
                    "session_id": sid,
                    "room": f"call-{s % 5000}",
                    "room_sid": f"RM_{s:09d}",
                    "agent_name": f"agent-{s % 4}",
                    "customer": f"cust-{s % 50}",
                    "resource": resource.value,
                    "raw": raw,
                    "unit": rule.unit.value,
                    "quantity": format(rule.quantity(raw), "f"),
                    "policy": policy.id,
                    "model": model,
                    "provider": "livekit" if model else "",
                    "start": t,
                    "end": t,
                    "status": "ok",
                }
            )
            if len(out) == n:
                return out
    return out


def worker_pids(parent: int) -> list[int]:
    """The serving processes: the forked workers when there are any, else the process itself."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found or [parent]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def send_all(url: str, bodies: list[bytes], concurrency: int, records: int) -> float:
    """Records per second for sending every body once (each request signed as sent)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                headers = {"Authorization": sign(body), "Content-Type": "application/json"}
                async with http.post(f"{url}/v1/records", data=body, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status}: {await resp.text()}")
                    await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return records / (time.perf_counter() - started)


async def timed_get(url: str, path: str, runs: int) -> tuple[float, Any]:
    async with aiohttp.ClientSession() as http:
        times = []
        doc: Any = None
        for _ in range(runs):
            headers = {"Authorization": sign()}
            started = time.perf_counter()
            async with http.get(f"{url}{path}", headers=headers) as resp:
                doc = await resp.json()
                assert resp.status == 200, doc
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times), doc


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--throughput-records", type=int, default=200_000, help="records for the A/B throughput run")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8, help="client connections (agent hosts)")
    parser.add_argument("--database", default="", help="collector store URL (default: a fresh SQLite file per run)")
    parser.add_argument(
        "--workers", default="1,2", help="collector process counts to compare (serve --workers); the last loads all"
    )
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    if args.database and len(worker_counts) > 1:
        parser.error("--database is one store: give one --workers count with it (a second run sees duplicates)")

    now = datetime.now(timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    print(f"generating {args.records:,} records ...", flush=True)
    records = make_records(args.records, now)
    bodies = [json.dumps({"records": records[i : i + args.batch]}).encode() for i in range(0, len(records), args.batch)]
    ab = bodies[: max(1, args.throughput_records // args.batch)]
    ab_records = sum(len(json.loads(b)["records"]) for b in ab)

    # 1. the bare handler
    port = free_port()
    bare = start([sys.executable, "-c", BARE_SERVER, str(port), str(tmp / "bare.db")])
    try:
        await wait_healthy(f"http://127.0.0.1:{port}")
        bare_rate = await send_all(f"http://127.0.0.1:{port}", ab, args.concurrency, ab_records)
    finally:
        bare.terminate()
        bare.wait()

    # 2. the collector, with each worker count on a fresh store; the last one also loads everything
    env = {**os.environ, "LIVEKIT_API_KEY": TEST_KEY, "LIVEKIT_API_SECRET": TEST_SECRET}
    rates: dict[int, float] = {}
    for n, workers in enumerate(worker_counts):
        last = n == len(worker_counts) - 1
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        database = args.database or f"sqlite:///{tmp / f'collector-{workers}.db'}"
        serve = [sys.executable, "-c", "from livekit_metering.cli import main; main()", "serve", "--port", str(port)]
        collector = start([*serve, "--database", database, "--workers", str(workers)], env)
        try:
            await wait_healthy(url)
            rates[workers] = await send_all(url, ab, args.concurrency, ab_records)
            if not last:
                continue
            rest = bodies[len(ab) :]
            if rest:
                print(f"loading the remaining {len(records) - ab_records:,} records ...", flush=True)
                await send_all(url, rest, args.concurrency, len(records) - ab_records)
            rss = max(peak_rss_mb(pid) for pid in worker_pids(collector.pid))
            since = now.replace(day=1).date().isoformat()
            mtd_ms, mtd = await timed_get(url, f"/v1/usage?group_by=resource&since={since}", 21)
            model_ms, _ = await timed_get(url, f"/v1/usage?group_by=model&since={since}", 21)
            inv_ms, _ = await timed_get(url, f"/v1/invoice?month={now:%Y-%m}&plan=ship", 21)
            sess_ms, _ = await timed_get(url, "/v1/sessions?limit=100", 11)
        finally:
            collector.terminate()
            collector.wait()

    print()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; store: {database.split('://')[0]}")
    print(f"ingest, batches of {args.batch}, {args.concurrency} connections, {ab_records:,} records, durable commits:")
    print(f"  bare aiohttp + json + SQLite insert: {bare_rate:10,.0f} records/s")
    for workers, rate in rates.items():
        print(
            f"  collector, {workers} worker(s) (verify, validate, dedupe, roll-ups): {rate:10,.0f} records/s"
            f"  ({rate / bare_rate:.2f} x bare)"
        )
    print(f"month-to-date at {len(records):,} records (median of 21 HTTP requests), {worker_counts[-1]} worker(s):")
    print(f"  /v1/usage?group_by=resource  {mtd_ms:7.1f} ms   total ${mtd['total']}")
    print(f"  /v1/usage?group_by=model     {model_ms:7.1f} ms")
    print(f"  /v1/invoice (ship)           {inv_ms:7.1f} ms")
    print(f"  /v1/sessions?limit=100       {sess_ms:7.1f} ms")
    print(f"collector peak RSS while ingesting: {rss:.0f} MB (the largest process of {worker_counts[-1]})")


if __name__ == "__main__":
    asyncio.run(main())
