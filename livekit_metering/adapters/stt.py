"""STT seconds per recognition, the way LiveKit Inference bills them.

A streaming recognition is one individual usage: the stream's connection time, from ``stream()``
to its end (``aclose()``, end of input or an error), silence included, recorded as one ``stt``
record (raw in ms; the rate policy rounds it up to whole seconds per usage). It is never less
than the audio the stream was sent (AgentSession's 2 s flush at close included) or the seconds
the provider reported, which are kept in ``meta`` (``audio_ms``, ``provider_ms``,
``connection_ms``). A long stream writes ``checkpoint`` records under the same id every
``checkpoint_interval`` seconds, so a crash loses at most one interval.

A batch ``recognize()`` call is one usage of the audio duration it sent.

Observed on the provider's own stream: ``push_frame`` (an instance attribute adding up the
samples sent), the provider's ``STTMetrics`` (attributed to the stream whose metrics task emitted
them) and the end of its ``_metrics_task``.
"""

from __future__ import annotations

import asyncio
import contextvars
from datetime import timedelta
from typing import Any

from livekit import rtc
from livekit.agents import stt
from livekit.agents.metrics import STTMetrics
from livekit.agents.utils.audio import calculate_audio_duration

from ..meter import Meter
from ..records import Resource, Status
from ._hooks import Hooks, metering_of, shadow, unmetered
from ._usage import Attribution, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL", "HOOKS", "attach"]

DEFAULT_CHECKPOINT_INTERVAL = 15.0  # seconds between running figures of an open stream

# The stream a provider's STTMetrics belong to: set while the provider builds the stream, so its
# metrics task inherits it (asyncio copies the context into the tasks it creates).
_owner: contextvars.ContextVar[_Recognition | None] = contextvars.ContextVar("livekit_metering_stt", default=None)


def _stream(model: stt.STT[Any], original: Any) -> Any:
    def stream(*args: Any, **kwargs: Any) -> stt.RecognizeStream:
        watch = _Recognition.open(model, kwargs.get("language"))
        token = _owner.set(watch)
        try:
            provider_stream: stt.RecognizeStream = original(*args, **kwargs)
        finally:
            _owner.reset(token)
        if watch is not None:
            watch.attach(model, provider_stream)
        return provider_stream

    return stream


def _recognize(model: stt.STT[Any], original: Any) -> Any:
    async def recognize(buffer: Any, *args: Any, **kwargs: Any) -> stt.SpeechEvent:
        meter, span = None, None
        with never_raises("resolving the meter of an STT request"):
            meter = resolve_meter(metering_of(model).meter)
            span = Span(meter)
        status, meta = Status.CANCELLED, Meta(mode="recognize")
        try:
            event: stt.SpeechEvent = await original(buffer, *args, **kwargs)
            status = Status.OK
            return event
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status, meta["error"] = Status.ERROR, type(exc).__name__
            raise
        finally:
            if meter is not None and span is not None:
                _record_recognize(model, meter, span, buffer, kwargs.get("language"), status, meta)

    return recognize


def _record_recognize(
    model: stt.STT[Any], meter: Meter, span: Span, buffer: Any, language: object, status: Status, meta: Meta
) -> None:
    with never_raises("recording an STT recognize call"):
        meta["audio_ms"] = audio_ms = round(calculate_audio_duration(buffer) * 1000)
        who, usage = Attribution.of(model, language, speech=True), meter.next_usage("stt")
        record(meter, Resource.STT, audio_ms, usage=usage, span=span, who=who, status=status, meta=meta)


HOOKS: Hooks = {"stream": _stream, "recognize": _recognize}


def attach(model: stt.STT[Any]) -> None:
    """Listen for the provider's own usage figures (RECOGNITION_USAGE), which its streams'
    metrics tasks emit on the model."""

    def on_metrics(metrics: Any) -> None:
        with never_raises("attributing STT metrics"):
            owner = _owner.get()
            if owner is None or owner.model is not model or not isinstance(metrics, STTMetrics):
                return
            if metrics.streamed and metrics.audio_duration:
                owner.provider_s += metrics.audio_duration

    model.on("metrics_collected", on_metrics)


class _Recognition:
    """One streaming recognition being metered."""

    __slots__ = (
        "_finalized",
        "_timer",
        "interval",
        "meter",
        "model",
        "provider_s",
        "samples",
        "span",
        "stream",
        "usage",
        "who",
    )

    def __init__(self, model: stt.STT[Any], meter: Meter, who: Attribution, interval: float) -> None:
        self.model, self.meter, self.who, self.interval = model, meter, who, interval
        self.span = Span(meter)
        self.samples = 0  # audio sent, in samples per channel at the stream's _pushed_sr
        self.provider_s = 0.0
        self.usage = ""
        self.stream: stt.RecognizeStream | None = None
        self._finalized = False
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, model: stt.STT[Any], language: object) -> _Recognition | None:
        with never_raises("opening an STT stream's metering"):
            metering = metering_of(model)
            who = Attribution.of(model, language, speech=True)
            return cls(model, resolve_meter(metering.meter), who, metering.checkpoint_interval)
        return None

    def attach(self, model: stt.STT[Any], stream: stt.RecognizeStream) -> None:
        with never_raises("watching an STT stream"):
            # the metrics task ends after the provider's last usage figure is out
            done = getattr(stream, "_metrics_task", None)
            if not isinstance(done, asyncio.Task) or not isinstance(getattr(stream, "_pushed_sr", None), int):
                unmetered(model, stream, "is not a livekit-agents 1.8 RecognizeStream")
                return
            self.stream = stream
            self.usage = self.meter.next_usage("stt")

            audio = self

            def make(push: Any) -> Any:
                # the one hook per frame (50 a second for the whole session): a call and an addition
                def push_frame(frame: rtc.AudioFrame) -> None:
                    push(frame)  # raises (and counts nothing) on a closed stream or a rate change
                    audio.samples += frame._samples_per_channel

                return push_frame

            shadow(stream, "push_frame", make)
            done.add_done_callback(lambda _: self._finalize())
            self._arm()

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._finalized:
            return
        with never_raises("checkpointing an STT stream"):
            self._record(Status.CHECKPOINT, {"outcome": "open"})
            self._arm()

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        if self._timer is not None:
            self._timer.cancel()
        with never_raises("recording an STT stream"):
            outcome, error = status_of(getattr(self.stream, "_task", None))
            # cancelled is how AgentSession normally ends its STT stream: a closed connection
            meta: Meta = {"outcome": "error" if outcome is Status.ERROR else "closed"}
            if error:
                meta["error"] = error
            self._record(Status.ERROR if outcome is Status.ERROR else Status.OK, meta)

    def _record(self, status: Status, meta: Meta) -> None:
        connection_ms = self.span.elapsed_ms()
        rate = getattr(self.stream, "_pushed_sr", 0)
        audio_ms = self.samples * 1000 // rate if rate else 0
        provider_ms = round(self.provider_s * 1000)
        raw = max(connection_ms, audio_ms, provider_ms)
        meta = {
            **meta,
            "mode": "stream",
            "connection_ms": connection_ms,
            "audio_ms": audio_ms,
            "provider_ms": provider_ms,
            "basis": "connection" if raw == connection_ms else ("audio" if raw == audio_ms else "provider"),
        }
        end = self.span.start + timedelta(milliseconds=connection_ms)
        who, span = self.who, self.span
        record(self.meter, Resource.STT, raw, usage=self.usage, span=span, who=who, status=status, end=end, meta=meta)
