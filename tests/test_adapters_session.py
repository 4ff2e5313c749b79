"""The adapters inside a real AgentSession running offline: the full STT -> LLM -> TTS pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import FakeLLM, FakeTTS, FakeUtteranceSTT, MemoryExporter, RaisingExporter
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context

from livekit_metering.adapters import is_metered, meter_session_models, metered_models
from livekit_metering.meter import Meter, use_meter
from livekit_metering.records import Resource, Status
from livekit_metering.scripted import FakeAudioInput, FakeAudioOutput

TURN_HANDLING: dict[str, Any] = {
    "turn_detection": "stt",
    "endpointing": {"min_delay": 0.1, "max_delay": 0.5},
    "interruption": {"enabled": False},
    "preemptive_generation": {"enabled": False},
}


async def _one_voice_turn(session: AgentSession) -> tuple[FakeAudioInput, FakeAudioOutput]:
    """Start the session, let the user say one utterance, wait for the spoken reply, close."""
    mic, speaker = FakeAudioInput(), FakeAudioOutput()
    session.input.audio = mic
    session.output.audio = speaker
    states: list[str] = []
    session.on("agent_state_changed", lambda ev: states.append(ev.new_state))
    with fake_job_context():
        await session.start(Agent(instructions="You are a bank assistant."))
        for _ in range(150):  # bounded: at most 7.5 s
            await asyncio.sleep(0.05)
            if speaker.seconds > 0 and states and states[-1] == "listening":
                break
        await session.aclose()
    assert speaker.seconds > 0, "the reply was never spoken"
    return mic, speaker


def _raw(meter: Meter, resource: Resource) -> int:
    return sum(r.raw for r in meter.records if r.resource is resource)


@pytest.mark.slow
async def test_voice_pipeline_totals_equal_provider_usage_and_cover_session_usage() -> None:
    meter = Meter(session_id="AJ_voice", exporter=MemoryExporter())
    stt_, llm_, tts_ = (
        FakeUtteranceSTT(utterance_seconds=1.0, usage_every=0.5),
        FakeLLM(reply="Your balance is forty two dollars.", prompt_tokens=120, cached_tokens=64),
        FakeTTS(streaming=True),
    )
    session = AgentSession(**metered_models(stt=stt_, llm=llm_, tts=tts_, meter=meter), turn_handling=TURN_HANDLING)
    mic, _ = await _one_voice_turn(session)
    usage = {u.type: u for u in session.usage.model_usage}

    # LLM and TTS: exactly what the scripted providers billed
    (reported,) = llm_.reported
    assert _raw(meter, Resource.LLM_INPUT) == reported.prompt_tokens - reported.prompt_cached_tokens == 56
    assert _raw(meter, Resource.LLM_INPUT_CACHED) == reported.prompt_cached_tokens == 64
    assert _raw(meter, Resource.LLM_OUTPUT) == reported.completion_tokens
    assert _raw(meter, Resource.TTS) == tts_.received_chars > 0
    # re-emitted once: the framework's own figures agree where it does not undercount
    assert usage["llm_usage"].input_tokens == 120 and usage["llm_usage"].output_tokens == reported.completion_tokens
    assert usage["tts_usage"].characters_count == tts_.received_chars

    # STT: one stream for the whole session, everything the provider got and reported, and more
    # than session.usage, which misses the 2 s of silence AgentSession flushes at close
    (stt_record,) = [r for r in meter.records if r.resource is Resource.STT]
    assert stt_record.status is Status.OK and stt_record.id == "AJ_voice/stt-1/stt"
    assert stt_record.meta["audio_ms"] == round(stt_.received * 1000) >= round(mic.seconds * 1000) + 2000
    assert stt_record.meta["provider_ms"] == round(stt_.reported * 1000) == stt_record.meta["audio_ms"]
    assert stt_record.raw >= stt_record.meta["audio_ms"]  # type: ignore[operator]
    assert stt_record.raw > round(usage["stt_usage"].audio_duration * 1000)
    assert {(r.model, r.provider) for r in meter.records} == {
        ("fake-stt-1", "fakeprovider"),
        ("fake-llm-1", "fakeprovider"),
        ("fake-tts-1", "fakeprovider"),
    }


@pytest.mark.slow
async def test_meter_session_models_wraps_in_place_and_uses_the_current_meter() -> None:
    meter = Meter(session_id="AJ_job", exporter=MemoryExporter())
    session = AgentSession(
        stt=FakeUtteranceSTT(), llm=FakeLLM(), tts=FakeTTS(streaming=False), turn_handling=TURN_HANDLING
    )
    models = (session.stt, session.llm, session.tts)
    meter_session_models(session)
    assert (session.stt, session.llm, session.tts) == models and all(map(is_metered, models))
    with use_meter(meter):  # what `metered` does for a job
        await _one_voice_turn(session)
    assert {r.resource for r in meter.records} >= {Resource.STT, Resource.LLM_INPUT, Resource.LLM_OUTPUT, Resource.TTS}


async def test_meter_session_models_refuses_a_started_session() -> None:
    with fake_job_context():
        async with AgentSession(llm=FakeLLM()) as session:
            await session.start(Agent(instructions="x"))
            with pytest.raises(RuntimeError, match=r"before session\.start\(\)"):
                meter_session_models(session)
            assert not is_metered(session.llm)  # nothing changed


@pytest.mark.slow
async def test_voice_pipeline_survives_an_exporter_that_raises() -> None:
    exporter = RaisingExporter()
    meter = Meter(exporter=exporter)
    llm_ = FakeLLM()
    session = AgentSession(
        **metered_models(stt=FakeUtteranceSTT(), llm=llm_, tts=FakeTTS(), meter=meter), turn_handling=TURN_HANDLING
    )
    await _one_voice_turn(session)
    assert llm_.requests == 1 and exporter.calls >= 3 and meter.failures == exporter.calls


def test_metered_models_rejects_what_is_not_a_model() -> None:
    with pytest.raises(TypeError, match="cannot meter"):
        metered_models(llm=object())  # type: ignore[arg-type]


async def test_interrupted_speech_in_a_session_is_billed_where_session_usage_shows_nothing() -> None:
    meter = Meter(session_id="AJ_barge_in", exporter=MemoryExporter())
    llm_ = FakeLLM(reply="Your balance is forty two dollars, and here is every transaction of the year.")
    tts_ = FakeTTS(streaming=True, chunk_delay=0.5)  # the provider is slow to answer with audio
    session = AgentSession(**metered_models(llm=llm_, tts=tts_, meter=meter))
    session.output.audio = FakeAudioOutput()
    with fake_job_context():
        await session.start(Agent(instructions="You are a bank assistant."))
        handle = session.generate_reply(user_input="Read me my statement.")
        for _ in range(1000):  # interrupt once text has gone to the TTS provider, before its audio
            if tts_.received_chars:
                break
            await asyncio.sleep(0.01)
        handle.interrupt()
        await handle.wait_for_playout()
        await session.aclose()
    framework_chars = sum(u.characters_count for u in session.usage.model_usage if u.type == "tts_usage")
    assert framework_chars == 0  # no TTSMetrics for the interrupted segment
    assert tts_.received_chars > 0
    assert sum(r.raw for r in meter.records if r.resource is Resource.TTS) == tts_.received_chars
