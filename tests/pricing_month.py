"""A realistic month of Ship-plan usage (November 2026), shared by the invoice and CLI tests.

Every figure below is chosen so the hand calculation in ``SHIP_NOVEMBER_LINES`` is easy to follow.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status, record_id

POLICY = get_policy("minute-increments")
MONTH_START = datetime(2026, 11, 1, tzinfo=timezone.utc)
SESSIONS = 1200


def rec(
    session: str,
    usage: str,
    resource: Resource,
    raw: int,
    at: datetime,
    *,
    status: Status = Status.OK,
    policy: str = "minute-increments",
    **fields: Any,
) -> MeterRecord:
    return get_policy(policy).record(
        id=record_id(session, usage, resource),
        session_id=session,
        resource=resource,
        raw=raw,
        start=at,
        end=at + timedelta(milliseconds=raw if resource in _TIMED else 0),
        status=status,
        **fields,
    )


_TIMED = {
    Resource.AGENT_SESSION,
    Resource.CONNECTION,
    Resource.STT,
    Resource.RECORDED_AUDIO,
    Resource.SIP_INBOUND,
    Resource.TRACK_EGRESS,
    Resource.VOICE_ISOLATION,
}

LK = {"provider": "livekit"}


def ship_month() -> list[MeterRecord]:
    """1,200 voice-agent sessions in November 2026 plus phone numbers, SIP calls, egress and noise."""
    records: list[MeterRecord] = []
    for n in range(SESSIONS):
        sid = f"job-{n:04d}"
        at = MONTH_START + timedelta(minutes=30 * n)  # spread over the month: 1,200 x 30 min = 25 days
        records += [
            rec(sid, "session", Resource.AGENT_SESSION, 310_000, at),  # 5 min 10 s -> 6 min
            rec(sid, "user", Resource.CONNECTION, 310_000, at),  # 6 min
            rec(sid, "stt-1", Resource.STT, 300_000, at, model="deepgram/nova-3", **LK),  # 300 s
            rec(sid, "llm-1", Resource.LLM_INPUT, 15_000, at, model="openai/gpt-4.1-mini", **LK),
            rec(sid, "llm-1", Resource.LLM_INPUT_CACHED, 5_000, at, model="openai/gpt-4.1-mini", **LK),
            rec(sid, "llm-1", Resource.LLM_OUTPUT, 900, at, model="openai/gpt-4.1-mini", **LK),
            rec(sid, "tts-1", Resource.TTS, 3_000, at, model="cartesia/sonic-3:voice-abc", **LK),
            rec(sid, "data", Resource.DATA_TRANSFER, 249_999_999, at),  # rounds up to 0.25 GB
            rec(sid, "obs", Resource.OBSERVABILITY_EVENT, 500, at),
            rec(sid, "recording", Resource.RECORDED_AUDIO, 310_000, at),  # 6 min
        ]
    # A model the price book does not know: reported as unpriced, never $0.
    for n in range(10):
        at = MONTH_START + timedelta(days=3, minutes=n)
        records.append(rec(f"job-x{n}", "llm-1", Resource.LLM_OUTPUT, 1_000, at, model="openai/gpt-5.1", **LK))
    # A direct Deepgram plugin: billed by Deepgram, not LiveKit.
    records.append(rec("job-direct", "stt-1", Resource.STT, 120_000, MONTH_START, provider="deepgram", model="nova-3"))
    # Three US local numbers for the month; 300 inbound calls of 61 s (2 min each).
    for n in range(3):
        records.append(rec(f"number-{n}", "rental", Resource.PHONE_NUMBER, 1, MONTH_START))
    for n in range(300):
        records.append(rec(f"call-{n}", "sip", Resource.SIP_INBOUND, 61_000, MONTH_START + timedelta(hours=n)))
    # Track egress: five 121-minute recordings = 605 min, 5 past the 600 included.
    for n in range(5):
        at = MONTH_START + timedelta(days=n)
        records.append(rec(f"egress-{n}", "egress", Resource.TRACK_EGRESS, 121 * 60_000, at))
    # Outside the month: never on November's invoice.
    records.append(rec("job-oct", "session", Resource.AGENT_SESSION, 600_000, MONTH_START - timedelta(seconds=1)))
    december = datetime(2026, 12, 1, tzinfo=timezone.utc)
    records.append(rec("job-dec", "session", Resource.AGENT_SESSION, 600_000, december))
    # A session still open at export time: its checkpoint counts until a final form arrives.
    records.append(rec("job-open", "session", Resource.AGENT_SESSION, 60_000, MONTH_START, status=Status.CHECKPOINT))
    # A checkpoint later replaced by the final form: only the final 6 minutes count, not 1 + 6.
    records.append(rec("job-0000", "session", Resource.AGENT_SESSION, 30_000, MONTH_START, status=Status.CHECKPOINT))
    return records


# The hand calculation, line by line (resource, model) -> (quantity, included, billable, amount).
# Agent session: 1,200 x 6 min = 7,200 min + 1 min (open checkpoint) = 7,201; 5,000 included;
#   2,201 x $0.01 = $22.01.
# Connection: 1,200 x 6 min = 7,200 min, all within 150,000 included: $0.00.
# Data transfer: 1,200 x 0.25 GB = 300 GB; 250 included; 50 x $0.12 = $6.00.
# Observability events: 1,200 x 500 = 600,000; 500,000 included; 100,000 x $0.00003 = $3.00.
# Recorded audio: 7,200 min; 5,000 included; 2,200 x $0.005 = $11.00.
# Track egress: 605 min; 600 included; 5 x $0.001 = $0.005 -> $0.01 (half-up, not half-even).
# Phone numbers: 3 number-months; 1 included; 2 x $1.00 = $2.00.
# SIP inbound: 300 x 2 min = 600 min; 100 included; 500 x $0.01 = $5.00.
# STT deepgram/nova-3: 1,200 x 300 s = 360,000 s = 6,000 min x $0.0048 = $28.80.
# LLM gpt-4.1-mini input: 18,000,000 tokens x $0.40/M = $7.20.
# LLM gpt-4.1-mini cached input: 6,000,000 x $0.10/M = $0.60.
# LLM gpt-4.1-mini output: 1,080,000 x $1.60/M = $1.728 -> $1.73.
# TTS cartesia/sonic-3: 3,600,000 characters x $50/M = $180.00.
# Inference total 28.80 + 7.20 + 0.60 + 1.73 + 180.00 = $218.33; credits -$5.00.
# openai/gpt-5.1 output: 10,000 tokens, unpriced (no amount, listed).
# Total: 50.00 + 22.01 + 0.00 + 6.00 + 3.00 + 11.00 + 0.01 + 2.00 + 5.00 + 218.33 - 5.00 = $312.35.
D = Decimal
SHIP_NOVEMBER_LINES: list[tuple[str, str, str, D, D, D, D | None]] = [
    # resource, model, unit, quantity, included, billable, amount
    ("plan_fee", "", "month", D(1), D(0), D(1), D("50.00")),
    ("agent_session", "", "minute", D(7201), D(5000), D(2201), D("22.01")),
    ("connection", "", "minute", D(7200), D(7200), D(0), D("0.00")),
    ("data_transfer", "", "gb", D(300), D(250), D(50), D("6.00")),
    ("observability_event", "", "event", D(600_000), D(500_000), D(100_000), D("3.00")),
    ("recorded_audio", "", "minute", D(7200), D(5000), D(2200), D("11.00")),
    ("sip_inbound", "", "minute", D(600), D(100), D(500), D("5.00")),
    ("track_egress", "", "minute", D(605), D(600), D(5), D("0.01")),
    ("phone_number", "", "number_month", D(3), D(1), D(2), D("2.00")),
    ("tts", "cartesia/sonic-3", "character", D(3_600_000), D(0), D(3_600_000), D("180.00")),
    ("stt", "deepgram/nova-3", "minute", D(6000), D(0), D(6000), D("28.80")),
    ("llm_input", "openai/gpt-4.1-mini", "token", D(18_000_000), D(0), D(18_000_000), D("7.20")),
    ("llm_input_cached", "openai/gpt-4.1-mini", "token", D(6_000_000), D(0), D(6_000_000), D("0.60")),
    ("llm_output", "openai/gpt-4.1-mini", "token", D(1_080_000), D(0), D(1_080_000), D("1.73")),
    ("llm_output", "openai/gpt-5.1", "token", D(10_000), D(0), D(10_000), None),
    ("inference_credits", "", "usd", D("218.33"), D(5), D("213.33"), D("-5.00")),
]
SHIP_NOVEMBER_TOTAL = D("312.35")
