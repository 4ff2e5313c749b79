"""MeteredSTT: seconds per recognition, rounded up per individual usage."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fakes import FakeBatchSTT, FakeSTT, FakeVAD, MemoryExporter, RaisingExporter, silence
from harness.jobproc import ManualClock
from livekit.agents import APIConnectionError, inference, stt
from livekit.agents.metrics import ModelUsageCollector

from livekit_metering.adapters import MeteredSTT
from livekit_metering.meter import Meter
from livekit_metering.records import Resource, Status, Unit


def _meter(exporter: Any = None) -> Meter:
    return Meter(session_id="AJ_test", exporter=exporter or MemoryExporter())


async def _stream_audio(model: stt.STT[Any], seconds: float, *, pace: float = 0.0) -> list[stt.SpeechEvent]:
    stream = model.stream()
    events: list[stt.SpeechEvent] = []

    async def read() -> None:
        async for ev in stream:
            events.append(ev)

    reader = asyncio.create_task(read())
    for frame in silence(seconds):
        stream.push_frame(frame)
        await asyncio.sleep(pace)
    stream.flush()
    await asyncio.sleep(0.05)
    await stream.aclose()  # what AgentActivity does at session close
    reader.cancel()
    return events


async def test_three_short_recognize_calls_bill_three_seconds() -> None:
    meter = _meter()
    model = MeteredSTT(FakeBatchSTT(), meter=meter)
    for _ in range(3):
        await model.recognize(silence(0.4))
    records = meter.records
    assert [r.raw for r in records] == [400, 400, 400]
    assert [r.unit for r in records] == [Unit.SECOND] * 3
    assert sum((r.quantity for r in records), Decimal(0)) == Decimal(3)  # not 1.2 rounded once
    assert [r.id for r in records] == [f"AJ_test/stt-{n}/stt" for n in (1, 2, 3)]


async def test_batch_stt_stays_batch_so_the_framework_adapts_it_and_each_utterance_is_metered() -> None:
    meter = _meter()
    inner = FakeBatchSTT()
    model = MeteredSTT(inner, meter=meter)
    assert model.capabilities.streaming is False
    with pytest.raises(NotImplementedError):
        model.stream()
    adapter = stt.StreamAdapter(stt=model, vad=FakeVAD())  # what stt_node builds for a batch STT
    collector = ModelUsageCollector()
    adapter.on("metrics_collected", collector)
    stream = adapter.stream()
    for seconds in (1.2, 0.8):
        for frame in silence(seconds):
            stream.push_frame(frame)
        stream.flush()
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()
    assert [r.raw for r in meter.records] == [1200, 800] == [round(s * 1000) for s in inner.recognized]
    assert [r.quantity for r in meter.records] == [Decimal(2), Decimal(1)]
    (usage,) = collector.flatten()  # the wrapped STT's metrics came through once each
    assert usage.audio_duration == pytest.approx(2.0)


async def test_stream_bills_connection_time_and_keeps_audio_and_provider_seconds() -> None:
    meter = _meter()
    inner = FakeSTT(usage_every=0.5)
    events = await _stream_audio(MeteredSTT(inner, meter=meter), 1.0, pace=0.001)
    assert any(e.type is stt.SpeechEventType.FINAL_TRANSCRIPT for e in events)
    (rec,) = meter.records
    assert rec.resource is Resource.STT and rec.status is Status.OK
    assert rec.meta["audio_ms"] == round(inner.received * 1000) == 1000
    assert rec.meta["provider_ms"] == round(inner.reported * 1000)
    assert rec.raw == max(rec.meta["connection_ms"], rec.meta["audio_ms"], rec.meta["provider_ms"])  # type: ignore[type-var]
    assert rec.raw >= 1000
    assert rec.quantity == Decimal(-(-rec.raw // 1000))


class ClockedMeter(Meter):
    """A meter with a clock the test moves by hand, as a job's SessionMeter has (metered(clock=...))."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(session_id="AJ_test", exporter=MemoryExporter())
        self.clock = clock


async def test_a_connection_open_longer_than_its_audio_bills_the_connection_time() -> None:
    clock = ManualClock()
    meter = ClockedMeter(clock)
    inner = FakeSTT(report_usage=False)
    stream = MeteredSTT(inner, meter=meter).stream()
    for frame in silence(0.2):  # 0.2 s of audio, then the connection stays open, silent
        stream.push_frame(frame)
    await asyncio.sleep(0.02)
    clock.advance(61.5)
    await stream.aclose()
    (rec,) = meter.records
    assert rec.meta["audio_ms"] == 200 == round(inner.received * 1000)
    assert rec.raw == rec.meta["connection_ms"] == 61_500 and rec.meta["basis"] == "connection"
    assert rec.quantity == Decimal(62)  # billing only the audio would give 1 second
    assert rec.end - rec.start == timedelta(seconds=61.5)


async def test_stream_without_provider_usage_is_still_billed() -> None:
    meter = _meter()
    collector = ModelUsageCollector()
    model = MeteredSTT(FakeSTT(report_usage=False), meter=meter)
    model.on("metrics_collected", collector)
    await _stream_audio(model, 1.0)
    (rec,) = meter.records
    assert rec.meta["provider_ms"] == 0 and rec.raw >= 1000
    assert sum(u.audio_duration for u in collector.flatten()) == 0  # what session.usage would show


async def test_long_stream_writes_checkpoints_under_the_final_record_id() -> None:
    exporter = MemoryExporter()
    meter = _meter(exporter)
    stream = MeteredSTT(FakeSTT(), meter=meter, checkpoint_interval=0.05).stream()
    for frame in silence(0.3):
        stream.push_frame(frame)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.12)
    await stream.aclose()
    statuses = [r.status for r in exporter.exported]
    assert statuses.count(Status.CHECKPOINT) >= 2 and statuses[-1] is Status.OK
    assert {r.id for r in exporter.exported} == {"AJ_test/stt-1/stt"}
    assert all(
        later.supersedes(earlier) for earlier, later in zip(exporter.exported, exporter.exported[1:], strict=False)
    )
    assert [r.status for r in meter.records] == [Status.OK]  # the final form replaced the running figures


def test_checkpoint_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="checkpoint_interval"):
        MeteredSTT(FakeSTT(), checkpoint_interval=0)


async def test_failed_stream_is_recorded_and_fails_like_the_wrapped_model() -> None:
    meter = _meter()
    errors: list[Any] = []
    model = MeteredSTT(FakeSTT(fail=True), meter=meter)
    model.on("error", errors.append)
    stream = model.stream()
    stream.push_frame(silence(0.02)[0])
    with pytest.raises(APIConnectionError):
        async for _ in stream:
            pass
    await stream.aclose()
    assert [e.recoverable for e in errors] == [False]
    (rec,) = meter.records
    assert rec.status is Status.ERROR and rec.meta["error"] == "APIConnectionError"


async def test_fallback_adapter_stream_is_billed_to_the_child_that_served() -> None:
    meter = _meter()
    primary = FakeSTT(fail=True, model="primary-stt", provider="alpha")
    backup = FakeSTT(model="backup-stt", provider="beta")
    adapter = stt.FallbackAdapter([primary, backup], retry_interval=0.0)
    model = MeteredSTT(adapter, meter=meter)
    await _stream_audio(model, 0.5, pace=0.001)
    await adapter.aclose()
    records = [(r.model, r.provider, r.status, r.meta["outcome"]) for r in meter.records]
    # the failed stream, its recovery probe (a connection too, failed on the audio forwarded to it),
    # and the stream that served
    assert sorted(records) == [
        ("backup-stt", "beta", Status.OK, "closed"),
        ("primary-stt", "alpha", Status.ERROR, "error"),
        ("primary-stt", "alpha", Status.ERROR, "error"),
    ]
    (served,) = [r for r in meter.records if r.model == "backup-stt"]
    assert served.meta["audio_ms"] == round(backup.received * 1000) > 0


async def test_broken_exporter_does_not_break_recognition() -> None:
    meter = _meter(RaisingExporter())
    event = await MeteredSTT(FakeBatchSTT(), meter=meter).recognize(silence(0.4))
    assert event.alternatives[0].text == "batch transcript"
    events = await _stream_audio(MeteredSTT(FakeSTT(), meter=meter), 0.2)
    assert events and meter.failures == 2


def test_livekit_inference_stt_keeps_provider_model_and_language() -> None:
    model = MeteredSTT(inference.STT("deepgram/nova-3:multi", api_key="k" * 32, api_secret="s" * 32))
    assert (model.model, model.provider) == ("deepgram/nova-3", "livekit")
    from livekit_metering.adapters._usage import Attribution

    who = Attribution.of(model, speech=True)
    assert (who.model, who.provider, who.language) == ("deepgram/nova-3", "livekit", "multi")
    assert Attribution.of(model, "fr", speech=True).language == "fr"  # a language passed to stream() wins


async def test_stream_records_carry_the_language_of_the_request() -> None:
    meter = _meter()
    stream = MeteredSTT(FakeSTT(), meter=meter).stream(language="fr")
    await stream.aclose()
    model = MeteredSTT(FakeBatchSTT(), meter=meter)
    await model.recognize(silence(0.1), language="de")
    await model.recognize(silence(0.1))
    assert [r.language for r in meter.records] == ["fr", "de", ""]


async def test_batch_child_of_a_fallback_adapter_is_metered_per_recognize() -> None:
    meter = _meter()
    inner = FakeBatchSTT(model="batch-stt")
    model = MeteredSTT(stt.FallbackAdapter([inner], vad=FakeVAD()), meter=meter)  # builds a StreamAdapter
    stream = model.stream()
    for seconds in (0.5, 0.3):
        for frame in silence(seconds):
            stream.push_frame(frame)
        stream.flush()
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()
    assert [(r.model, r.raw, r.meta["mode"]) for r in meter.records] == [
        ("batch-stt", 500, "recognize"),
        ("batch-stt", 300, "recognize"),
    ]
