"""SessionMeter on its own: the session's state rules, its records, and the summary and cost line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from harness.jobproc import ManualClock

from livekit_metering.costlog import SessionSummary, cost_line, summarize
from livekit_metering.records import MeterRecord, Resource, Status, Unit
from livekit_metering.session import EndCause, SessionMeter

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


class ListExporter:
    def __init__(self) -> None:
        self.exported: list[MeterRecord] = []

    def export(self, batch: Sequence[MeterRecord]) -> None:
        self.exported.extend(batch)

    def shutdown(self) -> None:
        pass


def make(clock: ManualClock, **options: object) -> tuple[SessionMeter, ListExporter]:
    sink = ListExporter()
    meter = SessionMeter(session_id="AJ_1", exporter=sink, clock=clock, room="r1", worker_id="W1", **options)  # type: ignore[arg-type]
    return meter, sink


def test_connect_writes_an_open_checkpoint_and_the_first_end_wins() -> None:
    clock = ManualClock()
    meter, sink = make(clock)
    clock.advance(2)
    assert meter.connected()
    assert [(r.status, r.raw, r.start) for r in sink.exported] == [(Status.CHECKPOINT, 0, T0 + timedelta(seconds=2))]
    clock.advance(70.25)
    assert meter.end(EndCause.ROOM_ENDED, disconnect_reason="ROOM_DELETED")
    clock.advance(5)
    assert not meter.end(EndCause.SHUTDOWN, shutdown_reason="room disconnected")  # later events only add details
    assert not meter.connected()  # a reconnect after the end starts nothing
    final = meter.finish()
    assert final is not None and final.status is Status.OK
    assert final.raw == 70_250 and final.quantity == Decimal(2) and final.unit is Unit.MINUTE
    assert final.end - final.start == timedelta(milliseconds=final.raw)
    assert final.meta == {
        "job_id": "AJ_1",
        "worker_id": "W1",
        "hosting": "cloud",
        "session_time": True,
        "end_cause": "room_ended",
        "disconnect_reason": "ROOM_DELETED",
        "shutdown_reason": "room disconnected",
    }
    # the end instant itself was checkpointed before the final record
    assert [r.status for r in sink.exported] == [Status.CHECKPOINT, Status.CHECKPOINT, Status.OK]
    assert sink.exported[1].raw == final.raw
    assert meter.finish() is final and meter.checkpoint() is None
    assert len(sink.exported) == 3


def test_a_session_that_never_connected_writes_nothing() -> None:
    clock = ManualClock()
    meter, sink = make(clock)
    meter.end(EndCause.JOB_CRASHED)
    assert meter.finish() is None
    assert sink.exported == [] and meter.duration_ms == 0


def test_finish_without_an_end_event_ends_now() -> None:
    clock = ManualClock()
    meter, _ = make(clock)
    meter.connected()
    clock.advance(3)
    assert meter.duration_ms == 3000  # running figure while open
    final = meter.finish()
    assert final is not None and final.raw == 3000 and final.meta["end_source"] == "finish"


def test_per_second_policy_rounds_the_session_with_its_minimum() -> None:
    clock = ManualClock()
    meter, _ = make(clock, policy="per-second-10s-minimum")
    meter.connected()
    clock.advance(4.2)
    final = meter.finish()
    assert final is not None and (final.unit, final.quantity, final.raw) == (Unit.SECOND, Decimal(10), 4200)


def test_sub_millisecond_instants_keep_stamps_and_duration_consistent() -> None:
    clock = ManualClock()
    clock.now = 1000.0004
    meter, _ = make(clock)
    clock.now = 1000.0019
    meter.connected()
    clock.now = 1061.0017
    final = meter.finish()
    assert final is not None and final.end - final.start == timedelta(milliseconds=final.raw)


def test_attribution_is_asked_for_each_session_record_and_its_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[object] = [RuntimeError("not yet"), (None, None), ("acme", {"tier": "gold"})]

    def attribution() -> tuple[str | None, dict[str, str] | None]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    clock = ManualClock()
    meter, sink = make(clock, attribution=attribution)
    with caplog.at_level(logging.ERROR, logger="livekit_metering"):
        meter.connected()  # the attribution raises: logged, the checkpoint still written
        meter.checkpoint()
        final = meter.finish()
    # connect, checkpoint, end checkpoint, final
    assert [r.customer for r in sink.exported] == ["", "", "acme", "acme"]
    assert final is not None and final.attributes == {"tier": "gold"}
    assert caplog.text.count("customer/attributes option failed") == 1


def test_checkpoint_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="checkpoint_interval must be a positive number"):
        SessionMeter(session_id="AJ_1", checkpoint_interval=0)


async def test_checkpoints_stop_at_the_end() -> None:
    meter, sink = make(ManualClock(), checkpoint_interval=0.005)
    meter.connected()
    for _ in range(200):
        if len(sink.exported) >= 3:
            break
        await asyncio.sleep(0.005)
    meter.end(EndCause.SHUTDOWN)
    written = len(sink.exported)
    await asyncio.sleep(0.03)
    assert len(sink.exported) == written >= 3


# -- summary and cost line ---------------------------------------------------------------------------


def usage(meter: SessionMeter, resource: Resource, raw: int, model: str) -> None:
    meter.record(
        resource, raw, usage=meter.next_usage(resource.value), start=T0, end=T0, model=model, provider="livekit"
    )


def test_summary_sums_the_sessions_usage_and_prices_it() -> None:
    clock = ManualClock()
    meter, _ = make(clock)
    meter.connected()
    clock.advance(125)
    meter.end(EndCause.SHUTDOWN, shutdown_reason="done")
    meter.finish()
    usage(meter, Resource.STT, 12_300, "deepgram/nova-3")  # 13 billed seconds
    usage(meter, Resource.STT, 400, "deepgram/nova-3")  # 1 more: each usage rounds up on its own
    usage(meter, Resource.LLM_INPUT, 1000, "openai/gpt-4.1-mini")
    usage(meter, Resource.LLM_INPUT_CACHED, 500, "openai/gpt-4.1-mini")
    usage(meter, Resource.LLM_OUTPUT, 120, "openai/gpt-4.1-mini")
    usage(meter, Resource.TTS, 300, "cartesia/sonic-2")
    usage(meter, Resource.TTS, 50, "nobody/knows-this-voice")

    summary = summarize(meter.records, session_id="AJ_1", plan="ship")

    assert summary.connected and summary.end_cause == "shutdown"
    assert summary.duration_ms == 125_000 and summary.billed_minutes == Decimal(3)
    assert summary.stt_seconds == Decimal(14)
    assert (summary.llm_input_tokens, summary.llm_cached_tokens, summary.llm_output_tokens) == (1000, 500, 120)
    assert summary.tts_characters == 350
    assert summary.cost is not None and summary.cost > 0
    assert any("nobody/knows-this-voice" in model for model in summary.unpriced)
    assert summary.price_date is not None
    # the unpriced voice is left out of the cost, never counted as $0
    priced_only = summarize([r for r in meter.records if r.model != "nobody/knows-this-voice"], session_id="AJ_1")
    assert priced_only.cost == summary.cost and priced_only.unpriced == []


def test_billed_minutes_under_a_per_second_policy() -> None:
    clock = ManualClock()
    meter, _ = make(clock, policy="per-second-10s-minimum")
    meter.connected()
    clock.advance(70)
    meter.finish()
    assert summarize(meter.records, session_id="AJ_1", price=False).billed_minutes == Decimal("1.167")


def test_cost_line_is_one_readable_key_value_line() -> None:
    summary = SessionSummary(
        session_id="AJ_1",
        room="support room",
        customer="acme",
        end_cause="room_ended",
        connected=True,
        duration_ms=125_400,
        billed_minutes=Decimal(3),
        stt_seconds=Decimal("14.000"),
        llm_input_tokens=1000,
        llm_cached_tokens=500,
        llm_output_tokens=120,
        tts_characters=350,
        cost=Decimal("0.04660000"),
        unpriced=["nobody/knows-this-voice"],
        plan="ship",
        price_date="2026-09-21",
    )
    assert cost_line(summary) == (
        'session AJ_1 room="support room" customer=acme ended=room_ended duration=125.4s billed_minutes=3 '
        "stt_seconds=14 llm_tokens_in=1000 llm_tokens_cached=500 llm_tokens_out=120 tts_chars=350 "
        "cost=$0.0466 unpriced=nobody/knows-this-voice plan=ship prices=2026-09-21"
    )
    unpriced = SessionSummary(session_id="AJ_2", cost=None)
    assert "connected=no" in cost_line(unpriced) and "cost=unknown" in cost_line(unpriced)


async def test_usage_outside_the_entrypoint_context_finds_the_job_meter_through_the_job_context() -> None:
    # on_session_end and shutdown callbacks run outside the entrypoint's context variables; a model
    # used there must still record into the job's meter, not the process default.
    from livekit.agents.testing import fake_job_context

    from livekit_metering.meter import current_meter
    from livekit_metering.session import register

    sink = ListExporter()
    with fake_job_context(job_id="AJ_after") as ctx:
        meter = SessionMeter.for_job(ctx, exporter=sink)
        assert current_meter() is not meter  # not metered yet: the process default
        register(ctx, meter)
        assert current_meter() is meter
        now = datetime.now(timezone.utc)
        current_meter().record(Resource.LLM_OUTPUT, 7, usage="llm-1", start=now, end=now)
    assert [r.session_id for r in sink.exported] == ["AJ_after"]
    assert current_meter() is not meter  # outside the job again
