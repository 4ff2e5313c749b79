"""How fast the price book prices records and previews an invoice.

Run: .venv/bin/python benchmarks/bench_pricing.py [sessions]   (default 10,000 sessions, ~100k records)
Prints records per second for cost() and invoice() over a month of realistic voice-agent usage.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

from livekit_metering.pricing import PriceBook
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, record_id

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
USAGE = [
    (Resource.AGENT_SESSION, 310_000, ""),
    (Resource.CONNECTION, 310_000, ""),
    (Resource.STT, 300_000, "deepgram/nova-3"),
    (Resource.LLM_INPUT, 15_000, "openai/gpt-4.1-mini"),
    (Resource.LLM_INPUT_CACHED, 5_000, "openai/gpt-4.1-mini"),
    (Resource.LLM_OUTPUT, 900, "openai/gpt-4.1-mini"),
    (Resource.TTS, 3_000, "cartesia/sonic-3"),
    (Resource.DATA_TRANSFER, 249_999_999, ""),
    (Resource.OBSERVABILITY_EVENT, 500, ""),
    (Resource.RECORDED_AUDIO, 310_000, ""),
]


def month(sessions: int) -> list[MeterRecord]:
    policy = get_policy()
    out = []
    for n in range(sessions):
        at = START + timedelta(seconds=200 * n)
        for resource, raw, model in USAGE:
            extra = {"model": model, "provider": "livekit"} if model else {}
            out.append(
                policy.record(
                    id=record_id(f"job-{n}", "u", resource),
                    session_id=f"job-{n}",
                    resource=resource,
                    raw=raw,
                    start=at,
                    end=at,
                    **extra,
                )
            )
    return out


def main() -> None:
    sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    records = month(sessions)
    book = PriceBook.bundled()
    for name, run in (
        ("cost", lambda: book.cost(records, "ship")),
        ("invoice", lambda: book.invoice(records, plan="ship", month="2026-11")),
    ):
        began = time.perf_counter()
        result = run()
        took = time.perf_counter() - began
        total = getattr(result, "total", None)
        rate = len(records) / took
        print(f"{name:8s} {len(records):>8,d} records  {took:6.2f} s  {rate:>10,.0f} records/s  total={total}")


if __name__ == "__main__":
    main()
