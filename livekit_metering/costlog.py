"""The cost of one session, summed from its records, and the one log line that shows it.

``summarize`` is a pure function of the records (plus a price book); ``log_summary`` writes one
INFO line on the ``livekit_metering`` logger in key=value form, readable by people and parsable by
log tools, with the full summary attached as ``extra={"livekit_metering": {...}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from .records import REALTIME_RESOURCES, UNIT_SIZE, MeterRecord, Resource, Unit, latest_forms

__all__ = ["SessionSummary", "cost_line", "log_summary", "summarize"]

logger = logging.getLogger("livekit_metering")

Money = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]
_MINUTE_MS = UNIT_SIZE[Unit.MINUTE]


class SessionSummary(BaseModel):
    """What one finished session used and cost.

    ``cost`` is the cost of the priced parts; ``unpriced`` lists the models the price book does not
    know (never counted as $0). ``cost`` is None when no price book could be used at all.
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    room: str = ""
    agent_name: str = ""
    customer: str = ""
    end_cause: str | None = None
    connected: bool = False
    duration_ms: int = 0
    billed_minutes: Money = Decimal(0)
    stt_seconds: Money = Decimal(0)
    llm_input_tokens: int = 0  # uncached
    llm_cached_tokens: int = 0
    llm_output_tokens: int = 0
    tts_characters: int = 0
    # the room around the agent (see hosting.py, room.py, observability.py, voice_isolation.py)
    hosting: str | None = None
    connection_minutes: Money = Decimal(0)  # the agent's own WebRTC minutes when not deployed to LiveKit Cloud
    sip_minutes: Money = Decimal(0)
    data_gb: Money = Decimal(0)
    observability_events: int = 0
    recorded_audio_minutes: Money = Decimal(0)
    voice_isolation_minutes: Money = Decimal(0)
    # realtime models and their transcription, by resource name (realtime_input_audio, ...):
    # billable tokens, or seconds for realtime_session
    realtime: dict[str, Money] = Field(default_factory=dict)
    cost: Money | None = None
    unpriced: list[str] = Field(default_factory=list)
    plan: str = "ship"
    price_date: str | None = None

    @property
    def duration_seconds(self) -> Decimal:
        return Decimal(self.duration_ms) / 1000


def summarize(
    records: Iterable[MeterRecord],
    *,
    session_id: str,
    plan: str = "ship",
    prices: str | Path | None = None,
    price: bool = True,
) -> SessionSummary:
    """Sum a session's records (latest form of each usage) and price them with the price book."""
    records = latest_forms(records)
    fields: dict[str, Any] = {"session_id": session_id, "plan": plan}
    billed_ms = 0
    stt_ms = 0
    room: dict[str, Decimal] = {}
    for record in records:
        fields.setdefault("room", record.room)
        fields.setdefault("agent_name", record.agent_name)
        if record.customer:
            fields["customer"] = record.customer
        billable_ms = int(record.quantity * UNIT_SIZE[record.unit]) if record.unit in (Unit.MINUTE, Unit.SECOND) else 0
        if record.resource is Resource.AGENT_SESSION or record.meta.get("session_time") is True:
            fields["connected"] = True
            fields["duration_ms"] = fields.get("duration_ms", 0) + record.raw
            if record.resource is Resource.AGENT_SESSION:
                billed_ms += billable_ms
            cause = record.meta.get("end_cause")
            if isinstance(cause, str):
                fields["end_cause"] = cause
            hosting = record.meta.get("hosting")
            if isinstance(hosting, str):
                fields["hosting"] = hosting
        if record.resource in _ROOM_FIELDS:
            name = _ROOM_FIELDS[record.resource]
            room[name] = room.get(name, Decimal(0)) + record.quantity
        elif record.resource is Resource.STT:
            stt_ms += billable_ms
        elif record.resource is Resource.LLM_INPUT:
            fields["llm_input_tokens"] = fields.get("llm_input_tokens", 0) + record.raw
        elif record.resource is Resource.LLM_INPUT_CACHED:
            fields["llm_cached_tokens"] = fields.get("llm_cached_tokens", 0) + record.raw
        elif record.resource is Resource.LLM_OUTPUT:
            fields["llm_output_tokens"] = fields.get("llm_output_tokens", 0) + record.raw
        elif record.resource is Resource.TTS:
            fields["tts_characters"] = fields.get("tts_characters", 0) + record.raw
        elif record.resource in REALTIME_RESOURCES:
            realtime = fields.setdefault("realtime", {})
            realtime[record.resource.value] = realtime.get(record.resource.value, Decimal(0)) + record.quantity
    for name, quantity in room.items():
        fields[name] = int(quantity) if name == "observability_events" else quantity.normalize()
    fields["billed_minutes"] = _exact_or_rounded(Decimal(billed_ms) / _MINUTE_MS)
    fields["stt_seconds"] = Decimal(stt_ms) / 1000
    if price:
        fields.update(_price(records, plan=plan, prices=prices))
    return SessionSummary(**fields)


# Billable quantities (already rounded per usage) summed per resource of the room.
_ROOM_FIELDS: dict[Resource, str] = {
    Resource.CONNECTION: "connection_minutes",
    Resource.SIP_INBOUND: "sip_minutes",
    Resource.SIP_INBOUND_TOLL_FREE: "sip_minutes",
    Resource.SIP_TRUNK: "sip_minutes",
    Resource.DATA_TRANSFER: "data_gb",
    Resource.OBSERVABILITY_EVENT: "observability_events",
    Resource.RECORDED_AUDIO: "recorded_audio_minutes",
    Resource.VOICE_ISOLATION: "voice_isolation_minutes",
}


def _exact_or_rounded(value: Decimal) -> Decimal:
    # Minute policies give whole minutes; per-second policies give fractions like 70/60, shown to 0.001 min.
    rounded = value.quantize(Decimal("0.001"))
    return value.normalize() if rounded == value else rounded


def _price(records: list[MeterRecord], *, plan: str, prices: str | Path | None) -> dict[str, Any]:
    try:
        from .pricing import PriceBook  # pricing is optional at import time: the log line works without it

        book = PriceBook.of(prices)
        report = book.cost(records, plan=plan)
    except Exception as exc:
        logger.warning("livekit-metering could not price the session (%s: %s)", type(exc).__name__, exc)
        return {}
    return {
        "cost": Decimal(report.total),
        "unpriced": sorted(str(model) for model in report.unpriced),
        "price_date": report.price_date.isoformat(),
    }


def _money(value: Decimal) -> str:
    # Small model costs matter (fractions of a cent), so keep six places, but no trailing noise.
    text = format(value.quantize(Decimal("0.000001")).normalize(), "f")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _value(text: str) -> str:
    # key=value stays parsable: quote a value with spaces, quotes or "=" (logfmt style).
    return json.dumps(text) if not text or any(c in text for c in ' "=') else text


def cost_line(summary: SessionSummary) -> str:
    """The readable key=value line for one session."""
    parts = [f"session {summary.session_id}"]
    if summary.room:
        parts.append(f"room={_value(summary.room)}")
    if summary.agent_name:
        parts.append(f"agent={_value(summary.agent_name)}")
    if summary.customer:
        parts.append(f"customer={_value(summary.customer)}")
    if summary.connected:
        parts.append(f"ended={summary.end_cause or 'open'}")
        parts.append(f"duration={format(summary.duration_seconds, 'f')}s")
    else:
        parts.append("connected=no")
    parts += [
        f"billed_minutes={format(summary.billed_minutes, 'f')}",
        f"stt_seconds={format(summary.stt_seconds.normalize(), 'f')}",
        f"llm_tokens_in={summary.llm_input_tokens}",
        f"llm_tokens_cached={summary.llm_cached_tokens}",
        f"llm_tokens_out={summary.llm_output_tokens}",
        f"tts_chars={summary.tts_characters}",
    ]
    for name in sorted(summary.realtime, key=[r.value for r in Resource].index):
        key = f"{name}_seconds" if name == Resource.REALTIME_SESSION.value else name
        parts.append(f"{key}={format(summary.realtime[name].normalize(), 'f')}")
    # The room's usage, where there is some (so a plain session's line stays as short as it was).
    for name in _ROOM_FIELDS.values():
        value = getattr(summary, name)
        key = f"{name}={value if isinstance(value, int) else format(value, 'f')}"
        if value and key not in parts:
            parts.append(key)
    if summary.hosting:
        parts.append(f"hosting={summary.hosting}")
    parts.append(f"cost={_money(summary.cost)}" if summary.cost is not None else "cost=unknown")
    if summary.unpriced:
        parts.append(f"unpriced={_value(','.join(summary.unpriced))}")
    parts.append(f"plan={summary.plan}")
    parts.append(f"prices={summary.price_date or 'unknown'}")
    return " ".join(parts)


def log_summary(summary: SessionSummary) -> None:
    logger.info(
        "%s",
        cost_line(summary),
        extra={"livekit_metering": summary.model_dump(mode="json")},
    )
