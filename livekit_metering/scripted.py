"""Scripted STT, LLM and TTS models and fake audio I/O, for running a real AgentSession offline.

They stand in for paid providers at the boundary: the framework around them (AgentSession, the
job runner, the metering adapters) is the real thing. They report themselves as LiveKit Inference
models (provider ``livekit``, model ``deepgram/nova-3`` ...) so the price book prices them, and
they count what a provider would bill, so tests and the demo can check the meter against it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from livekit import rtc
from livekit.agents import APIConnectOptions, llm, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.voice import io

__all__ = ["FakeAudioInput", "FakeAudioOutput", "ScriptedLLM", "ScriptedSTT", "ScriptedTTS"]

SAMPLE_RATE = 16_000
SECONDS_PER_CHAR = 0.01  # how much (silent) audio the scripted TTS makes per character


class ScriptedLLM(llm.LLM[Any]):
    """Answers each request with the next scripted reply, streamed word by word, then its usage."""

    def __init__(self, replies: list[str], *, model: str = "openai/gpt-4.1-mini", cached_tokens: int = 0) -> None:
        super().__init__()
        self._replies = deque(replies)
        self._model = model
        self.cached_tokens = cached_tokens
        self.billed_input = self.billed_output = 0  # what the provider would bill

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return "livekit"

    def next_reply(self) -> str:
        return self._replies.popleft() if self._replies else "Is there anything else?"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _ScriptedLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _ScriptedLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        model: ScriptedLLM = self._llm  # type: ignore[assignment]
        request_id = utils.shortuuid("chatcmpl-")
        contents = (c for item in self._chat_ctx.items for c in getattr(item, "content", []))
        prompt_chars = sum(len(c) for c in contents if isinstance(c, str))
        words = model.next_reply().split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            delta = llm.ChoiceDelta(role="assistant", content=word if i == len(words) - 1 else word + " ")
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
        prompt_tokens = max(1, prompt_chars // 4) + model.cached_tokens
        model.billed_input += prompt_tokens
        model.billed_output += len(words)
        usage = llm.CompletionUsage(
            completion_tokens=len(words),
            prompt_tokens=prompt_tokens,
            prompt_cached_tokens=model.cached_tokens,
            total_tokens=prompt_tokens + len(words),
        )
        self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))


class ScriptedSTT(stt.STT[Any]):
    """A streaming STT that hears the next scripted line when ``say()`` is called.

    The stream stays open the whole session and receives every frame (silence included), as a
    real streaming provider's connection does; it reports RECOGNITION_USAGE every second of audio.
    """

    def __init__(self, *, model: str = "deepgram/nova-3") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._model = model
        self._pending: deque[str] = deque()
        self.audio_seconds = 0.0  # audio the provider received

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return "livekit"

    def say(self, text: str) -> None:
        """The user says ``text``: the next audio frame ends with its final transcript."""
        self._pending.append(text)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        text = self._pending.popleft() if self._pending else ""
        heard = stt.SpeechData(language=LanguageCode("en"), text=text)
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[heard])

    def stream(
        self, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> stt.RecognizeStream:
        return _ScriptedSTTStream(stt=self, conn_options=conn_options)


class _ScriptedSTTStream(stt.RecognizeStream):
    async def _run(self) -> None:
        model: ScriptedSTT = self._stt  # type: ignore[assignment]
        request_id = utils.shortuuid("stt-")
        unreported = 0.0
        try:
            async for data in self._input_ch:
                if not isinstance(data, rtc.AudioFrame):
                    continue
                model.audio_seconds += data.duration
                unreported += data.duration
                if model._pending:
                    text = model._pending.popleft()
                    for event in (
                        stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH, request_id=request_id),
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                            request_id=request_id,
                            alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text)],
                        ),
                        stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, request_id=request_id),
                    ):
                        self._event_ch.send_nowait(event)
                if unreported >= 1.0:
                    self._report(request_id, unreported)
                    unreported = 0.0
        finally:
            if unreported > 0:
                self._report(request_id, unreported)

    def _report(self, request_id: str, seconds: float) -> None:
        usage = stt.RecognitionUsage(audio_duration=seconds)
        self._event_ch.send_nowait(
            stt.SpeechEvent(type=stt.SpeechEventType.RECOGNITION_USAGE, request_id=request_id, recognition_usage=usage)
        )


class ScriptedTTS(tts.TTS[Any]):
    """A streaming TTS that turns text into silence of proportional length, counting characters received."""

    def __init__(self, *, model: str = "cartesia/sonic-3", sample_rate: int = 24_000) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True), sample_rate=sample_rate, num_channels=1)
        self._model = model
        self.characters = 0  # what the provider received (and bills)

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return "livekit"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _ScriptedChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> tts.SynthesizeStream:
        return _ScriptedSynthesizeStream(tts=self, conn_options=conn_options)


def _pcm(text: str, sample_rate: int) -> bytes:
    return b"\x00\x00" * int(len(text) * SECONDS_PER_CHAR * sample_rate)


class _ScriptedChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        model: ScriptedTTS = self._tts  # type: ignore[assignment]
        model.characters += len(self._input_text)
        output_emitter.initialize(
            request_id=utils.shortuuid(), sample_rate=model.sample_rate, num_channels=1, mime_type="audio/pcm"
        )
        output_emitter.push(_pcm(self._input_text, model.sample_rate))
        output_emitter.flush()


class _ScriptedSynthesizeStream(tts.SynthesizeStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        model: ScriptedTTS = self._tts  # type: ignore[assignment]
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=model.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        text = ""
        async for data in self._input_ch:
            if isinstance(data, str):
                self._mark_started()
                model.characters += len(data)
                text += data
            else:
                output_emitter.push(_pcm(text, model.sample_rate))
                text = ""
        output_emitter.end_segment()


class FakeAudioInput(io.AudioInput):
    """A microphone that sends 20 ms frames of silence in real time, forever."""

    def __init__(self) -> None:
        super().__init__(label="fake-mic")
        self.seconds = 0.0

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(0.02)
        samples = SAMPLE_RATE // 50
        self.seconds += 0.02
        return rtc.AudioFrame(b"\x00\x00" * samples, SAMPLE_RATE, 1, samples)


class FakeAudioOutput(io.AudioOutput):
    """A speaker that plays every segment instantly."""

    def __init__(self) -> None:
        super().__init__(label="fake-speaker", capabilities=io.AudioOutputCapabilities(pause=False))
        self.seconds = 0.0
        self._segment = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment == 0.0:
            self.on_playback_started(created_at=time.time())
        self._segment += frame.duration

    def flush(self) -> None:
        super().flush()
        played, self._segment = self._segment, 0.0
        self.seconds += played
        self._finish_soon(played, interrupted=False)

    def clear_buffer(self) -> None:
        played, self._segment = self._segment, 0.0
        self._finish_soon(played, interrupted=True)

    def _finish_soon(self, played: float, *, interrupted: bool) -> None:
        # The framework expects the "finished" signal after flush() returns, as a real speaker sends it.
        def finish() -> None:
            self.on_playback_finished(playback_position=played, interrupted=interrupted)

        asyncio.get_running_loop().call_soon(finish)
