"""Cost of session metering: per job in the real job runner, per checkpoint, and at session end.

    .venv/bin/python benchmarks/bench_session.py [--jobs 200] [--checkpoints 2000]

* per job: the same entrypoint (connect, then ctx.shutdown) run through livekit-agents' real job
  runner (``_JobProc``, offline, tests/harness/jobproc.py), bare and under ``metered`` with a
  JSON-lines file, alternating. The difference of the medians is what metering adds to a job:
  the hooks, the connect/end checkpoints and final record on disk, the summary priced with the
  bundled price book, the cost log line and the exporter shutdown.
* per checkpoint: ``SessionMeter.checkpoint()`` writing to a JSON-lines file (append + flush).
* at session end: ``finish()`` plus ``summarize()`` (priced, price book already loaded) for a session
  with 40 model usages, and the first price book load of a process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.jobproc import FakeRoom, run_job

from livekit_metering.costlog import _price_book, summarize
from livekit_metering.entrypoint import metered
from livekit_metering.export.file import FileExporter
from livekit_metering.records import Resource
from livekit_metering.session import SessionMeter


async def entry(ctx: Any) -> None:
    await ctx.connect()
    ctx.shutdown("done")


async def per_job(jobs: int, tmp: Path) -> tuple[float, float]:
    wrapped = metered(entry, file=tmp / "jobs.jsonl")
    bare: list[float] = []
    metered_times: list[float] = []
    for i in range(jobs):
        for fn, out in (
            ((entry, bare), (wrapped, metered_times)) if i % 2 else ((wrapped, metered_times), (entry, bare))
        ):
            gc.collect()
            start = time.perf_counter()
            await run_job(fn, room=FakeRoom())
            out.append(time.perf_counter() - start)
    return statistics.median(bare), statistics.median(metered_times)


def per_checkpoint(count: int, tmp: Path) -> tuple[float, float]:
    meter = SessionMeter(session_id="AJ_bench", exporter=FileExporter(tmp / "cp.jsonl"), room="r", worker_id="W")
    meter.connected()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        meter.checkpoint()
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def first_price_book_load() -> float:
    _price_book.cache_clear()
    start = time.perf_counter()
    _price_book(None)
    return time.perf_counter() - start


def at_session_end(rounds: int, tmp: Path) -> float:
    now = datetime.now(timezone.utc)
    times = []
    for i in range(rounds):
        meter = SessionMeter(session_id=f"AJ_{i}", exporter=FileExporter(tmp / "end.jsonl"), room="r")
        meter.connected()
        for n in range(10):
            usage = meter.next_usage("llm")
            meter.record(Resource.LLM_INPUT, 900, usage=usage, start=now, end=now, model="openai/gpt-4.1-mini")
            meter.record(Resource.LLM_OUTPUT, 60, usage=usage, start=now, end=now, model="openai/gpt-4.1-mini")
            meter.record(Resource.STT, 4000, usage=f"stt-{n}", start=now, end=now, model="deepgram/nova-3")
            meter.record(Resource.TTS, 80, usage=f"tts-{n}", start=now, end=now, model="cartesia/sonic-2")
        start = time.perf_counter()
        meter.finish()
        summarize(meter.records, session_id=meter.session_id)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=2000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the runner's and the cost line's logging is not what is measured
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        first_load = first_price_book_load()
        bare, with_metering = await per_job(args.jobs, tmp)
        cp_median, cp_p99 = per_checkpoint(args.checkpoints, tmp)
        end_median = at_session_end(50, tmp)
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"job in the real runner, bare:         {bare * 1e3:7.2f} ms (median of {args.jobs})")
    print(f"job in the real runner, metered:      {with_metering * 1e3:7.2f} ms")
    print(f"  metering adds per job:              {(with_metering - bare) * 1e3:7.2f} ms")
    print(f"checkpoint to a JSON-lines file:      {cp_median * 1e6:7.1f} us median, {cp_p99 * 1e6:.1f} us p99")
    print(f"session end (final + priced summary): {end_median * 1e3:7.2f} ms median (40 model usages)")
    print(f"first price book load in a process:   {first_load * 1e3:7.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
