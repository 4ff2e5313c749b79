"""MeteredTTS: characters handed to the provider, per synthesize call or streaming segment."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import FakeTTS, MemoryExporter, RaisingExporter
from livekit.agents import APIConnectionError, inference, tts
from livekit.agents.metrics import ModelUsageCollector

from livekit_metering.adapters import MeteredTTS
from livekit_metering.meter import Meter
from livekit_metering.records import Resource, Status

TEXT = "Hello there. Your order number is 12345 and it ships tomorrow."
LONG = "This is the first sentence of the reply. And here comes the second sentence of it."


def _meter(exporter: Any = None) -> Meter:
    return Meter(session_id="AJ_test", exporter=exporter or MemoryExporter())


def _chars(meter: Meter) -> int:
    return sum(r.raw for r in meter.records if r.resource is Resource.TTS)


async def test_synthesize_bills_the_text_of_each_request() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=False)
    model = MeteredTTS(inner, meter=meter)
    collector = ModelUsageCollector()
    model.on("metrics_collected", collector)
    for text in ("Hi.", TEXT):
        await model.synthesize(text).collect()
    await asyncio.sleep(0)
    assert [r.raw for r in meter.records] == [3, len(TEXT)]
    assert _chars(meter) == inner.received_chars
    assert {r.status for r in meter.records} == {Status.OK}
    (usage,) = collector.flatten()  # re-emitted once: the framework's own count agrees
    assert usage.characters_count == inner.received_chars


async def test_a_streaming_segment_bills_the_text_pushed_to_the_provider() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=True)
    model = MeteredTTS(inner, meter=meter)
    for _ in range(2):  # one segment per stream, as AgentSession's tts_node does
        stream = model.stream()
        for word in TEXT.split(" "):
            stream.push_text(word + " ")
        stream.end_input()
        frames = [ev async for ev in stream]
        await stream.aclose()
        assert frames
    assert [r.raw for r in meter.records] == [len(TEXT) + 1] * 2
    assert _chars(meter) == inner.received_chars
    assert [r.id for r in meter.records] == ["AJ_test/tts-1/tts", "AJ_test/tts-2/tts"]


async def test_text_the_framework_drops_is_not_billed() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=True)
    stream = MeteredTTS(inner, meter=meter).stream()
    stream.push_text(TEXT)
    stream.flush()
    stream.push_text("A second segment in the same stream is dropped by livekit-agents.")
    stream.end_input()
    stream.push_text("So is text after end_input.")
    async for _ in stream:
        pass
    await stream.aclose()
    assert [r.raw for r in meter.records] == [len(TEXT)] == [inner.received_chars]


async def test_interrupted_segment_is_billed_where_the_framework_reports_nothing() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=True, chunk_delay=0.02)
    collector = ModelUsageCollector()
    model = MeteredTTS(inner, meter=meter)
    model.on("metrics_collected", collector)
    stream = model.stream()
    stream.push_text("Hello there, this gets interrupted.")
    stream.flush()
    async for _ in stream:
        break  # the user barged in after the first audio frame
    await stream.aclose()
    framework = sum(u.characters_count for u in collector.flatten())
    assert framework == 0  # no TTSMetrics for an interrupted segment: session.usage undercounts
    assert _chars(meter) == inner.received_chars == 35 > framework


async def test_text_pushed_but_never_flushed_is_billed_as_cancelled() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=True)
    stream = MeteredTTS(inner, meter=meter).stream()
    stream.push_text(TEXT[:20])
    await asyncio.sleep(0.02)  # the provider has the text
    await stream.aclose()
    (rec,) = meter.records
    assert rec.raw == inner.received_chars == 20
    assert rec.status is Status.CANCELLED and rec.meta["outcome"] == "interrupted"


async def test_chunked_tts_behind_the_framework_stream_adapter_is_billed_per_sentence() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=False)
    model = MeteredTTS(inner, meter=meter)
    assert model.capabilities.streaming is False
    with pytest.raises(NotImplementedError):
        model.stream()
    stream = tts.StreamAdapter(tts=model).stream()  # what tts_node builds for a chunked TTS
    stream.push_text(LONG)
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()
    await asyncio.sleep(0)
    assert len(meter.records) == 2  # one synthesize() per sentence
    assert _chars(meter) == inner.received_chars


async def test_failed_synthesize_is_recorded_and_raises_like_the_wrapped_model() -> None:
    meter = _meter()
    errors: list[Any] = []
    model = MeteredTTS(FakeTTS(streaming=False, fail=True), meter=meter)
    model.on("error", errors.append)
    with pytest.raises(APIConnectionError):
        await model.synthesize("Hi there.", conn_options=tts.tts.APIConnectOptions(max_retry=0)).collect()
    await asyncio.sleep(0)
    (rec,) = meter.records
    assert rec.status is Status.ERROR and rec.raw == 9
    assert [e.recoverable for e in errors] == [False]


async def test_fallback_adapter_usage_is_billed_to_the_child_that_served() -> None:
    meter = _meter()
    primary = FakeTTS(streaming=False, fail=True, model="primary-tts", provider="alpha")
    backup = FakeTTS(streaming=False, model="backup-tts", provider="beta")
    adapter = tts.FallbackAdapter([primary, backup], max_retry_per_tts=0)
    model = MeteredTTS(adapter, meter=meter)
    await model.synthesize(TEXT).collect()
    probe = adapter._status[0].recovering_synthesize_task  # the recovery probe: a billed request too
    assert probe is not None
    await probe
    served = [r for r in meter.records if r.status is Status.OK]
    assert [(r.model, r.provider, r.raw) for r in served] == [("backup-tts", "beta", len(TEXT))]
    # the failed request and its recovery probe, each billed for the text it sent
    failed = [(r.model, r.provider, r.raw, r.status) for r in meter.records if r not in served]
    assert failed == [("primary-tts", "alpha", len(TEXT), Status.ERROR)] * 2


async def test_broken_exporter_does_not_break_synthesis() -> None:
    meter = _meter(RaisingExporter())
    model = MeteredTTS(FakeTTS(streaming=True), meter=meter)
    stream = model.stream()
    stream.push_text(TEXT)
    stream.end_input()
    frames = [ev async for ev in stream]
    await stream.aclose()
    assert frames and meter.failures == 1


def test_livekit_inference_tts_keeps_provider_and_model() -> None:
    bare = inference.TTS("cartesia/sonic-3", api_key="k" * 32, api_secret="s" * 32)
    sample_rate = bare.sample_rate
    model = MeteredTTS(bare)
    assert (model.model, model.provider, model.sample_rate) == ("cartesia/sonic-3", "livekit", sample_rate)


async def test_wrapping_a_metered_model_again_does_not_count_twice() -> None:
    meter = _meter()
    inner = FakeTTS(streaming=True)
    stream = MeteredTTS(MeteredTTS(inner, meter=meter), meter=meter).stream()
    stream.push_text(TEXT)
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()
    assert _chars(meter) == inner.received_chars == len(TEXT)


class StreamBackedTTS(FakeTTS):
    """synthesize() built on the model's own stream(), as LiveKit Inference's TTS does."""

    def synthesize(self, text: str, *, conn_options: Any = tts.tts.DEFAULT_API_CONNECT_OPTIONS) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)


async def test_synthesize_built_on_the_models_own_stream_is_billed_once() -> None:
    meter = _meter()
    inner = StreamBackedTTS(streaming=True)
    await MeteredTTS(inner, meter=meter).synthesize(TEXT).collect()
    await asyncio.sleep(0)
    assert [(r.raw, r.meta["mode"]) for r in meter.records] == [(len(TEXT), "synthesize")]
    assert inner.received_chars == len(TEXT)
