"""Realistic meter records for report, preview and dashboard tests: a month of voice-agent sessions.

Built with the real rate policy, so every record is rounded exactly as a live agent's would be.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from livekit_metering import MeterRecord, Resource, Status, get_policy, record_id

STT_MODEL = "deepgram/nova-3"
LLM_MODEL = "openai/gpt-4.1-mini"
TTS_MODEL = "cartesia/sonic-3"
UNPRICED_MODEL = "acme/house-llm"

# List prices per billing unit, written out by hand from LiveKit's published prices (and the bundled
# book's rows): the expected figures below never come from the code under test.
SHIP_PRICES: dict[tuple[str, str], Decimal] = {
    ("agent_session", ""): Decimal("0.01"),  # a minute
    ("stt", "deepgram/nova-3"): Decimal("0.0048") / 60,  # $0.0048 a minute, billed per second
    ("llm_input", "openai/gpt-4.1-mini"): Decimal("0.40") / 1_000_000,  # a token
    ("llm_input_cached", "openai/gpt-4.1-mini"): Decimal("0.10") / 1_000_000,
    ("llm_output", "openai/gpt-4.1-mini"): Decimal("1.60") / 1_000_000,
    ("tts", "cartesia/sonic-3"): Decimal("50") / 1_000_000,  # a character
}
# Scale: its own STT and TTS prices; Build: platform minutes within hard caps cost nothing.
PLAN_PRICES = {
    "ship": SHIP_PRICES,
    "scale": {
        **SHIP_PRICES,
        ("stt", "deepgram/nova-3"): Decimal("0.0042") / 60,
        ("tts", "cartesia/sonic-3"): Decimal("37.50") / 1_000_000,
    },
    "build": {**SHIP_PRICES, ("agent_session", ""): Decimal(0)},
}


# Nova-3 was $0.0077 a minute ($0.0065 on Scale) before LiveKit's price change of 2026-09-21.
NOVA3_BEFORE = {"ship": Decimal("0.0077") / 60, "scale": Decimal("0.0065") / 60, "build": Decimal("0.0077") / 60}
NOVA3_CHANGE = datetime(2026, 9, 21, tzinfo=timezone.utc)


def hand_cost(record: MeterRecord, plan: str = "ship") -> Decimal | None:
    """A record's list cost from the hand-written prices, None for a model without one."""
    key = (record.resource.value, record.model)
    price = PLAN_PRICES[plan].get(key)
    if key == ("stt", "deepgram/nova-3") and record.start < NOVA3_CHANGE:
        price = NOVA3_BEFORE[plan]
    return None if price is None else record.quantity * price


def session_records(
    session_id: str,
    start: datetime,
    seconds: float,
    *,
    room: str,
    agent: str,
    customer: str,
    llm_model: str = LLM_MODEL,
    checkpoint: bool = False,
) -> list[MeterRecord]:
    """One session: agent time, STT seconds, two LLM calls (with cached input) and TTS characters.

    With ``checkpoint``, the agent-session record comes first as a running checkpoint at half time,
    then in its final form with the same id (what a file or the outbox carries).
    """
    policy = get_policy()
    ms = int(seconds * 1000)
    end = start + timedelta(milliseconds=ms)
    common = {"room": room, "room_sid": f"RM_{room}", "agent_name": agent, "customer": customer}
    out: list[MeterRecord] = []

    def add(resource: Resource, raw: int, usage: str, status: Status = Status.OK, **fields: object) -> None:
        out.append(
            policy.record(
                id=record_id(session_id, usage, resource),
                session_id=session_id,
                resource=resource,
                raw=raw,
                start=start,
                end=end if status is not Status.CHECKPOINT else start + timedelta(milliseconds=ms // 2),
                status=status,
                **common,
                **fields,
            )
        )

    if checkpoint:
        add(Resource.AGENT_SESSION, ms // 2, "session", Status.CHECKPOINT, meta={"checkpoint": 1})
    add(Resource.AGENT_SESSION, ms, "session", meta={"closed_by": "room disconnected"})
    add(Resource.STT, ms + 2000, "stt-1", model=STT_MODEL, provider="livekit")
    scale = max(1, int(seconds // 10))
    for n in (1, 2):
        usage = f"llm-{n}"
        add(Resource.LLM_INPUT, 900 * scale + 37 * n, usage, model=llm_model, provider="livekit")
        add(Resource.LLM_INPUT_CACHED, 400 * scale, usage, model=llm_model, provider="livekit")
        add(Resource.LLM_OUTPUT, 60 * scale + 11 * n, usage, model=llm_model, provider="livekit")
    add(Resource.TTS, 350 * scale + 13, "tts-1", model=TTS_MODEL, provider="livekit")
    return out


def month_of_sessions(month_start: datetime, *, unpriced: bool = True) -> list[MeterRecord]:
    """Twelve sessions spread over a month: three customers, two agents, one session on an unpriced model."""
    assert month_start.tzinfo is not None
    records: list[MeterRecord] = []
    customers = ("acme", "globex", "initech")
    for i in range(12):
        start = month_start + timedelta(days=(i * 5) % 26, hours=9 + i % 8, minutes=7 * i % 60, seconds=13)
        records += session_records(
            f"AJ_{i:03d}demo",
            start,
            seconds=45 + 71 * i,  # 45 s .. 826 s: every session lands in a different number of minutes
            room=f"call-{i:03d}",
            agent="support" if i % 3 else "sales",
            customer=customers[i % 3],
            llm_model=UNPRICED_MODEL if (unpriced and i == 7) else LLM_MODEL,
        )
    return records


def this_month() -> datetime:
    now = datetime.now(timezone.utc)
    return datetime(now.year, now.month, 1, tzinfo=timezone.utc)


def spread_sessions(lo: datetime, hi: datetime, count: int, *, open_last: bool = True) -> list[MeterRecord]:
    """``count`` sessions with start times spread between ``lo`` and ``hi`` (busier mid-week, varied lengths).

    With ``open_last`` the newest session is still running: its agent-session record is a checkpoint.
    """
    span = (hi - lo).total_seconds() - 900
    assert span > 0, "the window must leave room for a 15-minute session"
    customers = ("acme", "globex", "initech", "umbrella")
    records: list[MeterRecord] = []
    for i in range(count):
        # A deterministic, irregular spread: golden-ratio steps over the window.
        start = lo + timedelta(seconds=int(span * ((i * 0.618034) % 1.0)))
        last = i == count - 1
        if last and open_last:
            start = lo + timedelta(seconds=int(span))
        session = session_records(
            f"AJ_{i:03d}{'live' if last and open_last else 'done'}",
            start,
            seconds=40 + (i * 137) % 780,
            room=f"call-{i:03d}",
            agent=("support", "sales", "support", "booking")[i % 4],
            customer=customers[(i * 7) % 4],
            llm_model=UNPRICED_MODEL if i == 5 else LLM_MODEL,
            checkpoint=last and open_last,
        )
        if last and open_last:
            session = [r for r in session if r.is_final and r.resource is not Resource.AGENT_SESSION] + [session[0]]
        records += session
    return records
