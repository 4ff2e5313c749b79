"""How long `livekit-metering report` takes on a month of records, from each source.

    .venv/bin/python benchmarks/bench_report.py [--sessions 2000] [--rounds 3]

Each session has 9 records (agent time, STT, two LLM calls with cached input, TTS), like a
short voice call. The records go to a JSON-lines file, a SQLite store (the collector's own
classes) and a running collector on 127.0.0.1; then `run_report` reads, prices and groups them
by day from each source. Reported: the best of ``--rounds`` wall times and records per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from usage_samples import session_records

from livekit_metering.collector.store.base import Stored, open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, batch_body, run_collector, signed_headers
from livekit_metering.export import FileExporter
from livekit_metering.records import MeterRecord
from livekit_metering.report import run_report


def records_for(sessions: int) -> list[MeterRecord]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    first = now - timedelta(days=30)
    out: list[MeterRecord] = []
    for i in range(sessions):
        start = first + timedelta(seconds=i * (29 * 86400 // max(sessions, 1)))
        out += session_records(
            f"AJ_bench{i:06d}",
            start,
            seconds=30 + i % 600,
            room=f"call-{i}",
            agent=("support", "sales")[i % 2],
            customer=f"customer-{i % 40}",
        )
    return out


def timed(rounds: int, **kwargs: Any) -> float:
    best = float("inf")
    args: dict[str, Any] = {
        "path": None,
        "url": None,
        "database": None,
        "group_by": "day",
        "since": None,
        "until": None,
        "fmt": "json",
        "plan": "ship",
        "prices": None,
        "output": None,
        "progress": False,
    }
    args.update(kwargs)
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_report(**args)
        best = min(best, time.perf_counter() - t0)
    return best


async def fill_store(url: str, records: list[MeterRecord]) -> None:
    store = open_store(url)
    await store.open()
    try:
        for i in range(0, len(records), 5000):
            await store.ingest("default", [Stored(r) for r in records[i : i + 5000]])
    finally:
        await store.close()


async def with_collector(db: Path, records: list[MeterRecord], rounds: int) -> float:
    import aiohttp

    async with run_collector(db) as url, aiohttp.ClientSession() as http:
        for i in range(0, len(records), 5000):
            body = batch_body(records[i : i + 5000])
            async with http.post(f"{url}/v1/records", data=body, headers=signed_headers(body)) as resp:
                assert resp.status == 200, await resp.text()
        os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"] = TEST_KEY, TEST_SECRET
        return await asyncio.get_running_loop().run_in_executor(None, lambda: timed(rounds, url=url))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    records = records_for(args.sessions)
    n = len(records)
    print(f"{args.sessions} sessions, {n} records; Python {platform.python_version()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        FileExporter(path).export(records)
        db = Path(tmp) / "store.db"
        asyncio.run(fill_store(f"sqlite:///{db}", records))
        results = {
            "JSON-lines file": timed(args.rounds, path=str(path)),
            "SQLite store (--database)": timed(args.rounds, database=f"sqlite:///{db}"),
            "collector (--url)": asyncio.run(with_collector(Path(tmp) / "collector.db", records, args.rounds)),
        }
    for source, seconds in results.items():
        print(f"{source:28s} {seconds:7.2f} s  {n / seconds:9,.0f} records/s")


if __name__ == "__main__":
    main()
