"""TTS characters per request, counted as they are handed to the provider.

A ``synthesize()`` call is one individual usage: the characters of its text. A streaming segment
(the text pushed between two flushes) is one usage, recorded when it is flushed. Text pushed but
never flushed because the stream was interrupted or closed is recorded too
(``status=cancelled``, ``meta.outcome=interrupted``): the provider received it, whereas
livekit-agents emits no ``TTSMetrics`` for an interrupted segment.

Observed on the provider's own stream: ``flush`` (an instance attribute; ``end_input()`` calls it),
which reads the text the stream forwarded since the last flush (``_mtc_text``, what its own
TTSMetrics count), so nothing runs per push; and the end of its ``_task``. A chunked request is
recorded when its ``_synthesize_task`` ends.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from livekit.agents import tts

from ..meter import Meter
from ..records import Resource, Status
from ._hooks import Hooks, metering_of, shadow, unmetered
from ._usage import Attribution, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["HOOKS"]

# Set while a metered synthesize() builds its request: a TTS whose synthesize() runs on its own
# stream() (``_synthesize_with_stream``, e.g. inference.TTS) is billed once, as the synthesize call.
# The chunked stream's task copies this context, so the stream() it opens sees it.
_inside_synthesize: contextvars.ContextVar[bool] = contextvars.ContextVar("livekit_metering_tts", default=False)


def _synthesize(model: tts.TTS[Any], original: Any) -> Any:
    def synthesize(text: str, *args: Any, **kwargs: Any) -> tts.ChunkedStream:
        outer = _inside_synthesize.get()
        token = _inside_synthesize.set(True)
        try:
            chunked: tts.ChunkedStream = original(text, *args, **kwargs)
        finally:
            _inside_synthesize.reset(token)
        if not outer:
            _watch_synthesize(model, chunked, text)
        return chunked

    return synthesize


def _stream(model: tts.TTS[Any], original: Any) -> Any:
    def stream(*args: Any, **kwargs: Any) -> tts.SynthesizeStream:
        provider_stream: tts.SynthesizeStream = original(*args, **kwargs)
        if not _inside_synthesize.get():
            _Synthesis.watch(model, provider_stream)
        return provider_stream

    return stream


HOOKS: Hooks = {"synthesize": _synthesize, "stream": _stream}


def _watch_synthesize(model: tts.TTS[Any], chunked: tts.ChunkedStream, text: str) -> None:
    with never_raises("watching a TTS request"):
        task = getattr(chunked, "_synthesize_task", None)
        if not isinstance(task, asyncio.Task):
            unmetered(model, chunked, "is not a livekit-agents 1.8 ChunkedStream")
            return
        meter = resolve_meter(metering_of(model).meter)
        usage, span, who = meter.next_usage("tts"), Span(meter), Attribution.of(model)
        task.add_done_callback(lambda done: _record_synthesize(meter, usage, span, who, len(text), done))


def _record_synthesize(
    meter: Meter, usage: str, span: Span, who: Attribution, chars: int, task: asyncio.Task[Any]
) -> None:
    with never_raises("recording a TTS request"):
        status, error = status_of(task)
        meta: Meta = {"mode": "synthesize"}
        if error:
            meta["error"] = error
        record(meter, Resource.TTS, chars, usage=usage, span=span, who=who, status=status, meta=meta)


class _Synthesis:
    """One streaming synthesis being metered: a usage per flushed segment."""

    __slots__ = ("meter", "segment", "stream", "who")

    def __init__(self, meter: Meter, who: Attribution, stream: tts.SynthesizeStream) -> None:
        self.meter, self.who, self.stream = meter, who, stream
        self.segment = Span(meter)

    @classmethod
    def watch(cls, model: tts.TTS[Any], stream: tts.SynthesizeStream) -> None:
        with never_raises("watching a TTS stream"):
            task = getattr(stream, "_task", None)
            if not isinstance(task, asyncio.Task) or not isinstance(getattr(stream, "_mtc_text", None), str):
                unmetered(model, stream, "is not a livekit-agents 1.8 SynthesizeStream")
                return
            meter = resolve_meter(metering_of(model).meter)
            synthesis = cls(meter, Attribution.of(model), stream)

            def make(flush: Any) -> Any:
                def flush_segment() -> None:
                    text = stream._mtc_text
                    flush()
                    if text and not stream._mtc_text:  # flush() moved it on (a no-op once input ended)
                        synthesis.close_segment(len(text), Status.OK, "flushed")

                return flush_segment

            shadow(stream, "flush", make)
            task.add_done_callback(synthesis.finalize)

    def close_segment(self, chars: int, status: Status, outcome: str, error: str = "") -> None:
        span, self.segment = self.segment, Span(self.meter)
        with never_raises("recording a TTS segment"):
            meta: Meta = {"mode": "stream", "outcome": outcome}
            if error:
                meta["error"] = error
            usage = self.meter.next_usage("tts")
            record(self.meter, Resource.TTS, chars, usage=usage, span=span, who=self.who, status=status, meta=meta)

    def finalize(self, task: asyncio.Task[Any]) -> None:
        with never_raises("recording a TTS stream"):
            # text handed over but never flushed: the segment was interrupted (or failed)
            chars = len(self.stream._mtc_text)
            if not chars:
                return
            outcome, error = status_of(task)
            if outcome is Status.ERROR:
                self.close_segment(chars, Status.ERROR, "error", error)
            else:
                self.close_segment(chars, Status.CANCELLED, "interrupted")
