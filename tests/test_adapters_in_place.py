"""Metering a model in place changes nothing the agent can see.

Modelled on livekit-agents' own adapter tests (tests/test_tts_fallback.py, test_stt_fallback.py,
test_llm_fallback.py: fallback, retries, recovery, aclose) and session tests. Each scenario runs
twice, on bare models and on metered ones, and what the agent sees (audio, text, events, errors,
the objects handed around) must be the same; the metered run's records are then checked against
what the scripted providers received, exactly, recovery probes included.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any

import pytest
from fakes import FakeLLM, FakeSTT, FakeTTS, FakeUtteranceSTT, MemoryExporter, silence
from harness.jobproc import run_job
from livekit.agents import Agent, AgentSession, APIConnectionError, APIConnectOptions, JobContext, inference, llm, stt
from livekit.agents import tts as lk_tts
from livekit.agents.voice.agent_activity import AgentActivity

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS, is_metered, metered_models
from livekit_metering.entrypoint import metered
from livekit_metering.meter import Meter
from livekit_metering.records import MeterRecord, Resource, Status
from livekit_metering.scripted import FakeAudioInput, FakeAudioOutput

TEXT = "Your order ships tomorrow morning."
MODES = pytest.mark.parametrize("metering", [False, True], ids=["bare", "metered"])


def _meter() -> Meter:
    return Meter(session_id="AJ_place", exporter=MemoryExporter())


def _maybe(metering: bool, meter: Meter) -> Callable[[Any], Any]:
    """Meter a model, or leave it bare: the scenario is the same either way."""

    def wrap(model: Any) -> Any:
        if not metering:
            return model
        metered_model = (
            MeteredSTT(model, meter=meter)
            if isinstance(model, stt.STT)
            else MeteredTTS(model, meter=meter)
            if isinstance(model, lk_tts.TTS)
            else MeteredLLM(model, meter=meter)
        )
        assert metered_model is model
        return model

    return wrap


def _by_model(records: list[MeterRecord]) -> dict[str, list[MeterRecord]]:
    grouped: dict[str, list[MeterRecord]] = {}
    for record in records:
        grouped.setdefault(record.model, []).append(record)
    return grouped


def _ctx(text: str = "Tell me a long story about billing systems please") -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    return ctx


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


# -- the model stays itself -----------------------------------------------------------------------------


class OptionsTTS(FakeTTS):
    """A plugin's surface: update_options() and a provider attribute of its own."""

    region = "eu-west"


@pytest.mark.parametrize(
    "make",
    [
        lambda: FakeSTT(),
        lambda: FakeLLM(),
        lambda: OptionsTTS(),
        lambda: inference.TTS("cartesia/sonic-3", api_key="k" * 32, api_secret="s" * 32),
        lambda: inference.STT("deepgram/nova-3:multi", api_key="k" * 32, api_secret="s" * 32),
        lambda: inference.LLM("openai/gpt-4.1-mini", api_key="k" * 32, api_secret="s" * 32),
    ],
    ids=["stt", "llm", "tts", "inference-tts", "inference-stt", "inference-llm"],
)
async def test_a_metered_model_is_the_same_object_of_the_same_class(make: Callable[[], Any]) -> None:
    model = make()
    cls, label, shown = type(model), model.label, repr(model).split(" at ")[0]
    meter_it: Callable[[Any], Any] = (
        MeteredLLM if isinstance(model, llm.LLM) else MeteredSTT if isinstance(model, stt.STT) else MeteredTTS
    )
    assert meter_it(model) is model and type(model) is cls and is_metered(model)
    assert model.label == label and repr(model).split(" at ")[0] == shown
    assert meter_it(model) is model  # metering again is a no-op
    if isinstance(model, OptionsTTS):
        model.update_options(chunk_delay=0.5)
        assert model.chunk_delay == 0.5 and model.region == "eu-west"
        stream = model.stream()
        assert type(stream).__name__ == "_FakeSynthesizeStream" and stream._tts is model
        await stream.aclose()
    if isinstance(model, inference.TTS):
        model.update_options(voice="new-voice")
        assert model._opts.voice == "new-voice"
        await model.aclose()


async def test_expressive_mode_stays_on_for_a_metered_livekit_inference_tts() -> None:
    model = MeteredTTS(inference.TTS("cartesia/sonic-3", api_key="k" * 32, api_secret="s" * 32))
    assert isinstance(model, (inference.TTS, lk_tts.StreamAdapter))  # AgentSession's own check
    activity = types.SimpleNamespace(
        tts=model, _agent=types.SimpleNamespace(expressive=True), _session=types.SimpleNamespace(_expressive=True)
    )
    assert AgentActivity._resolve_expressive_options(activity) is not None  # type: ignore[arg-type]
    await model.aclose()


class CollectStream(llm.LLMStream):
    async def _run(self) -> None:
        self._event_ch.send_nowait(llm.ChatChunk(id="x", delta=llm.ChoiceDelta(role="assistant", content="raw")))
        usage = llm.CompletionUsage(completion_tokens=1, prompt_tokens=12, total_tokens=13)
        self._event_ch.send_nowait(llm.ChatChunk(id="x", usage=usage))

    async def collect(self) -> llm.CollectedResponse:  # the provider's own override
        async with self:
            async for _ in self:
                pass
        return llm.CollectedResponse(text="overridden collect")


class CollectLLM(FakeLLM):
    def chat(self, **kwargs: Any) -> llm.LLMStream:
        return CollectStream(self, chat_ctx=kwargs["chat_ctx"], tools=[], conn_options=APIConnectOptions())


@MODES
async def test_a_provider_stream_keeps_its_own_collect(metering: bool) -> None:
    meter = _meter()
    model = _maybe(metering, meter)(CollectLLM())
    stream = model.chat(chat_ctx=_ctx())
    assert type(stream) is CollectStream
    assert (await stream.collect()).text == "overridden collect"
    if metering:
        assert [(r.resource, r.raw) for r in meter.records] == [(Resource.LLM_INPUT, 12), (Resource.LLM_OUTPUT, 1)]


class DuckStream:
    """What a hand-written provider may return: collect() and iteration, no aclose(), no task."""

    def __init__(self) -> None:
        self.collected = False

    async def collect(self) -> llm.CollectedResponse:
        self.collected = True
        return llm.CollectedResponse(text="duck")


class DuckLLM(FakeLLM):
    def chat(self, **kwargs: Any) -> Any:
        return DuckStream()


async def test_a_request_that_cannot_be_observed_is_returned_untouched_and_said_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    meter = _meter()
    model = MeteredLLM(DuckLLM(), meter=meter)
    with caplog.at_level(logging.ERROR, logger="livekit_metering.adapters"):
        stream = model.chat(chat_ctx=_ctx())
    assert type(stream) is DuckStream and (await stream.collect()).text == "duck"
    assert meter.records == [] and "cannot meter requests of DuckLLM" in caplog.text


def test_what_cannot_be_metered_in_place_fails_when_it_is_metered() -> None:
    with pytest.raises(TypeError, match=r"MeteredSTT\(\) meters an stt.STT, not FakeLLM"):
        MeteredSTT(FakeLLM())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot meter object"):
        metered_models(llm=object())  # type: ignore[arg-type]
    fallback = lk_tts.FallbackAdapter([FakeTTS()])
    del fallback._tts_instances  # a livekit-agents release that keeps its children elsewhere
    with pytest.raises(TypeError, match="no longer keeps its models in _tts_instances"):
        MeteredTTS(fallback)


# -- FallbackAdapter: audio, failover, recovery, retries -----------------------------------------------


@MODES
async def test_streaming_tts_fallback_speaks_fails_over_and_bills_each_attempt_and_probe(metering: bool) -> None:
    meter = _meter()
    wrap = _maybe(metering, meter)
    primary = FakeTTS(fail=True, model="primary-tts", provider="alpha")
    backup = FakeTTS(model="backup-tts", provider="beta")
    adapter = lk_tts.FallbackAdapter([wrap(primary), wrap(backup)], max_retry_per_tts=0)
    changes: list[tuple[str, bool]] = []
    adapter.on("tts_availability_changed", lambda ev: changes.append((ev.tts.model, ev.available)))

    async def speak() -> float:
        stream = adapter.stream()
        stream.push_text(TEXT)  # one push: the provider receives all of it or nothing
        stream.end_input()
        seconds = sum([ev.frame.duration async for ev in stream])
        await stream.aclose()
        return seconds

    first = await speak()  # primary fails over to backup; a probe of the primary fails as well
    await _until(lambda: primary.streams == 2)
    primary.update_options(fail=False)
    second = await speak()  # primary skipped; its probe now succeeds
    await _until(lambda: ("primary-tts", True) in changes)
    third = await speak()  # the recovered primary serves
    await adapter.aclose()

    assert first == second == third == pytest.approx(len(TEXT) * 0.05, abs=0.01)  # the audio the agent gets
    assert changes == [("primary-tts", False), ("primary-tts", True)]
    assert (primary.streams, backup.streams) == (4, 2)  # the failed attempt, two probes, one served
    assert (primary.received_chars, backup.received_chars) == (4 * len(TEXT), 2 * len(TEXT))
    if metering:
        billed = _by_model(meter.records)
        assert [r.raw for r in billed["primary-tts"]] == [len(TEXT)] * 4  # each probe billed, as LiveKit does
        assert [r.raw for r in billed["backup-tts"]] == [len(TEXT)] * 2
        assert {r.provider for r in billed["primary-tts"]} == {"alpha"}


@MODES
async def test_chunked_tts_fallback_fails_over_and_bills_the_failed_attempt(metering: bool) -> None:
    meter = _meter()
    wrap = _maybe(metering, meter)
    primary = FakeTTS(streaming=False, fail=True, model="primary-tts")
    backup = FakeTTS(streaming=False, model="backup-tts")
    adapter = lk_tts.FallbackAdapter([wrap(primary), wrap(backup)], max_retry_per_tts=0)
    frame = await adapter.synthesize(TEXT).collect()
    for status in adapter._status:  # the primary's recovery probe, a billed request of its own
        if status.recovering_synthesize_task is not None:
            await status.recovering_synthesize_task
    await adapter.aclose()
    assert frame.duration == pytest.approx(len(TEXT) * 0.05, abs=0.01)
    if metering:
        billed = _by_model(meter.records)
        assert [(r.raw, r.status) for r in billed["primary-tts"]] == [(len(TEXT), Status.ERROR)] * 2
        assert [(r.raw, r.status) for r in billed["backup-tts"]] == [(len(TEXT), Status.OK)]
        assert backup.received_chars == len(TEXT)


@MODES
async def test_stt_fallback_retries_then_fails_over_and_bills_every_stream(metering: bool) -> None:
    meter = _meter()
    wrap = _maybe(metering, meter)
    primary = FakeSTT(fail_attempts=100, model="primary-stt")  # drops every connection (retryable)
    backup = FakeSTT(model="backup-stt")
    adapter = stt.FallbackAdapter([wrap(primary), wrap(backup)], max_retry_per_stt=1, retry_interval=0.0)
    errors: list[tuple[str, bool]] = []
    for model in (primary, backup):
        model.on("error", lambda ev, name=model.model: errors.append((name, ev.recoverable)))
    stream = adapter.stream()
    for frame in silence(0.4):
        stream.push_frame(frame)
    stream.end_input()
    events = [ev.type async for ev in stream]
    await stream.aclose()
    probe = adapter._status[0].recovering_stream_task
    assert probe is not None and not probe.done()  # a recovery probe of the primary, waiting for audio
    await adapter.aclose()
    await stream.aclose()
    assert stt.SpeechEventType.FINAL_TRANSCRIPT in events
    assert errors == [("primary-stt", True), ("primary-stt", False)]  # retried once, then given up
    assert (primary.attempts, backup.attempts) == (3, 1)  # two tries of the stream, then its recovery probe
    if metering:
        billed = _by_model(meter.records)
        # the failed stream (its retry inside the same usage), and the probe, open until the adapter closed it
        assert [(r.status, r.meta["outcome"]) for r in billed["primary-stt"]] == [
            (Status.ERROR, "error"),
            (Status.OK, "closed"),
        ]
        (served,) = billed["backup-stt"]
        assert served.status is Status.OK and served.meta["audio_ms"] == round(backup.received * 1000)


@MODES
async def test_llm_fallback_retries_fails_over_and_bills_the_failed_attempt_and_its_probe(metering: bool) -> None:
    meter = _meter()
    wrap = _maybe(metering, meter)
    primary = FakeLLM(model="primary-1", fail_attempts=100)  # down: every attempt fails (retryable)
    backup = FakeLLM(model="backup-1", fail_attempts=1, prompt_tokens=30, completion_tokens=7)
    adapter = llm.FallbackAdapter([wrap(primary), wrap(backup)], max_retry_per_llm=1, retry_interval=0.0)
    response = await adapter.chat(chat_ctx=_ctx()).collect()
    for status in adapter._status:
        if status.recovering_task is not None:
            await status.recovering_task
    await adapter.aclose()
    assert response.text == "Hello! I am a fake model and I answer deterministically."
    assert (primary.attempts, backup.attempts) == (4, 2)  # 2 tries, then a probe of 2 tries; a retry on the backup
    if metering:
        billed = _by_model(meter.records)
        prompt = -(-len("Tell me a long story about billing systems please") // 4)
        failed = billed["primary-1"]
        usages = {r.id.split("/")[1] for r in failed}
        assert len(usages) == 2  # the request (retried inside, one usage) and the recovery probe
        assert {(r.resource, r.raw, r.status) for r in failed} == {
            (Resource.LLM_INPUT, prompt, Status.ESTIMATED),
            (Resource.LLM_OUTPUT, 0, Status.ESTIMATED),
        }
        assert len(failed) == 4
        assert [(r.resource, r.raw) for r in billed["backup-1"]] == [(Resource.LLM_INPUT, 30), (Resource.LLM_OUTPUT, 7)]


class HangingTTS(FakeTTS):
    """Fails its first stream; every later one (the recovery probe) hangs until cancelled."""

    def stream(self, *, conn_options: APIConnectOptions = lk_tts.tts.DEFAULT_API_CONNECT_OPTIONS) -> Any:
        return _Hanging(tts=self, conn_options=conn_options)


class _Hanging(lk_tts.SynthesizeStream):
    async def _run(self, output_emitter: lk_tts.AudioEmitter) -> None:
        fake: HangingTTS = self._tts  # type: ignore[assignment]
        fake.streams += 1
        if fake.streams == 1:
            raise APIConnectionError("down", retryable=False)
        await asyncio.sleep(3600)


@MODES
async def test_aclose_leaves_no_task_behind_with_a_recovery_probe_in_flight(metering: bool) -> None:
    meter = _meter()
    wrap = _maybe(metering, meter)
    adapter = lk_tts.FallbackAdapter([wrap(HangingTTS()), wrap(FakeTTS())], max_retry_per_tts=0)
    stream = adapter.stream()
    stream.push_text(TEXT)
    stream.end_input()
    assert [ev async for ev in stream]
    await stream.aclose()
    await _until(lambda: adapter._status[0].recovering_stream_task is not None)
    assert not adapter._status[0].recovering_stream_task.done()  # type: ignore[union-attr]
    await adapter.aclose()
    for _ in range(3):
        await asyncio.sleep(0)
    me = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not me and not t.done()] == []


# -- the voice pipeline in livekit-agents' real job runner ---------------------------------------------


async def _voice_job(metering: bool) -> tuple[list[tuple[str, str]], list[str], float, list[MeterRecord], Any]:
    exporter = MemoryExporter()
    stt_, llm_, tts_ = FakeUtteranceSTT(utterance_seconds=1.0), FakeLLM(reply="Your balance is 42 dollars."), FakeTTS()
    seen: dict[str, Any] = {}

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        models: dict[str, Any] = {"stt": stt_, "llm": llm_, "tts": tts_}
        session = AgentSession(
            **(metered_models(**models) if metering else models),
            turn_handling={
                "turn_detection": "stt",
                "endpointing": {"min_delay": 0.1, "max_delay": 0.5},
                "interruption": {"enabled": False},
                "preemptive_generation": {"enabled": False},
            },
        )
        session.input.audio, session.output.audio = FakeAudioInput(), FakeAudioOutput()
        items: list[tuple[str, str]] = []
        states: list[str] = []
        session.on("conversation_item_added", lambda ev: items.append((ev.item.role, ev.item.text_content or "")))
        session.on("agent_state_changed", lambda ev: states.append(ev.new_state))
        await session.start(Agent(instructions="You are a bank assistant."))
        await _until(lambda: session.output.audio.seconds > 0 and states[-1:] == ["listening"], timeout=8)
        seen.update(items=items, states=states, spoken=session.output.audio.seconds)
        await session.aclose()
        ctx.shutdown("done")

    await run_job(metered(entry, exporter=exporter), fake_job=True)
    return seen["items"], seen["states"], seen["spoken"], exporter.exported, (stt_, llm_, tts_)


@pytest.mark.slow
async def test_a_voice_session_in_the_job_runner_is_the_same_with_and_without_metering() -> None:
    bare = await _voice_job(False)
    with_meter = await _voice_job(True)
    assert with_meter[:3] == bare[:3]  # the same conversation, agent states and audio spoken
    assert bare[0] == [("user", "what is my balance"), ("assistant", "Your balance is 42 dollars.")]
    assert not [r for r in bare[3] if r.resource is not Resource.AGENT_SESSION]  # nothing metered bare
    records = [r for r in with_meter[3] if r.is_final]
    stt_, llm_, tts_ = with_meter[4]
    totals = {res: sum(r.raw for r in records if r.resource is res) for res in Resource}
    (usage,) = llm_.reported
    assert (totals[Resource.LLM_INPUT], totals[Resource.LLM_OUTPUT]) == (usage.prompt_tokens, usage.completion_tokens)
    assert totals[Resource.TTS] == tts_.received_chars > 0
    (stt_record,) = [r for r in records if r.resource is Resource.STT]
    assert stt_record.meta["audio_ms"] == round(stt_.received * 1000) and stt_record.raw >= stt_record.meta["audio_ms"]
