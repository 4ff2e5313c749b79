"""MeteredTTS: TTS characters per request, counted as they are handed to the provider.

A ``synthesize()`` call is one individual usage: the characters of its text. A streaming
segment (the text pushed between two flushes) is one usage: the characters pushed, recorded when
the segment is flushed. Text pushed but never flushed because the stream was interrupted or
closed is recorded too (``status=cancelled``): the provider received it, whereas livekit-agents
emits no ``TTSMetrics`` for an interrupted segment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from livekit.agents import tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from ..meter import Meter
from ..records import Resource, Status
from ._composite import adopt_children
from ._usage import Attribution, Forwarder, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["MeteredSynthesizeStream", "MeteredTTS"]


class MeteredTTS(tts.TTS[Any]):
    """Wraps any ``tts.TTS`` and records the characters of every request it serves.

    Mirrors the wrapped model's capabilities, sample rate and channels (a chunked-only TTS stays
    chunked-only, so the framework inserts its ``StreamAdapter`` and each sentence is metered as
    a ``synthesize()`` call), re-emits its ``metrics_collected`` and ``error`` events unchanged,
    and otherwise behaves exactly like it.
    """

    def __init__(self, tts_: tts.TTS[Any], *, meter: Meter | None = None) -> None:
        super().__init__(capabilities=tts_.capabilities, sample_rate=tts_.sample_rate, num_channels=tts_.num_channels)
        self._wrapped = tts_
        self._meter = meter
        self._label = f"livekit_metering.MeteredTTS({tts_.label})"
        # a model metered already, or a composite whose children get metered: pass through
        self._delegating = isinstance(tts_, MeteredTTS) or adopt_children(tts_, lambda child: _metered(child, meter))
        self._forwarder = Forwarder(tts_, self, ("metrics_collected", "error", "tts_availability_changed"))

    @property
    def wrapped(self) -> tts.TTS[Any]:
        return self._wrapped

    @property
    def capabilities(self) -> tts.TTSCapabilities:
        return self._wrapped.capabilities

    @property
    def model(self) -> str:
        return self._wrapped.model

    @property
    def provider(self) -> str:
        return self._wrapped.provider

    @property
    def metrics_metadata(self) -> Any:
        return self._wrapped.metrics_metadata

    @property
    def markup(self) -> Any:
        return self._wrapped.markup

    def _set_expressive(self, enabled: bool) -> None:
        super()._set_expressive(enabled)
        self._wrapped._set_expressive(enabled)

    def prewarm(self) -> None:
        self._wrapped.prewarm()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        kwargs: dict[str, Any] = {}
        if conn_options is not DEFAULT_API_CONNECT_OPTIONS:
            kwargs["conn_options"] = conn_options
        stream = self._wrapped.synthesize(text, **kwargs)
        if not self._delegating:
            # the whole text goes out with the request: nothing to observe on the audio path, so
            # the wrapped stream is returned as it is and recorded when its task ends
            with never_raises("watching a TTS request"):
                meter = resolve_meter(self._meter)
                usage, span, who = meter.next_usage("tts"), Span(), Attribution.of(self._wrapped)
                stream._synthesize_task.add_done_callback(
                    lambda task: _record_synthesize(meter, usage, span, who, len(text), task)
                )
        return stream

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> tts.SynthesizeStream:
        kwargs: dict[str, Any] = {}
        if conn_options is not DEFAULT_API_CONNECT_OPTIONS:
            kwargs["conn_options"] = conn_options
        if self._delegating:
            return self._wrapped.stream(**kwargs)
        return MeteredSynthesizeStream(self, kwargs)

    async def aclose(self) -> None:
        # like FallbackAdapter and StreamAdapter: stop listening, leave the wrapped model to its owner
        self._forwarder.close()


def _metered(child: Any, meter: Meter | None) -> Any:
    return child if isinstance(child, MeteredTTS) else MeteredTTS(child, meter=meter)


def _record_synthesize(
    meter: Meter, usage: str, span: Span, who: Attribution, chars: int, task: asyncio.Task[Any]
) -> None:
    with never_raises("recording a TTS request"):
        status, error = status_of(task)
        meta: Meta = {"mode": "synthesize"}
        if error:
            meta["error"] = error
        record(meter, Resource.TTS, chars, usage=usage, span=span, who=who, status=status, meta=meta)


class MeteredSynthesizeStream(tts.SynthesizeStream):
    """A metered streaming synthesis: a transparent proxy over the wrapped stream.

    Text goes straight to the wrapped stream and audio is read straight from it; no task or
    channel of its own (see MeteredLLMStream). The characters of a segment are the text the
    wrapped stream forwarded to its provider since the last flush: ``SynthesizeStream`` keeps
    exactly that (``_mtc_text``, the text its own TTSMetrics count), which costs nothing per
    push. Should a livekit-agents release drop it, the proxy counts each forwarded push itself.
    """

    def __init__(self, metered: MeteredTTS, kwargs: dict[str, Any]) -> None:
        # SynthesizeStream.__init__ is deliberately not called (no second task or channel)
        self._metered = metered
        self._meter = resolve_meter(metered._meter)
        self._who = Attribution.of(metered._wrapped)
        self._finalized = False
        self._inner: tts.SynthesizeStream = metered._wrapped.stream(**kwargs)
        self._segment_span = Span()
        self._pending = 0  # characters forwarded since the last flush (fallback counting only)
        # getattr, not vars(): materializing the wrapped stream's __dict__ would slow down every
        # attribute access it makes on itself
        self._sent: list[Any] | None = None
        if isinstance(getattr(self._inner, "_mtc_text", None), str):
            self.push_text = self._inner.push_text  # type: ignore[method-assign]
        elif isinstance(buffer := getattr(self._inner, "_input_buffer", None), list):
            self._sent = buffer
        with never_raises("watching a TTS stream"):
            self._inner._task.add_done_callback(lambda _: self._finalize())

    # What livekit-agents reads on a stream besides its public API, delegated one by one (see
    # MeteredLLMStream: no __getattr__ on the hot path)
    @property
    def _tts(self) -> tts.TTS[Any]:  # type: ignore[override]
        return self._metered

    @property
    def _task(self) -> asyncio.Task[None]:  # type: ignore[override]
        return self._inner._task

    @property
    def _tts_request_span(self) -> Any:  # type: ignore[override]
        return self._inner._tts_request_span

    def push_text(self, token: str) -> None:
        # fallback counting: SynthesizeStream.push_text silently drops text (after end_input, or a
        # second segment in one stream); what it forwarded is what lands in its input buffer
        buffer = self._sent
        sent = len(buffer) if buffer is not None else 0
        self._inner.push_text(token)
        if token and (buffer is None or len(buffer) > sent):
            self._pending += len(token)

    def flush(self) -> None:
        chars = self._segment_chars()
        self._inner.flush()
        self._close_segment(chars, Status.OK, "flushed")

    def end_input(self) -> None:
        chars = self._segment_chars()
        self._inner.end_input()  # flushes, like the base class
        self._close_segment(chars, Status.OK, "flushed")

    def __anext__(self) -> Coroutine[Any, Any, tts.SynthesizedAudio]:  # type: ignore[override]
        return self._inner.__anext__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finalize()

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:  # never started
        raise NotImplementedError

    def _segment_chars(self) -> int:
        text = getattr(self._inner, "_mtc_text", None)
        return len(text) if isinstance(text, str) and self._sent is None else self._pending

    def _close_segment(self, chars: int, status: Status, outcome: str, error: str = "") -> None:
        span, self._segment_span, self._pending = self._segment_span, Span(), 0
        if not chars:
            return
        with never_raises("recording a TTS segment"):
            meta: Meta = {"mode": "stream", "outcome": outcome}
            if error:
                meta["error"] = error
            usage = self._meter.next_usage("tts")
            record(self._meter, Resource.TTS, chars, usage=usage, span=span, who=self._who, status=status, meta=meta)

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        with never_raises("recording a TTS stream"):
            chars = self._segment_chars()
            outcome, error = status_of(getattr(self._inner, "_task", None))
            if outcome is Status.ERROR:
                self._close_segment(chars, Status.ERROR, "error", error)
            else:
                # text handed over but never flushed: the segment was interrupted
                self._close_segment(chars, Status.CANCELLED, "interrupted")
