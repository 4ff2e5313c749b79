"""Realtime (speech-to-speech) and duplex models: tokens per response by modality, session seconds.

A realtime model (``llm.RealtimeModel``: LiveKit Inference ``openai/gpt-realtime``,
``google/gemini-3.8-live``, ``xai/grok-voice-3.0``, or a provider's plugin) bills each response
(generation) by its input and output tokens per modality. One response is one individual usage,
named in the order the responses were created (``realtime-1``, ``realtime-2``...), recorded from the
provider's ``RealtimeModelMetrics`` as ``realtime_input_{text,audio,image}`` (uncached),
``realtime_input_cached_{text,audio,image}`` and ``realtime_output_{text,audio}``: cached tokens
are taken out of their modality, so every input token is counted once. A cancelled (interrupted)
response is recorded with the provider's figures, ``status=cancelled``; a response whose figures
never arrive (the session closed or reconnected first) is recorded as ``status=estimated``, with
``meta.estimate`` naming the method. Only modalities with tokens get a record.

Input-audio transcription that the provider bills on its own (its ``STTMetrics`` on the session)
is a usage of its own: ``transcription_input`` / ``transcription_output`` tokens, or ``stt``
seconds when billed by duration.

A model billed by connection time (a duplex model such as ``openai/gpt-live-1``, xAI's voice
models, or any model that reports ``session_duration``) also gets one ``realtime_session`` usage
per session: the provider's reported seconds where it reports them, else the session's open
(``session()``) to close (``aclose()``) time, with checkpoints while it is open. Backend LLM tokens
a duplex model reports (``LLMMetrics``) are ``llm_*`` usages, as for any LLM.

Observed on the provider's own session: its ``metrics_collected``, ``generation_created`` and
``session_reconnected`` events (listeners), the text and audio a response puts on its channels
(for estimates only), and ``aclose`` (an instance attribute).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from livekit import rtc
from livekit.agents import llm
from livekit.agents.metrics import LLMMetrics, RealtimeModelMetrics, STTMetrics
from livekit.agents.utils import aio

from ..meter import Meter
from ..records import Resource, Status
from ._hooks import Hooks, metering_of, shadow, unmetered
from ._usage import Attribution, Meta, Span, logger, never_raises, record, resolve_meter
from .llm import CHARS_PER_TOKEN, estimated_tokens, record_tokens

__all__ = ["AUDIO_OUTPUT_MS_PER_TOKEN", "DUPLEX_HOOKS", "ESTIMATE_METHOD", "REALTIME_HOOKS"]

# Estimates for a response whose figures never arrived. OpenAI documents assistant audio as one
# token per 50 ms (developers.openai.com/api/docs/guides/realtime-costs); other providers publish
# none, so it stands for them too, flagged as an estimate.
AUDIO_OUTPUT_MS_PER_TOKEN = 50
ESTIMATE_METHOD = (
    f"input text ceil(chars/{CHARS_PER_TOKEN}) of the session's context; output text ceil(chars/{CHARS_PER_TOKEN}); "
    f"output audio ceil(ms/{AUDIO_OUTPUT_MS_PER_TOKEN})"
)

# Billed by connection time rather than tokens: xAI's voice models (RealtimeModelMetrics: "for
# session-based billing like xAI"); duplex models always are.
_TIME_BILLED_PREFIXES = ("xai/", "grok")


def _session(time_billed: Callable[[Any], bool]) -> Callable[[Any, Any], Any]:
    def make(model: Any, original: Any) -> Any:
        def session(*args: Any, **kwargs: Any) -> Any:
            opened = _open(model)
            provider_session = original(*args, **kwargs)
            if opened is not None:
                _Session.watch(model, provider_session, opened, time_billed=time_billed(model))
            return provider_session

        return session

    return make


def _open(model: Any) -> tuple[Meter, Span, float] | None:
    with never_raises("opening a realtime session's metering"):
        metering = metering_of(model)
        meter = resolve_meter(metering.meter)
        return meter, Span(meter), metering.checkpoint_interval
    return None


def _time_billed(model: Any) -> bool:
    name = Attribution.of(model)
    return name.model.lower().startswith(_TIME_BILLED_PREFIXES) or name.provider.lower() == "xai"


REALTIME_HOOKS: Hooks = {"session": _session(_time_billed)}
DUPLEX_HOOKS: Hooks = {"session": _session(lambda model: True)}


class _Response:
    """One response (generation): its usage name, and what it streamed, for an estimate."""

    __slots__ = ("audio_ms", "chars", "span", "usage")

    def __init__(self, usage: str, span: Span) -> None:
        self.usage, self.span = usage, span
        self.chars = 0
        self.audio_ms = 0.0


class _Session:
    """One realtime or duplex session being metered."""

    def __init__(self, model: Any, session: Any, meter: Meter, span: Span, interval: float) -> None:
        self.model, self.session, self.meter, self.span, self.interval = model, session, meter, span, interval
        self.who = Attribution.of(model)
        self.responses: dict[str, _Response] = {}  # created, figures not yet in, by response id
        self.time_usage = ""  # set once the session is known to be billed by time
        self.reported_s = 0.0  # session seconds the provider reported (0: none, bill the connection)
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def watch(cls, model: Any, session: Any, opened: tuple[Meter, Span, float], *, time_billed: bool) -> None:
        with never_raises("watching a realtime session"):
            if not callable(getattr(session, "on", None)) or not callable(getattr(session, "aclose", None)):
                unmetered(model, session, "is not a livekit-agents 1.8 realtime or duplex session")
                return
            watcher = cls(model, session, *opened)
            session.on("metrics_collected", watcher.on_metrics)
            session.on("generation_created", watcher.on_generation)
            session.on("session_reconnected", watcher.on_reconnected)

            def make(aclose: Any) -> Any:
                async def close_session() -> None:
                    try:
                        await aclose()
                    finally:
                        watcher.close()

                return close_session

            shadow(session, "aclose", make)
            if time_billed:
                watcher.bill_time()

    # -- session time --------------------------------------------------------------------------

    def bill_time(self) -> None:
        if self.time_usage or self.closed:
            return
        self.time_usage = self.meter.next_usage("realtime-session")
        self._arm()

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._checkpoint)

    def _checkpoint(self) -> None:
        if self.closed:
            return
        with never_raises("checkpointing a realtime session"):
            self._record_time(Status.CHECKPOINT, "open")
            self._arm()

    def _record_time(self, status: Status, outcome: str) -> None:
        connection_ms = self.span.elapsed_ms()
        provider_ms = round(self.reported_s * 1000)
        if status is Status.CHECKPOINT:
            raw = max(connection_ms, provider_ms)
        else:
            raw = provider_ms if self.reported_s > 0 else connection_ms  # the provider's figure, where it reports one
        meta: Meta = {
            "mode": "realtime_session",
            "outcome": outcome,
            "connection_ms": connection_ms,
            "provider_ms": provider_ms,
            "basis": "provider" if self.reported_s > 0 and raw == provider_ms else "connection",
        }
        end = self.span.start + timedelta(milliseconds=connection_ms)
        fields: dict[str, Any] = {"usage": self.time_usage, "span": self.span, "who": self.who, "end": end}
        record(self.meter, Resource.REALTIME_SESSION, raw, status=status, meta=meta, **fields)

    # -- events --------------------------------------------------------------------------------

    def on_generation(self, event: llm.GenerationCreatedEvent) -> None:
        with never_raises("watching a realtime response"):
            response = _Response(self.meter.next_usage("realtime"), Span(self.meter))
            self.responses[event.response_id or response.usage] = response
            _each(event.message_stream, lambda message: _observe_message(response, message))

    def on_metrics(self, metrics: Any) -> None:
        with never_raises("recording realtime usage"):
            if isinstance(metrics, RealtimeModelMetrics):
                self._on_realtime(metrics)
            elif isinstance(metrics, LLMMetrics):
                self._on_llm(metrics)
            elif isinstance(metrics, STTMetrics):
                self._on_transcription(metrics)

    def on_reconnected(self, _: Any) -> None:
        # responses in flight on the dropped connection never report their figures
        with never_raises("recording interrupted realtime responses"):
            self._estimate_open_responses("reconnected")

    def close(self) -> None:
        if self.closed:
            return
        with never_raises("closing a realtime session's metering"):
            self._estimate_open_responses("closed")
            if self.time_usage:
                self._record_time(Status.OK, "closed")
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()

    # -- usage -----------------------------------------------------------------------------------

    def _who(self, metrics: Any) -> Attribution:
        who = self.who
        metadata = getattr(metrics, "metadata", None)
        if metadata is None:
            return who
        return Attribution(metadata.model_name or who.model, metadata.model_provider or who.provider)

    def _on_realtime(self, metrics: RealtimeModelMetrics) -> None:
        if metrics.session_duration > 0:
            self.reported_s += metrics.session_duration
            self.bill_time()
        tokens = _by_modality(metrics)
        response = self.responses.pop(metrics.request_id, None)
        if response is None:
            if not any(tokens.values()):
                return  # connection timing, or session time alone
            response = _Response(self.meter.next_usage("realtime"), Span(self.meter))
        status, meta = _reported("realtime", metrics)
        self._record_response(response, tokens, status, meta, self._who(metrics))

    def _record_response(
        self, response: _Response, tokens: dict[Resource, int], status: Status, meta: Meta, who: Attribution
    ) -> None:
        span = response.span
        fields: dict[str, Any] = {"usage": response.usage, "span": span, "who": who, "end": span.end()}
        for resource, amount in tokens.items():
            if amount:
                record(self.meter, resource, amount, status=status, meta=meta, **fields)

    def _estimate_open_responses(self, outcome: str) -> None:
        responses, self.responses = self.responses, {}
        if not responses:
            return
        context_chars = _context_chars(self.session)
        for response in responses.values():
            tokens = {
                Resource.REALTIME_INPUT_TEXT: estimated_tokens(context_chars),
                Resource.REALTIME_OUTPUT_TEXT: estimated_tokens(response.chars),
                Resource.REALTIME_OUTPUT_AUDIO: math.ceil(response.audio_ms / AUDIO_OUTPUT_MS_PER_TOKEN),
            }
            meta: Meta = {
                "mode": "realtime",
                "outcome": outcome,
                "estimate": ESTIMATE_METHOD,
                "prompt_chars": context_chars,
                "output_chars": response.chars,
                "output_audio_ms": round(response.audio_ms),
            }
            self._record_response(response, tokens, Status.ESTIMATED, meta, self.who)

    def _on_llm(self, metrics: LLMMetrics) -> None:
        # a duplex model's backend (delegated) LLM: tokens, as for any LLM request
        usage, span = self.meter.next_usage("llm"), Span(self.meter)
        status, meta = _reported("delegated", metrics)
        prompt, cached, completion = metrics.prompt_tokens, metrics.prompt_cached_tokens, metrics.completion_tokens
        record_tokens(self.meter, usage, self._who(metrics), span, prompt, cached, completion, status, meta)

    def _on_transcription(self, metrics: STTMetrics) -> None:
        # input-audio transcription the provider bills on its own, by tokens or by duration
        usage, span, who = self.meter.next_usage("transcription"), Span(self.meter), self._who(metrics)
        meta: Meta = {"mode": "realtime_transcription"}
        if metrics.request_id:
            meta["request_id"] = metrics.request_id[:256]
        fields: dict[str, Any] = {"usage": usage, "span": span, "who": who, "meta": meta}
        if metrics.input_tokens or metrics.output_tokens:
            record(self.meter, Resource.TRANSCRIPTION_INPUT, metrics.input_tokens, **fields)
            record(self.meter, Resource.TRANSCRIPTION_OUTPUT, metrics.output_tokens, **fields)
        elif metrics.audio_duration:
            record(self.meter, Resource.STT, round(metrics.audio_duration * 1000), **fields)


def _reported(mode: str, metrics: RealtimeModelMetrics | LLMMetrics) -> tuple[Status, Meta]:
    """A response's status and meta from the figures its provider reported."""
    meta: Meta = {"mode": mode, "outcome": "cancelled" if metrics.cancelled else "completed"}
    if metrics.request_id:
        meta["request_id"] = metrics.request_id[:256]
    return (Status.CANCELLED if metrics.cancelled else Status.OK), meta


def _by_modality(metrics: RealtimeModelMetrics) -> dict[Resource, int]:
    """A response's tokens per resource, every input token counted once.

    Input tokens the provider did not attribute to a modality count as text. Cached tokens are
    taken out of their modality (``cached_tokens_details``); a cached total without that split is
    taken from text first, then audio, then image.
    """
    given = metrics.input_token_details
    text, audio, image = given.text_tokens, given.audio_tokens, given.image_tokens
    text += max(0, metrics.input_tokens - (text + audio + image))
    split = given.cached_tokens_details
    if split is not None and (split.text_tokens or split.audio_tokens or split.image_tokens):
        cached = [min(split.text_tokens, text), min(split.audio_tokens, audio), min(split.image_tokens, image)]
    else:
        left, cached = given.cached_tokens, []
        for amount in (text, audio, image):
            take = max(0, min(left, amount))
            cached.append(take)
            left -= take
    out = metrics.output_token_details
    out_text = out.text_tokens + max(0, metrics.output_tokens - (out.text_tokens + out.audio_tokens + out.image_tokens))
    return {
        Resource.REALTIME_INPUT_TEXT: text - cached[0],
        Resource.REALTIME_INPUT_AUDIO: audio - cached[1],
        Resource.REALTIME_INPUT_IMAGE: image - cached[2],
        Resource.REALTIME_INPUT_CACHED_TEXT: cached[0],
        Resource.REALTIME_INPUT_CACHED_AUDIO: cached[1],
        Resource.REALTIME_INPUT_CACHED_IMAGE: cached[2],
        Resource.REALTIME_OUTPUT_TEXT: out_text,
        Resource.REALTIME_OUTPUT_AUDIO: out.audio_tokens,
    }


def _context_chars(session: Any) -> int:
    with never_raises("reading a realtime session's context"):
        chars = 0
        for item in session.chat_ctx.items:
            if item.type == "message":
                chars += sum(len(part) for part in item.content if isinstance(part, str))
        return chars
    return 0


# -- what a response streams (for estimates): items put on the provider's channels -------------------


def _each(channel: Any, on_item: Any) -> None:
    """Call ``on_item`` with every item on an ``aio.Chan``: those queued already, and those to come."""
    if not isinstance(channel, aio.Chan):
        return
    for item in list(channel._queue):
        on_item(item)

    def make(send: Any) -> Any:
        def send_nowait(item: Any) -> None:  # per output frame: a plain try, no context manager
            send(item)
            try:
                on_item(item)
            except Exception:
                logger.exception("livekit-metering failed while watching a realtime response")

        return send_nowait

    shadow(channel, "send_nowait", make)


def _observe_message(response: _Response, message: llm.MessageGeneration) -> None:
    def on_text(text: Any) -> None:
        if isinstance(text, str):
            response.chars += len(text)

    def on_audio(frame: Any) -> None:
        if isinstance(frame, rtc.AudioFrame):
            response.audio_ms += frame.duration * 1000

    _each(message.text_stream, on_text)
    _each(message.audio_stream, on_audio)
