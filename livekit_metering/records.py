"""The meter record: one individual usage, measured, rounded and ready to price.

Its JSON form is the wire format of the whole project (files, outbox, collector). Amounts are
integers (``raw``, in base units) or decimal strings (``quantity``), never binary floats.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from collections.abc import Iterable
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "MAX_RAW",
    "REALTIME_RESOURCES",
    "RESOURCE_BASE_UNIT",
    "UNIT_BASE",
    "UNIT_SIZE",
    "BaseUnit",
    "InvalidRecord",
    "MeterRecord",
    "Resource",
    "Status",
    "Unit",
    "latest_forms",
    "parse_utc",
    "participant_usage_id",
    "record_id",
    "rfc3339",
    "sip_call_id",
]


class Resource(str, Enum):
    """What was used. Values are the wire names."""

    AGENT_SESSION = "agent_session"
    CONNECTION = "connection"  # WebRTC participant minutes
    DATA_TRANSFER = "data_transfer"  # downstream bytes
    STT = "stt"
    LLM_INPUT = "llm_input"  # uncached input tokens only
    LLM_INPUT_CACHED = "llm_input_cached"
    LLM_OUTPUT = "llm_output"
    TTS = "tts"
    OBSERVABILITY_EVENT = "observability_event"
    RECORDED_AUDIO = "recorded_audio"
    SIP_INBOUND = "sip_inbound"  # LiveKit Phone Numbers, US local inbound
    SIP_INBOUND_TOLL_FREE = "sip_inbound_toll_free"
    SIP_TRUNK = "sip_trunk"  # third-party SIP trunk minutes
    TRANSCODE = "transcode"  # recording / export, video
    TRANSCODE_AUDIO = "transcode_audio"  # recording / export, audio only
    TRACK_EGRESS = "track_egress"
    STREAM_IMPORT = "stream_import"
    VOICE_ISOLATION = "voice_isolation"
    PHONE_NUMBER = "phone_number"  # US local number-months
    PHONE_NUMBER_TOLL_FREE = "phone_number_toll_free"
    # Realtime (speech-to-speech) models: tokens per response by modality, uncached and cached
    # apart (each input token counted once), and the session's connection time for models billed by time
    REALTIME_INPUT_TEXT = "realtime_input_text"
    REALTIME_INPUT_AUDIO = "realtime_input_audio"
    REALTIME_INPUT_IMAGE = "realtime_input_image"
    REALTIME_INPUT_CACHED_TEXT = "realtime_input_cached_text"
    REALTIME_INPUT_CACHED_AUDIO = "realtime_input_cached_audio"
    REALTIME_INPUT_CACHED_IMAGE = "realtime_input_cached_image"
    REALTIME_OUTPUT_TEXT = "realtime_output_text"
    REALTIME_OUTPUT_AUDIO = "realtime_output_audio"
    REALTIME_SESSION = "realtime_session"
    TRANSCRIPTION_INPUT = "transcription_input"  # input-audio transcription billed apart, by tokens
    TRANSCRIPTION_OUTPUT = "transcription_output"


# what a realtime (speech-to-speech) model's usage is recorded as
REALTIME_RESOURCES = frozenset(r for r in Resource if r.name.startswith(("REALTIME_", "TRANSCRIPTION_")))


class BaseUnit(str, Enum):
    """The unit ``raw`` is measured in: always an integer count of it."""

    MILLISECOND = "ms"
    BYTE = "byte"
    TOKEN = "token"
    CHARACTER = "character"
    EVENT = "event"
    NUMBER_MONTH = "number_month"


class Unit(str, Enum):
    """The billing unit ``quantity`` is expressed in."""

    MINUTE = "minute"
    SECOND = "second"
    GB = "gb"
    TOKEN = "token"
    CHARACTER = "character"
    EVENT = "event"
    NUMBER_MONTH = "number_month"


class Status(str, Enum):
    OK = "ok"
    CANCELLED = "cancelled"
    ERROR = "error"
    ESTIMATED = "estimated"  # no provider figure arrived; meta["estimate"] says how
    CHECKPOINT = "checkpoint"  # a running figure for a usage still open; superseded by its final form


_TIME = BaseUnit.MILLISECOND
RESOURCE_BASE_UNIT: dict[Resource, BaseUnit] = {
    Resource.AGENT_SESSION: _TIME,
    Resource.CONNECTION: _TIME,
    Resource.DATA_TRANSFER: BaseUnit.BYTE,
    Resource.STT: _TIME,
    Resource.LLM_INPUT: BaseUnit.TOKEN,
    Resource.LLM_INPUT_CACHED: BaseUnit.TOKEN,
    Resource.LLM_OUTPUT: BaseUnit.TOKEN,
    Resource.TTS: BaseUnit.CHARACTER,
    Resource.OBSERVABILITY_EVENT: BaseUnit.EVENT,
    Resource.RECORDED_AUDIO: _TIME,
    Resource.SIP_INBOUND: _TIME,
    Resource.SIP_INBOUND_TOLL_FREE: _TIME,
    Resource.SIP_TRUNK: _TIME,
    Resource.TRANSCODE: _TIME,
    Resource.TRANSCODE_AUDIO: _TIME,
    Resource.TRACK_EGRESS: _TIME,
    Resource.STREAM_IMPORT: _TIME,
    Resource.VOICE_ISOLATION: _TIME,
    Resource.PHONE_NUMBER: BaseUnit.NUMBER_MONTH,
    Resource.PHONE_NUMBER_TOLL_FREE: BaseUnit.NUMBER_MONTH,
    Resource.REALTIME_INPUT_TEXT: BaseUnit.TOKEN,
    Resource.REALTIME_INPUT_AUDIO: BaseUnit.TOKEN,
    Resource.REALTIME_INPUT_IMAGE: BaseUnit.TOKEN,
    Resource.REALTIME_INPUT_CACHED_TEXT: BaseUnit.TOKEN,
    Resource.REALTIME_INPUT_CACHED_AUDIO: BaseUnit.TOKEN,
    Resource.REALTIME_INPUT_CACHED_IMAGE: BaseUnit.TOKEN,
    Resource.REALTIME_OUTPUT_TEXT: BaseUnit.TOKEN,
    Resource.REALTIME_OUTPUT_AUDIO: BaseUnit.TOKEN,
    Resource.REALTIME_SESSION: _TIME,
    Resource.TRANSCRIPTION_INPUT: BaseUnit.TOKEN,
    Resource.TRANSCRIPTION_OUTPUT: BaseUnit.TOKEN,
}

# How many base units one billing unit holds. 1 GB is 10^9 bytes (LiveKit's billing docs: 1 GB = 1000 MB).
UNIT_BASE: dict[Unit, BaseUnit] = {
    Unit.MINUTE: _TIME,
    Unit.SECOND: _TIME,
    Unit.GB: BaseUnit.BYTE,
    Unit.TOKEN: BaseUnit.TOKEN,
    Unit.CHARACTER: BaseUnit.CHARACTER,
    Unit.EVENT: BaseUnit.EVENT,
    Unit.NUMBER_MONTH: BaseUnit.NUMBER_MONTH,
}
UNIT_SIZE: dict[Unit, int] = {
    Unit.MINUTE: 60_000,
    Unit.SECOND: 1_000,
    Unit.GB: 1_000_000_000,
    Unit.TOKEN: 1,
    Unit.CHARACTER: 1,
    Unit.EVENT: 1,
    Unit.NUMBER_MONTH: 1,
}


# The largest amount one record carries, in base units (10**18 ms is 31 million years, 10**18 bytes an
# exabyte): every figure derived from a record is then an exact 64-bit integer, and no conversion of a
# number a client sends costs more than microseconds.
MAX_RAW = 10**18


class InvalidRecord(ValueError):
    """A meter record failed validation. The message names each bad field and what is wrong."""


def _no_float(value: Any) -> Any:
    # A binary float cannot carry an exact amount; make the producer send a decimal string.
    if isinstance(value, float):
        raise ValueError('must be a decimal string such as "1.25", not a binary float')
    if isinstance(value, bool):
        raise ValueError("must be a decimal string, not a boolean")
    if isinstance(value, str) and len(value) > 40:  # bounded before it becomes a Decimal
        raise ValueError("must be a decimal string of at most 40 characters")
    return value


def _utc_ms(value: datetime) -> datetime:
    # Millisecond precision in UTC, like the wire form, so a record survives a JSON round trip unchanged.
    utc = value.astimezone(timezone.utc)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def rfc3339(value: datetime) -> str:
    """The wire form of a time: RFC 3339 in UTC, to the millisecond (``2026-11-27T10:00:00.000Z``)."""
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Quantity = Annotated[
    Decimal,
    # Before the validator, so pydantic-core checks it (after it, a Python function would).
    # pydantic-core also refuses NaN and infinities for Decimal.
    Field(ge=0),
    BeforeValidator(_no_float),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
]
UtcTime = Annotated[AwareDatetime, PlainSerializer(rfc3339, return_type=str)]
Name = Annotated[str, Field(max_length=256)]


class MeterRecord(BaseModel):
    """One individual usage, rounded up to its billing increment by the policy it names."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    id: Annotated[str, Field(min_length=1, max_length=256)]
    session_id: Annotated[str, Field(min_length=1, max_length=256)]
    room: Name = ""
    room_sid: Name = ""
    agent_name: Name = ""
    worker_id: Name = ""
    customer: Name = ""
    resource: Resource
    raw: Annotated[StrictInt, Field(ge=0, le=MAX_RAW)]
    unit: Unit
    quantity: Quantity
    policy: Annotated[str, Field(min_length=1, max_length=64)]
    model: Name = ""
    provider: Name = ""
    language: Name = ""
    start: UtcTime
    end: UtcTime
    status: Status = Status.OK
    attributes: dict[Name, Name] = Field(default_factory=dict)
    meta: dict[Name, StrictStr | StrictInt | StrictBool] = Field(default_factory=dict)

    # One Python validator for the whole record: the collector validates every record it receives,
    # and each Python-level validator costs more than all of pydantic's own checks together.
    @model_validator(mode="after")
    def _check_consistency(self) -> MeterRecord:
        start, end = self.start, self.end
        # Wire times are UTC to the millisecond already; only other times are normalised.
        if start.utcoffset() or end.utcoffset() or start.microsecond % 1000 or end.microsecond % 1000:
            try:
                start, end = _utc_ms(start), _utc_ms(end)
            except OverflowError:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
                raise ValueError("start and end must fall within years 1 to 9999 in UTC") from None
            object.__setattr__(self, "start", start)
            object.__setattr__(self, "end", end)
        # The magnitude, before any arithmetic on it: "1E+999990" is 10 characters, and a million digits
        # to multiply or print. MAX_RAW has 19 digits; no exact quantity has more than 9 decimals.
        if not -9 <= self.quantity.adjusted() <= 18:
            raise ValueError("quantity must be below 10^19, with at most 9 decimal places")
        base = RESOURCE_BASE_UNIT[self.resource]
        if UNIT_BASE[self.unit] is not base:
            fitting = ", ".join(u.value for u, b in UNIT_BASE.items() if b is base)
            raise ValueError(
                f"unit {self.unit.value!r} does not fit resource {self.resource.value!r} "
                f"(measured in {base.value}); use one of: {fitting}"
            )
        if end < start:
            raise ValueError(f"end ({rfc3339(end)}) is before start ({rfc3339(start)})")
        return self

    # -- JSON form -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The wire form: plain JSON types only, amounts as integers and decimal strings."""
        return self.model_dump(mode="json")

    def canonical(self) -> str:
        """A stable serialization: equal records give equal strings (used to tell duplicates from conflicts)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any) -> MeterRecord:
        """Validate one record from its JSON form; raise InvalidRecord naming every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRecord(_describe(exc)) from None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.status is not Status.CHECKPOINT

    def supersedes(self, stored: MeterRecord) -> bool:
        """True when this record should replace ``stored`` (same id): a later checkpoint or the final form."""
        if self.id != stored.id or stored.is_final:
            return False
        return self.is_final or (self.end, self.raw) > (stored.end, stored.raw)


_HINTS = {"timezone_aware": "must carry a UTC offset (RFC 3339, e.g. 2026-11-27T10:00:00Z)"}
_SHORT = reprlib.Repr()  # inputs as a few dozen characters at most
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist = 1, 40, 40, 40, 3
_MAX_ERRORS = 4


def _describe(exc: ValidationError) -> str:
    """A short reason: the first few errors, each input cut to a few dozen characters (a hostile
    record may carry a megabyte of text or thousands of unknown fields)."""
    parts = []
    for err in exc.errors(include_url=False)[:_MAX_ERRORS]:
        where = ".".join(str(p)[:40] for p in err["loc"]) or "record"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {_SHORT.repr(got)})"
        parts.append(f"{where}: {_HINTS.get(err['type'], err['msg'])}{shown}")
    more = exc.error_count() - _MAX_ERRORS
    return "invalid meter record: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_utc(value: str) -> datetime:
    """A time as people and query strings give it: an RFC 3339 time with an offset, or a bare
    date (midnight UTC). Raises ValueError saying which of the two to write."""
    text = value.strip().replace("Z", "+00:00")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read the time {value!r}: use a date such as 2026-11-01 or an RFC 3339 time such as "
            "2026-11-01T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"the time {value!r} has no UTC offset: add one, e.g. {value.strip()}Z")
    return moment.astimezone(timezone.utc)


def latest_forms(records: Iterable[MeterRecord]) -> list[MeterRecord]:
    """The records that count: each id's final form, or its latest checkpoint if it never closed.

    The first final form of an id stands, as in the collector (a different later one is a conflict).
    """
    seen: dict[str, MeterRecord] = {}
    for record in records:
        stored = seen.get(record.id)
        if stored is None or record.supersedes(stored):
            seen[record.id] = record
    return list(seen.values())


def record_id(session_id: str, usage: str, resource: Resource | str) -> str:
    """The deterministic idempotency key of one individual usage.

    ``usage`` names the usage within its session (``"session"``, ``"llm-3"``, ...); the same
    usage always gets the same id, so a resend is recognised as a duplicate.
    """
    name = resource.value if isinstance(resource, Resource) else resource
    key = f"{session_id}/{usage}/{name}"
    if len(key) <= 200:
        return key
    return f"{key[:150]}~{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def participant_usage_id(room_sid: str, participant_sid: str, resource: Resource) -> str:
    """The id of a usage tied to one participant's connection: its WebRTC minutes, a SIP call.

    Both sides that can see such a usage derive the same id: the agent (from its room and the
    participant it sees) and the collector (from LiveKit's participant webhooks), so the usage is
    stored, and billed, once whichever side reports it first. A participant sid names one
    connection of one participant (a reconnect under the same identity gets a new sid).
    """
    return record_id(f"room:{room_sid or '-'}", f"participant:{participant_sid}", resource)


def sip_call_id(room_sid: str, participant_sid: str) -> str:
    """The id of one SIP call (the SIP participant's connection), whatever resource it bills as.

    Whether a call is ``sip_inbound``, ``sip_inbound_toll_free`` or ``sip_trunk`` depends on the
    project's phone numbers, which the agent and the collector may know differently; the id must
    not, or one call could be stored (and billed) twice under two ids.
    """
    return record_id(f"room:{room_sid or '-'}", f"participant:{participant_sid}", "sip")
