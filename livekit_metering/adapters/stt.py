"""MeteredSTT: STT seconds per request, the way LiveKit Inference bills them.

A streaming recognition is one individual usage: the stream's connection time, from open to
close with silence included, recorded as one ``stt`` record (raw in ms; the rate policy rounds
it up to whole seconds per usage). It is never less than the audio the stream carried or the
seconds the provider reported, which are kept in ``meta`` for reconciliation (``audio_ms``,
``provider_ms``, ``connection_ms``). Long streams write ``checkpoint`` records (same record id)
every ``checkpoint_interval`` seconds, so a crash loses at most one interval.

A batch ``recognize()`` call is one usage of the audio duration it sent.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from livekit import rtc
from livekit.agents import stt
from livekit.agents.metrics import STTMetrics
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import AudioBuffer
from livekit.agents.utils.audio import calculate_audio_duration

from ..meter import Meter
from ..records import Resource, Status
from ._composite import adopt_children
from ._usage import Attribution, Forwarder, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL", "MeteredRecognizeStream", "MeteredSTT"]

DEFAULT_CHECKPOINT_INTERVAL = 15.0  # seconds between running figures of an open stream

# The stream provider usage belongs to (see llm.py: inherited by the wrapped stream's tasks).
_owner: contextvars.ContextVar[MeteredRecognizeStream | None] = contextvars.ContextVar(
    "livekit_metering_stt_stream", default=None
)


class MeteredSTT(stt.STT[Any]):
    """Wraps any ``stt.STT`` and records the seconds of every recognition it serves.

    Mirrors the wrapped model's capabilities (a batch-only STT stays batch-only, so the framework
    inserts its own ``StreamAdapter`` and every ``recognize()`` is metered), re-emits its
    ``metrics_collected`` and ``error`` events unchanged, and otherwise behaves exactly like it.
    """

    def __init__(
        self,
        stt_: stt.STT[Any],
        *,
        meter: Meter | None = None,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> None:
        if not checkpoint_interval > 0:
            raise ValueError(f"checkpoint_interval must be a positive number of seconds, got {checkpoint_interval!r}")
        super().__init__(capabilities=stt_.capabilities)
        self._wrapped = stt_
        self._meter = meter
        self._checkpoint_interval = checkpoint_interval
        self._label = f"livekit_metering.MeteredSTT({stt_.label})"
        self._recognize_metrics_needed = False  # the wrapped STT emits its own STTMetrics
        # a model metered already, or a composite whose children get metered: pass through
        self._delegating = isinstance(stt_, MeteredSTT) or adopt_children(
            stt_, lambda child: _metered(child, meter=meter, checkpoint_interval=checkpoint_interval)
        )
        stt_.on("metrics_collected", self._on_metrics_collected)
        self._forwarder = Forwarder(stt_, self, ("error", "stt_availability_changed"))

    @property
    def wrapped(self) -> stt.STT[Any]:
        return self._wrapped

    @property
    def capabilities(self) -> stt.STTCapabilities:
        # read live: a FallbackAdapter changes its own
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

    def prewarm(self) -> None:
        self._wrapped.prewarm()

    def _update_session_keyterms(self, keyterms: list[str]) -> None:
        self._wrapped._update_session_keyterms(keyterms)

    def _push_conversation_item(self, ev: Any) -> None:
        self._wrapped._push_conversation_item(ev)

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        return await self._wrapped._recognize_impl(buffer, language=language, conn_options=conn_options)

    async def recognize(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        # the wrapped recognize() retries and emits its own errors and metrics: call it once
        if self._delegating:
            return await self._wrapped.recognize(buffer, language=language, conn_options=conn_options)
        meter = resolve_meter(self._meter)
        span = Span()
        status = Status.CANCELLED
        meta: Meta = {}
        try:
            event = await self._wrapped.recognize(buffer, language=language, conn_options=conn_options)
            status = Status.OK
            return event
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = Status.ERROR
            meta["error"] = type(exc).__name__
            raise
        finally:
            with never_raises("recording an STT recognize call"):
                audio_ms = round(calculate_audio_duration(buffer) * 1000)
                meta["audio_ms"] = audio_ms
                meta["mode"] = "recognize"
                record(
                    meter,
                    Resource.STT,
                    audio_ms,
                    usage=meter.next_usage("stt"),
                    span=span,
                    who=Attribution.of(self._wrapped, language, speech=True),
                    status=status,
                    meta=meta,
                )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        kwargs: dict[str, Any] = {"language": language}
        if conn_options is not DEFAULT_API_CONNECT_OPTIONS:
            kwargs["conn_options"] = conn_options
        if self._delegating:
            return self._wrapped.stream(**kwargs)
        return MeteredRecognizeStream(self, kwargs)

    async def aclose(self) -> None:
        # like FallbackAdapter and StreamAdapter: stop listening, leave the wrapped model to its owner
        self._wrapped.off("metrics_collected", self._on_metrics_collected)
        self._forwarder.close()

    def _on_metrics_collected(self, metrics: Any) -> None:
        with never_raises("attributing STT metrics"):
            if isinstance(metrics, STTMetrics) and metrics.streamed and metrics.audio_duration:
                owner = _owner.get()
                if owner is not None and owner._metered is self:
                    owner._provider_s += metrics.audio_duration
        self.emit("metrics_collected", metrics)


def _metered(child: Any, **kwargs: Any) -> Any:
    return child if isinstance(child, MeteredSTT) else MeteredSTT(child, **kwargs)


class MeteredRecognizeStream(stt.RecognizeStream):
    """One metered streaming recognition: a transparent proxy over the wrapped stream.

    Frames go straight to the wrapped stream (their duration is added up on the way) and events
    are read straight from it, so the proxy adds no task or channel of its own (see
    MeteredLLMStream).
    """

    def __init__(self, metered: MeteredSTT, kwargs: dict[str, Any]) -> None:
        # RecognizeStream.__init__ is deliberately not called (no second task or channel)
        self._metered = metered
        self._meter = resolve_meter(metered._meter)
        self._who = Attribution.of(metered._wrapped, kwargs.get("language"), speech=True)
        self._usage = self._meter.next_usage("stt")
        self._span = Span()
        self._samples = 0  # audio forwarded, in samples per channel at the wrapped stream's _pushed_sr
        self._provider_s = 0.0
        self._finalized = False
        self._timer: asyncio.TimerHandle | None = None
        token = _owner.set(self)
        try:
            self._inner: stt.RecognizeStream = metered._wrapped.stream(**kwargs)
        finally:
            _owner.reset(token)
        self._push_frame = self._inner.push_frame
        with never_raises("watching an STT stream"):
            self._inner._metrics_task.add_done_callback(lambda _: self._finalize())
            self._arm_checkpoint()

    # What livekit-agents reads on a stream besides its public API, delegated one by one (see
    # MeteredLLMStream: no __getattr__ on the hot path)
    @property
    def _stt(self) -> stt.STT[Any]:  # type: ignore[override]
        return self._metered

    @property
    def _task(self) -> asyncio.Task[None]:  # type: ignore[override]
        return self._inner._task

    # settable properties of RecognizeStream, forwarded to the provider stream
    @property
    def context(self) -> Any:
        return self._inner.context

    @context.setter
    def context(self, value: Any) -> None:
        self._inner.context = value

    @property
    def start_time_offset(self) -> float:
        return self._inner.start_time_offset

    @start_time_offset.setter
    def start_time_offset(self, value: float) -> None:
        self._inner.start_time_offset = value

    @property
    def start_time(self) -> float:
        return self._inner.start_time

    @start_time.setter
    def start_time(self, value: float) -> None:
        self._inner.start_time = value

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        # the hot path (50 frames a second for the whole session): one call and one addition.
        # The wrapped push_frame raises on a sample-rate change, and keeps the rate (_pushed_sr).
        self._push_frame(frame)
        self._samples += frame.samples_per_channel

    def flush(self) -> None:
        self._inner.flush()

    def end_input(self) -> None:
        self._inner.end_input()

    def __anext__(self) -> Coroutine[Any, Any, stt.SpeechEvent]:  # type: ignore[override]
        return self._inner.__anext__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finalize()

    async def _run(self) -> None:  # never started: the wrapped stream runs the recognition
        raise NotImplementedError

    def _arm_checkpoint(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._metered._checkpoint_interval, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._finalized:
            return
        with never_raises("checkpointing an STT stream"):
            self._record(Status.CHECKPOINT, {"outcome": "open"})
            self._arm_checkpoint()

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        if self._timer is not None:
            self._timer.cancel()
        with never_raises("recording an STT stream"):
            outcome, error = status_of(getattr(self._inner, "_task", None))
            # cancelled is how AgentSession normally ends its STT stream: a closed connection
            meta: Meta = {"outcome": "closed" if outcome is not Status.ERROR else "error"}
            if error:
                meta["error"] = error
            self._record(Status.ERROR if outcome is Status.ERROR else Status.OK, meta)

    def _record(self, status: Status, meta: Meta) -> None:
        connection_ms = self._span.elapsed_ms()
        rate = getattr(self._inner, "_pushed_sr", 0)
        audio_ms = self._samples * 1000 // rate if rate else 0
        provider_ms = round(self._provider_s * 1000)
        raw = max(connection_ms, audio_ms, provider_ms)
        meta = {
            **meta,
            "mode": "stream",
            "connection_ms": connection_ms,
            "audio_ms": audio_ms,
            "provider_ms": provider_ms,
            "basis": "connection" if raw == connection_ms else ("audio" if raw == audio_ms else "provider"),
        }
        end = self._span.start + timedelta(milliseconds=connection_ms)
        record(
            self._meter,
            Resource.STT,
            raw,
            usage=self._usage,
            span=self._span,
            who=self._who,
            status=status,
            end=end,
            meta=meta,
        )
