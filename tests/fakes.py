"""Offline fakes for livekit-agents 1.8.9: scripted providers at the boundary, no network.

Adapted from the reference experiments. Each fake keeps its own ground truth (what the "provider"
received or reported), so tests can compare metered totals with it exactly.

FakeLLM          streams a canned reply word by word; the last chunk carries CompletionUsage
FakeSTT          streaming STT: a final transcript per flush, RECOGNITION_USAGE every `usage_every` s
FakeBatchSTT     non-streaming STT (recognize only), optionally failing
FakeUtteranceSTT streaming STT that hears one utterance, then silence (for the voice pipeline)
FakeTTS          streaming or chunked TTS producing silence proportional to the text
FakeVAD          every frame is speech; flush() ends the utterance
(the fake microphone and speaker are livekit_metering.scripted.FakeAudioInput / FakeAudioOutput)
MemoryExporter / RaisingExporter   a record sink that keeps everything, and one that always fails
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, llm, stt, tts, utils
from livekit.agents import vad as _vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

__all__ = [
    "FakeBatchSTT",
    "FakeLLM",
    "FakeSTT",
    "FakeTTS",
    "FakeUtteranceSTT",
    "FakeVAD",
    "MemoryExporter",
    "RaisingExporter",
    "silence",
]


# --------------------------------------------------------------------------------------- LLM
class FakeLLM(llm.LLM):
    """Streams ``reply`` word by word; the final chunk reports usage.

    Usage is scripted: ``prompt_tokens`` (default: prompt characters // 4, at least 1),
    ``cached_tokens`` and ``completion_tokens`` (default: one per word). ``reported`` lists the
    usage of every request that reached the end, the provider-side truth.
    """

    def __init__(
        self,
        *,
        reply: str = "Hello! I am a fake model and I answer deterministically.",
        chunk_delay: float = 0.0,
        send_usage: bool = True,
        fail_after_chunks: int | None = None,
        fail_attempts: int = 0,
        prompt_tokens: int | None = None,
        cached_tokens: int = 0,
        completion_tokens: int | None = None,
        model: str = "fake-llm-1",
        provider: str = "fakeprovider",
    ) -> None:
        super().__init__()
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.send_usage = send_usage
        self.fail_after_chunks = fail_after_chunks
        self.fail_attempts = fail_attempts  # the first N attempts fail with a retryable error
        self.attempts = 0
        self.chunks_sent = 0
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = completion_tokens
        self._model = model
        self._provider = provider
        self.requests = 0
        self.reported: list[llm.CompletionUsage] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests += 1
        return _FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _FakeLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        fake: FakeLLM = self._llm  # type: ignore[assignment]
        fake.attempts += 1
        if fake.attempts <= fake.fail_attempts:
            raise APIConnectionError("fake provider is briefly unavailable", retryable=True)
        rid = utils.shortuuid("chatcmpl-")
        prompt_chars = sum(
            len(t) for item in self._chat_ctx.items for t in getattr(item, "content", []) if isinstance(t, str)
        )
        words = fake.reply.split(" ")
        for i, w in enumerate(words):
            if fake.fail_after_chunks is not None and i == fake.fail_after_chunks:
                raise APIConnectionError("fake provider dropped the connection", retryable=False)
            if fake.chunk_delay:
                await asyncio.sleep(fake.chunk_delay)
            content = w + (" " if i < len(words) - 1 else "")
            self._event_ch.send_nowait(llm.ChatChunk(id=rid, delta=llm.ChoiceDelta(role="assistant", content=content)))
            fake.chunks_sent += 1
        if fake.send_usage:
            prompt = fake.prompt_tokens if fake.prompt_tokens is not None else max(1, prompt_chars // 4)
            completion = fake.completion_tokens if fake.completion_tokens is not None else len(words)
            usage = llm.CompletionUsage(
                completion_tokens=completion,
                prompt_tokens=prompt,
                prompt_cached_tokens=fake.cached_tokens,
                total_tokens=completion + prompt,
            )
            fake.reported.append(usage)
            self._event_ch.send_nowait(llm.ChatChunk(id=rid, usage=usage))


# --------------------------------------------------------------------------------------- STT
class FakeSTT(stt.STT):
    """Streaming STT. ``received`` sums the audio seconds the provider got; ``reported`` the
    seconds it reported through RECOGNITION_USAGE (the rest is reported when the stream ends)."""

    def __init__(
        self,
        *,
        usage_every: float = 1.0,
        usage_only_at_end: bool = False,
        fail: bool = False,
        fail_attempts: int = 0,
        report_usage: bool = True,
        model: str = "fake-stt-1",
        provider: str = "fakeprovider",
        streaming: bool = True,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=streaming, interim_results=False))
        self.report_usage = report_usage
        self.usage_every = usage_every
        self.usage_only_at_end = usage_only_at_end
        self.fail = fail
        self.fail_attempts = fail_attempts  # the first N streams drop with a retryable error
        self.attempts = 0  # streams (connections) the provider saw
        self._model = model
        self._provider = provider
        self.received = 0.0
        self.reported = 0.0
        self.recognized: list[float] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    async def _recognize_impl(
        self,
        buffer: Any,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        if self.fail:
            raise APIConnectionError("fake stt failure", retryable=False)
        frames = buffer if isinstance(buffer, list) else [buffer]
        self.recognized.append(sum(f.duration for f in frames))
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[stt.SpeechData(language="en", text="batch transcript")],
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        if not self.capabilities.streaming:
            raise NotImplementedError("FakeSTT(streaming=False) only recognizes")
        return _FakeRecognizeStream(stt=self, conn_options=conn_options)

    def _usage(self, rid: str, seconds: float) -> stt.SpeechEvent:
        self.reported += seconds
        return stt.SpeechEvent(
            type=stt.SpeechEventType.RECOGNITION_USAGE,
            request_id=rid,
            recognition_usage=stt.RecognitionUsage(audio_duration=seconds),
        )


class _FakeRecognizeStream(stt.RecognizeStream):
    async def _run(self) -> None:
        fake: FakeSTT = self._stt  # type: ignore[assignment]
        rid = utils.shortuuid("stt-")
        pending = total = 0.0
        fake.attempts += 1
        attempt = fake.attempts
        try:
            async for data in self._input_ch:
                if fake.fail:
                    raise APIConnectionError("fake stt failure", retryable=False)
                if attempt <= fake.fail_attempts:
                    raise APIConnectionError("fake stt connection dropped", retryable=True)
                if isinstance(data, rtc.AudioFrame):
                    pending += data.duration
                    total += data.duration
                    fake.received += data.duration
                    if fake.report_usage and not fake.usage_only_at_end and pending >= fake.usage_every:
                        self._event_ch.send_nowait(fake._usage(rid, pending))
                        pending = 0.0
                else:  # flush sentinel
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                            request_id=rid,
                            alternatives=[stt.SpeechData(language="en", text=f"heard {total:.2f}s")],
                        )
                    )
        finally:
            # report the remainder when the connection closes (common provider behaviour)
            if fake.report_usage and pending > 0:
                self._event_ch.send_nowait(fake._usage(rid, pending))


class FakeBatchSTT(FakeSTT):
    def __init__(self, **kw: Any) -> None:
        super().__init__(streaming=False, **kw)


class FakeUtteranceSTT(FakeSTT):
    """Streaming STT that hears one utterance in the first ``utterance_seconds`` of audio, then silence."""

    def __init__(self, *, text: str = "what is my balance", utterance_seconds: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.text = text
        self.utterance_seconds = utterance_seconds

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _FakeUtteranceStream(stt=self, conn_options=conn_options)


class _FakeUtteranceStream(stt.RecognizeStream):
    async def _run(self) -> None:
        fake: FakeUtteranceSTT = self._stt  # type: ignore[assignment]
        rid = utils.shortuuid("stt-")
        total = pending = 0.0
        said = False
        try:
            async for data in self._input_ch:
                if not isinstance(data, rtc.AudioFrame):
                    continue
                if total == 0.0:
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH, request_id=rid)
                    )
                total += data.duration
                pending += data.duration
                fake.received += data.duration
                if not said and total >= fake.utterance_seconds:
                    said = True
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                            request_id=rid,
                            alternatives=[stt.SpeechData(language="en", text=fake.text)],
                        )
                    )
                    self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, request_id=rid))
                if pending >= fake.usage_every:
                    self._event_ch.send_nowait(fake._usage(rid, pending))
                    pending = 0.0
        finally:
            if pending > 0:
                self._event_ch.send_nowait(fake._usage(rid, pending))


def silence(seconds: float, sr: int = 16000, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    n = int(sr * frame_ms / 1000)
    return [rtc.AudioFrame(b"\x00\x00" * n, sr, 1, n) for _ in range(round(seconds * 1000 / frame_ms))]


# --------------------------------------------------------------------------------------- TTS
SECONDS_PER_CHAR = 0.05


class FakeTTS(tts.TTS):
    """Streaming or chunked TTS. ``received_chars`` counts the text the provider received."""

    def __init__(
        self,
        *,
        streaming: bool = True,
        chunk_delay: float = 0.0,
        sample_rate: int = 24000,
        model: str = "fake-tts-1",
        provider: str = "fakeprovider",
        fail: bool = False,
        seconds_per_char: float = SECONDS_PER_CHAR,
    ) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=streaming), sample_rate=sample_rate, num_channels=1)
        self.chunk_delay = chunk_delay
        self.received_chars = 0
        self.streams = 0  # streams the provider served (recovery probes included)
        self.fail = fail
        self.seconds_per_char = seconds_per_char
        self._model = model
        self._provider = provider

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> tts.SynthesizeStream:
        if not self.capabilities.streaming:
            raise NotImplementedError
        return _FakeSynthesizeStream(tts=self, conn_options=conn_options)

    def update_options(self, **options: Any) -> None:
        """Like a plugin's update_options(): change how the provider behaves from now on."""
        for name, value in options.items():
            setattr(self, name, value)

    def pcm_for(self, text: str) -> bytes:
        return b"\x00\x00" * int(len(text) * self.seconds_per_char * self.sample_rate)


class _FakeChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake: FakeTTS = self._tts  # type: ignore[assignment]
        if fake.fail:
            raise APIConnectionError("fake tts failure", retryable=False)
        fake.received_chars += len(self._input_text)
        output_emitter.initialize(
            request_id=utils.shortuuid(), sample_rate=fake.sample_rate, num_channels=1, mime_type="audio/pcm"
        )
        if fake.chunk_delay:
            await asyncio.sleep(fake.chunk_delay)
        output_emitter.push(fake.pcm_for(self._input_text))
        output_emitter.flush()


class _FakeSynthesizeStream(tts.SynthesizeStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake: FakeTTS = self._tts  # type: ignore[assignment]
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=fake.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        buf = ""
        fake.streams += 1
        async for data in self._input_ch:
            if isinstance(data, str):
                self._mark_started()
                fake.received_chars += len(data)  # the provider receives (and bills) text as it is sent
                buf += data
                if fake.fail:  # then drops the connection
                    raise APIConnectionError("fake tts stream failure", retryable=False)
            else:
                if fake.chunk_delay:
                    await asyncio.sleep(fake.chunk_delay)
                if buf:
                    output_emitter.push(fake.pcm_for(buf))
                buf = ""
        output_emitter.end_segment()


# --------------------------------------------------------------------------------------- VAD
class FakeVAD(_vad.VAD):
    """Every pushed frame is speech; a flush() ends the utterance (END_OF_SPEECH with its frames)."""

    def __init__(self) -> None:
        super().__init__(capabilities=_vad.VADCapabilities(update_interval=0.1))

    def stream(self) -> _vad.VADStream:
        return _FakeVADStream(self)


class _FakeVADStream(_vad.VADStream):
    async def _main_task(self) -> None:
        frames: list[rtc.AudioFrame] = []
        async for data in self._input_ch:
            if isinstance(data, rtc.AudioFrame):
                if not frames:
                    self._event_ch.send_nowait(
                        _vad.VADEvent(
                            type=_vad.VADEventType.START_OF_SPEECH,
                            samples_index=0,
                            timestamp=0.0,
                            speech_duration=0.0,
                            silence_duration=0.0,
                            speaking=True,
                        )
                    )
                frames.append(data)
            elif frames:
                self._event_ch.send_nowait(
                    _vad.VADEvent(
                        type=_vad.VADEventType.END_OF_SPEECH,
                        samples_index=0,
                        timestamp=0.0,
                        speech_duration=sum(f.duration for f in frames),
                        silence_duration=0.0,
                        frames=frames,
                        speaking=False,
                    )
                )
                frames = []


# --------------------------------------------------------------------------------------- audio I/O
# --------------------------------------------------------------------------------------- exporters
class MemoryExporter:
    """Keeps every exported record, in order (checkpoints included)."""

    def __init__(self) -> None:
        self.exported: list[Any] = []

    def export(self, batch: Any) -> None:
        self.exported.extend(batch)

    def shutdown(self) -> None:
        pass


class RaisingExporter:
    """An exporter whose sink is broken: every export raises."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, batch: Any) -> None:
        self.calls += 1
        raise OSError("disk full")

    def shutdown(self) -> None:
        pass
