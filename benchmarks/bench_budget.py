"""Cost of the budget check per record: recording with a session and customer budget against
recording without one, in the same run.

    flock /work/dev/heavy.lock .venv/bin/python benchmarks/bench_budget.py [--records 20000] [--rounds 21]

Each round records ``--records`` usages through a Meter into an in-memory exporter (so the
figure is metering's own work, not the disk's): a session's mix of LLM input/output, TTS, STT
and a running agent-session checkpoint (the same id, replaced), once bare and once with a
BudgetGuard listening (a session cap and a customer cap with its collector figure already read,
caps high enough that nothing fires), alternating so drift hits both alike. It reports the best
time per record of each, the difference (the check's cost per record) and the ratio; also the
check alone (``BudgetGuard.observe`` on prebuilt records).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes import MemoryExporter

from livekit_metering.budgets import BudgetGuard, CustomerSpend
from livekit_metering.meter import Meter
from livekit_metering.pricing import PriceBook
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

T0 = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
LK = {"provider": "livekit"}
MIX = [
    (Resource.LLM_INPUT, 800, {"model": "openai/gpt-4.1-mini", **LK}),
    (Resource.LLM_OUTPUT, 60, {"model": "openai/gpt-4.1-mini", **LK}),
    (Resource.TTS, 120, {"model": "cartesia/sonic-3", **LK}),
    (Resource.STT, 4_000, {"model": "deepgram/nova-3", **LK}),
    # The session's own time: a checkpoint, one id, replaced each time; the guard prices it from the
    # session's running duration (a new figure once a minute), as in a job.
    (Resource.AGENT_SESSION, 15_000, {"meta": {"session_time": True}}),
]
POLICY = get_policy()


def guard(session_id: str) -> BudgetGuard:
    customer = CustomerSpend(
        "http://127.0.0.1:9", customer="acme", session_id=session_id, plan="ship", api_key=None, api_secret=None
    )
    customer.base = Decimal("12.5")
    customer.read_at = float("inf")  # read already: no refresh during the benchmark
    return BudgetGuard(
        book=PriceBook.bundled(),
        plan="ship",
        session_id=session_id,
        session_time=lambda: 15_000,
        policy=POLICY,
        session_cap=Decimal(10**9),
        customer_cap=Decimal(10**9),
        customer=customer,
    )


def record_all(meter: Meter, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        resource, raw, fields = MIX[i % len(MIX)]
        session = resource is Resource.AGENT_SESSION
        meter.record(
            resource,
            raw * (i + 1) if session else raw,
            usage="session" if session else f"u-{i}",
            start=T0,
            end=T0 + timedelta(milliseconds=raw * (i + 1) if session else 0),
            status=Status.CHECKPOINT if session else Status.OK,
            **fields,
        )
    return time.perf_counter() - start


def one_round(n: int, with_budget: bool) -> float:
    meter = Meter(session_id="AJ_bench", exporter=MemoryExporter(), keep_records=False)
    if with_budget:
        meter.on_record(guard("AJ_bench").observe)
    gc.collect()
    gc.disable()
    try:
        return record_all(meter, n)
    finally:
        gc.enable()


def check_alone(records: list[MeterRecord]) -> float:
    g = guard("AJ_bench")
    start = time.perf_counter()
    for record in records:
        g.observe(record)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    n = args.records
    bare, budget, ratios = [], [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        times = {flag: one_round(n, flag) for flag in order}
        bare.append(times[False] / n)
        budget.append(times[True] / n)
        ratios.append(times[True] / times[False])
    sample = Meter(session_id="AJ_bench", exporter=MemoryExporter())
    record_all(sample, n)
    records = sample.records
    alone = min(check_alone(records) / len(records) for _ in range(args.rounds))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{n} records per round, {args.rounds} rounds (best of each; median ratio over the rounds)")
    print(f"  recording without a budget : {min(bare) * 1e6:7.2f} µs a record")
    print(f"  recording with both budgets: {min(budget) * 1e6:7.2f} µs a record")
    print(f"  the check's cost           : {(min(budget) - min(bare)) * 1e6:7.2f} µs a record")
    print(f"  ratio (best)               : ×{min(budget) / min(bare):.3f}; median ×{statistics.median(ratios):.3f}")
    print(f"  BudgetGuard.observe alone  : {alone * 1e6:7.2f} µs a record ({len(records)} distinct records)")


if __name__ == "__main__":
    main()
