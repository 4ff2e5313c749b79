"""What every model's metering shares: where a usage is recorded, when it happened, who served it.

Measurement only: the hooks hand raw amounts (ms, tokens, characters) to a ``Meter``, which
rounds, builds and exports the record. Nothing here may raise into the agent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ..meter import Meter, current_meter
from ..records import Resource, Status

logger = logging.getLogger("livekit_metering.adapters")

Meta = dict[str, str | int | bool]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class Span:
    """The time of one usage: monotonic for the duration, stamped with UTC wall time.

    The clock is the meter's when it has one (a job's ``SessionMeter``), so a usage and the
    session it belongs to are timed alike; else the system's.
    """

    __slots__ = ("_clock", "_mono", "start")

    def __init__(self, meter: Meter | None = None) -> None:
        clock: Clock | None = getattr(meter, "clock", None)
        self._clock = clock
        if clock is None:
            self.start = datetime.now(timezone.utc)
            self._mono = time.monotonic()
        else:
            self.start = datetime.fromtimestamp(clock.time(), timezone.utc)
            self._mono = clock.monotonic()

    def elapsed_ms(self) -> int:
        now = time.monotonic() if self._clock is None else self._clock.monotonic()
        return max(0, round((now - self._mono) * 1000))

    def end(self) -> datetime:
        return self.start + timedelta(milliseconds=self.elapsed_ms())


class Attribution:
    """The model, provider and language a usage is billed under."""

    __slots__ = ("language", "model", "provider")

    def __init__(self, model: str, provider: str, language: str = "") -> None:
        self.model = model
        self.provider = provider
        self.language = language

    @classmethod
    def of(cls, model: Any, language: object = None, *, speech: bool = False) -> Attribution:
        """Read the attribution from a livekit-agents model (STT, LLM or TTS); never raises.

        LiveKit Inference models report provider ``livekit`` and model ``provider/model``; both
        are kept as they are so the price book can match them. For speech recognition
        (``speech=True``) the language is the one the caller named, else a ``:language``
        suffix of a LiveKit Inference model (``deepgram/nova-3:multi``), else the model's
        configured language. Elsewhere a colon belongs to the model name (``llama3:8b``) or
        names a voice, and is left alone.
        """
        name = _text(getattr(model, "model", "")) or "unknown"
        provider = _text(getattr(model, "provider", "")) or "unknown"
        if not speech:
            return cls(name, provider)
        lang = _text(language)
        if provider == "livekit" and ":" in name:
            name, _, suffix = name.rpartition(":")
            lang = lang or suffix
        if not lang:
            opts = getattr(model, "_opts", None)
            lang = _text(getattr(opts, "language", ""))
        return cls(name, provider, lang)


def _text(value: object) -> str:
    # NOT_GIVEN, None and non-strings (enums excepted) all mean "not known"
    if isinstance(value, str):
        return value[:256]
    return ""


def resolve_meter(explicit: Meter | None) -> Meter:
    """The meter a request is recorded on, resolved when the request is made: the one passed to
    the adapter, else ``current_meter()`` (the job's meter, set by ``metered`` or found through
    the JobContext; else the process default in a plain script)."""
    return explicit if explicit is not None else current_meter()


def record(
    meter: Meter,
    resource: Resource,
    raw: int,
    *,
    usage: str,
    span: Span,
    who: Attribution,
    status: Status = Status.OK,
    end: datetime | None = None,
    meta: Meta | None = None,
) -> None:
    """Record one usage on ``meter``; log and swallow anything that goes wrong."""
    try:
        meter.record(
            resource,
            max(0, int(raw)),
            usage=usage,
            start=span.start,
            end=end or span.end(),
            status=status,
            model=who.model,
            provider=who.provider,
            language=who.language,
            meta=meta or {},
        )
    except Exception:
        logger.exception("livekit-metering could not record %s usage %s", resource.value, usage)


@contextlib.contextmanager
def never_raises(what: str) -> Iterator[None]:
    """Metering must not break the agent: log a failure inside the block and carry on."""
    try:
        yield
    except Exception:
        logger.exception("livekit-metering failed while %s", what)


def status_of(task: Any) -> tuple[Status, str]:
    """The outcome of a finished provider task: ok, cancelled or error (with the error's type)."""
    if task is None or not task.done():
        return Status.CANCELLED, ""
    if task.cancelled():
        return Status.CANCELLED, ""
    exc = task.exception()
    if exc is not None:
        return Status.ERROR, type(exc).__name__
    return Status.OK, ""
