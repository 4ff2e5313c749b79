"""A scripted realtime (speech-to-speech) model and a duplex model, offline.

Modelled on livekit-agents' own ``tests/fake_realtime.py`` (a hermetic ``RealtimeSession`` that
answers ``generate_reply()`` with a future), and on what its OpenAI realtime session does with a
response: ``generation_created`` (the reply's future resolved too), one message whose text and
audio stream out over time, then ``RealtimeModelMetrics`` with the response's usage by modality
(``cancelled=True`` and the usage so far when ``interrupt()`` cut it short). Each response's usage
is scripted, so a test can compare the meter with it exactly; ``billed`` is the provider's truth.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import rtc
from livekit.agents import NOT_GIVEN, NotGivenOr, llm, utils
from livekit.agents.metrics import LLMMetrics, RealtimeModelMetrics, STTMetrics
from livekit.agents.metrics.base import Metadata

SAMPLE_RATE = 24_000
CHUNK = 0.1  # seconds of audio per output chunk


@dataclass
class Usage:
    """One response's usage as the provider reports it: input by modality (cached included),
    the cached part of each, output by modality."""

    text_in: int = 0
    audio_in: int = 0
    image_in: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_image: int = 0
    text_out: int = 0
    audio_out: int = 0

    @property
    def input_tokens(self) -> int:
        return self.text_in + self.audio_in + self.image_in

    @property
    def cached_tokens(self) -> int:
        return self.cached_text + self.cached_audio + self.cached_image

    def metrics(self, request_id: str, model: FakeRealtimeModel, *, cancelled: bool) -> RealtimeModelMetrics:
        return RealtimeModelMetrics(
            request_id=request_id,
            timestamp=time.time(),
            label=model.label,
            cancelled=cancelled,
            input_tokens=self.input_tokens,
            output_tokens=self.text_out + self.audio_out,
            total_tokens=self.input_tokens + self.text_out + self.audio_out,
            input_token_details=RealtimeModelMetrics.InputTokenDetails(
                text_tokens=self.text_in,
                audio_tokens=self.audio_in,
                image_tokens=self.image_in,
                cached_tokens=self.cached_tokens,
                cached_tokens_details=RealtimeModelMetrics.CachedTokenDetails(
                    text_tokens=self.cached_text, audio_tokens=self.cached_audio, image_tokens=self.cached_image
                ),
            ),
            output_token_details=RealtimeModelMetrics.OutputTokenDetails(
                text_tokens=self.text_out, audio_tokens=self.audio_out
            ),
            metadata=Metadata(model_name=model.model, model_provider=model.provider),
        )


@dataclass
class Response:
    """A scripted reply: its transcript, its audio, and what the provider bills for it, whole or
    (``cut``) when interrupted. ``silent`` never reports usage (a session closed before it did)."""

    text: str
    audio_seconds: float
    usage: Usage
    cut: Usage = field(default_factory=Usage)
    silent: bool = False


def fake_capabilities(**overrides: bool) -> llm.RealtimeCapabilities:
    flags: dict[str, bool] = {
        "message_truncation": True,
        "turn_detection": False,
        "user_transcription": True,
        "auto_tool_reply_generation": True,
        "audio_output": True,
        "manual_function_calls": True,
        "mutable_chat_context": True,
        "mutable_instructions": True,
        "mutable_tools": True,
        "per_response_tool_choice": True,
    }
    flags.update(overrides)
    return llm.RealtimeCapabilities(**flags)


class FakeRealtimeModel(llm.RealtimeModel):
    """Sessions that answer each ``generate_reply()`` with the next scripted response."""

    def __init__(
        self,
        responses: list[Response],
        *,
        model: str = "openai/gpt-realtime",
        provider: str = "livekit",
        pace: float = 0.01,
        capabilities: llm.RealtimeCapabilities | None = None,
    ) -> None:
        super().__init__(capabilities=capabilities or fake_capabilities())
        self._model, self._provider = model, provider
        self.responses = list(responses)
        self.pace = pace  # wall seconds between audio chunks
        self.sessions: list[FakeRealtimeSession] = []
        self.billed: list[tuple[str, Usage, bool]] = []  # (response id, usage, cancelled) as reported
        self.closed = False
        self.voice = "alloy"

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    def update_options(self, *, voice: str) -> None:
        self.voice = voice

    def session(self, *, turn_detection_disabled: bool = False) -> FakeRealtimeSession:
        session = FakeRealtimeSession(self)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        self.closed = True


class FakeRealtimeSession(llm.RealtimeSession):
    def __init__(self, model: FakeRealtimeModel) -> None:
        super().__init__(model)
        self._model = model
        self._chat_ctx = llm.ChatContext.empty()
        self._tools = llm.ToolContext.empty()
        self._tasks: set[asyncio.Task[None]] = set()
        self._current: asyncio.Event | None = None  # set to interrupt the response in flight
        self.closed_at: float | None = None

    @property
    def chat_ctx(self) -> llm.ChatContext:
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        return self._tools

    async def update_instructions(self, instructions: str) -> None:
        pass

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        self._tools = llm.ToolContext(tools)

    def update_options(self, *, tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN) -> None:
        pass

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        pass

    def push_video(self, frame: rtc.VideoFrame) -> None:
        pass

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        future: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._respond(future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    def commit_audio(self) -> None:
        pass

    def clear_audio(self) -> None:
        pass

    def interrupt(self) -> None:
        if self._current is not None:
            self._current.set()

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        pass

    async def aclose(self) -> None:
        for task in list(self._tasks):
            await utils.aio.cancel_and_wait(task)
        self.closed_at = time.monotonic()

    # -- the provider --------------------------------------------------------------------------

    async def _respond(self, future: asyncio.Future[llm.GenerationCreatedEvent]) -> None:
        model = self._model
        script = model.responses.pop(0)
        response_id = utils.shortuuid("resp_")
        message_ch: utils.aio.Chan[llm.MessageGeneration] = utils.aio.Chan()
        function_ch: utils.aio.Chan[llm.FunctionCall] = utils.aio.Chan()
        text_ch: utils.aio.Chan[str] = utils.aio.Chan()
        audio_ch: utils.aio.Chan[rtc.AudioFrame] = utils.aio.Chan()
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = asyncio.Future()
        modalities.set_result(["audio", "text"])
        event = llm.GenerationCreatedEvent(
            message_stream=message_ch, function_stream=function_ch, user_initiated=True, response_id=response_id
        )
        future.set_result(event)
        self.emit("generation_created", event)  # as the OpenAI session does for every response
        message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=utils.shortuuid("item_"), text_stream=text_ch, audio_stream=audio_ch, modalities=modalities
            )
        )
        interrupted = self._current = asyncio.Event()
        chunks = max(1, round(script.audio_seconds / CHUNK))
        words = script.text.split(" ")
        for i in range(chunks):
            if interrupted.is_set():
                break
            for word in words[i * len(words) // chunks : (i + 1) * len(words) // chunks]:
                text_ch.send_nowait(word + " ")
            samples = int(SAMPLE_RATE * CHUNK)
            audio_ch.send_nowait(rtc.AudioFrame(b"\x00\x00" * samples, SAMPLE_RATE, 1, samples))
            await asyncio.sleep(model.pace)
        for channel in (text_ch, audio_ch, message_ch, function_ch):  # response done: every stream ends
            channel.close()
        self._current = None
        if script.silent:
            return
        cancelled = interrupted.is_set()
        usage = script.cut if cancelled else script.usage
        model.billed.append((response_id, usage, cancelled))
        self.emit("metrics_collected", usage.metrics(response_id, model, cancelled=cancelled))

    def report_transcription(self, *, input_tokens: int = 0, output_tokens: int = 0, seconds: float = 0.0) -> None:
        """Input-audio transcription the provider bills apart (what the OpenAI session emits)."""
        self.emit(
            "metrics_collected",
            STTMetrics(
                request_id=utils.shortuuid("tr_"),
                timestamp=time.time(),
                duration=0.0,
                label=self._model.label,
                audio_duration=seconds,
                streamed=True,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                metadata=Metadata(model_name="gpt-4o-transcribe", model_provider=self._model.provider),
            ),
        )


class FakeDuplexModel(llm.DuplexModel):
    """A duplex model billed by the seconds it reports (cumulatively, like GPT-Live), with the
    tokens of a delegated backend LLM; it never speaks."""

    def __init__(self, *, model: str = "openai/gpt-live-1", provider: str = "livekit") -> None:
        capabilities = llm.DuplexCapabilities(user_transcription=False, auto_tool_reply_generation=False)
        super().__init__(capabilities=capabilities)
        self._model, self._provider = model, provider
        self.sessions: list[FakeDuplexSession] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    def session(self) -> FakeDuplexSession:
        session = FakeDuplexSession(self)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        pass


class FakeDuplexSession(llm.DuplexSession):
    def __init__(self, model: FakeDuplexModel) -> None:
        super().__init__(model)
        self._model = model
        self._audio: utils.aio.Chan[llm.DuplexAudioFrame] = utils.aio.Chan()
        self._reported = 0.0

    @property
    def audio_stream(self) -> Any:
        return self._audio

    @property
    def tools(self) -> llm.ToolContext:
        return llm.ToolContext.empty()

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        pass

    async def aclose(self) -> None:
        await super().aclose()
        self._audio.close()

    async def _update_instructions(self, instructions: str) -> None:
        pass

    async def _append_items(self, items: list[llm.ChatItem]) -> None:
        pass

    async def _update_tools(self, tools: list[llm.Tool]) -> None:
        pass

    def _update_options(self, *, tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN) -> None:
        pass

    def report_seconds(self, total: float) -> None:
        """The provider's cumulative voice seconds; only the delta goes out, as GPT-Live does."""
        delta, self._reported = total - self._reported, total
        self.emit(
            "metrics_collected",
            RealtimeModelMetrics(
                request_id="sess_1",
                timestamp=time.time(),
                session_duration=delta,
                label=self._model.label,
                input_token_details=RealtimeModelMetrics.InputTokenDetails(),
                output_token_details=RealtimeModelMetrics.OutputTokenDetails(),
                metadata=Metadata(model_name=self._model.model, model_provider=self._model.provider),
            ),
        )

    def report_backend(self, prompt: int, cached: int, completion: int) -> None:
        self.emit(
            "metrics_collected",
            LLMMetrics(
                label=self._model.label,
                request_id=utils.shortuuid("resp_"),
                timestamp=time.time(),
                duration=0,
                ttft=-1,
                cancelled=False,
                prompt_tokens=prompt,
                prompt_cached_tokens=cached,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                tokens_per_second=0,
                metadata=Metadata(model_name="gpt-5.6-luna", model_provider=self._model.provider),
            ),
        )
