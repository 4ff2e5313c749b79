"""``metered`` inside livekit-agents' real job runner: when session time starts, ends, and why.

Each test drives ``_JobProc`` offline (tests/harness/jobproc.py) with a FakeRoom and a manual clock.
The clock only moves when the test moves it, so every instant in a record can be checked exactly
against the event that should have produced it. The FakeRoom moves the clock by 100 s when the job
runner disconnects it during its shutdown sequence: an end taken from the (late) shutdown callbacks
instead of the event itself would show up as 100 s too much.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from harness.jobproc import (
    AGENT,
    JOB_ID,
    ROOM,
    ROOM_SID,
    WORKER,
    FakeParticipant,
    FakeRoom,
    ManualClock,
    run_job,
    until,
)
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext
from livekit.agents.ipc import proto

from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.meter import current_meter
from livekit_metering.records import MeterRecord, Resource, Status, Unit
from livekit_metering.session import SessionMeter, meter_for

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)  # the manual clock's wall time at monotonic 1000
LATE = 100.0  # seconds the shutdown sequence "takes" (the FakeRoom's disconnect moves the clock)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "records.jsonl"


@pytest.fixture
def room(clock: ManualClock) -> FakeRoom:
    room = FakeRoom()
    room.on_disconnect = lambda: clock.advance(LATE)
    return room


def session_records(path: Path) -> list[MeterRecord]:
    if not path.exists():
        return []
    return [r for r in read_records(path, latest=False) if r.resource is Resource.AGENT_SESSION]


def final_session(path: Path) -> MeterRecord:
    finals = [r for r in session_records(path) if r.is_final]
    assert len(finals) == 1, finals
    return finals[0]


def assert_where(record: MeterRecord) -> None:
    assert record.session_id == JOB_ID
    assert (record.room, record.room_sid, record.agent_name, record.worker_id) == (ROOM, ROOM_SID, AGENT, WORKER)
    assert record.meta["job_id"] == JOB_ID and record.meta["worker_id"] == WORKER


# -- the session ends at the first end event --------------------------------------------------------------


async def test_ctx_shutdown_ends_the_session_at_the_call(clock: ManualClock, out: Path, room: FakeRoom) -> None:
    async def entry(ctx: JobContext) -> None:
        clock.advance(5)
        await ctx.connect()
        clock.advance(130.5)
        ctx.shutdown("caller hung up")
        clock.advance(7)  # the entrypoint keeps running after shutdown(): not session time

    run = await run_job(metered(entry, file=out, clock=clock), room=room)

    record = final_session(out)
    assert (record.start, record.end) == (at(5), at(135.5))
    assert record.raw == 130_500
    assert (record.unit, record.quantity) == (Unit.MINUTE, Decimal(3))  # 2 min 10.5 s bills 3 minutes
    assert record.meta["end_cause"] == "shutdown"
    assert record.meta["shutdown_reason"] == "caller hung up"
    assert record.meta["disconnect_reason"] == "CLIENT_INITIATED"  # the runner's own disconnect, afterwards
    assert_where(record)
    assert run.exit_reason == "caller hung up"


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (rtc.DisconnectReason.ROOM_DELETED, "room_ended"),
        (rtc.DisconnectReason.ROOM_CLOSED, "room_ended"),
        (rtc.DisconnectReason.PARTICIPANT_REMOVED, "agent_disconnected"),
        (rtc.DisconnectReason.SIGNAL_CLOSE, "agent_disconnected"),
    ],
)
async def test_disconnect_ends_the_session_at_the_event(
    clock: ManualClock, out: Path, room: FakeRoom, reason: int, cause: str
) -> None:
    connected = asyncio.Event()

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        clock.advance(61)
        connected.set()  # the entrypoint returns; the session goes on until the room says otherwise

    async def server(room: FakeRoom | None, _: Any) -> None:
        await connected.wait()
        assert room is not None
        room.server_disconnects(reason)
        clock.advance(LATE)

    run = await run_job(metered(entry, file=out, clock=clock), room=room, during=server)

    record = final_session(out)
    assert (record.start, record.end) == (at(0), at(61))
    assert record.quantity == Decimal(2)
    assert record.meta["end_cause"] == cause
    assert record.meta["disconnect_reason"] == rtc.DisconnectReason.Name(reason)
    assert record.meta["shutdown_reason"] == "room disconnected"
    assert run.exit_reason == "room disconnected"


class ModelFailed(Exception):
    pass


async def test_entrypoint_exception_propagates_and_ends_the_session_as_a_crash(
    clock: ManualClock, out: Path, room: FakeRoom, caplog: pytest.LogCaptureFixture
) -> None:
    error = ModelFailed("the model went away")

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        clock.advance(59.9)
        raise error

    with caplog.at_level(logging.ERROR, logger="livekit.agents"):
        run = await run_job(metered(entry, file=out, clock=clock), room=room)

    # The runner saw the very exception the entrypoint raised, not a wrapper of it.
    seen = [r.exc_info[1] for r in caplog.records if r.name == "livekit.agents" and r.exc_info]
    assert error in seen
    record = final_session(out)
    assert (record.start, record.end) == (at(0), at(59.9))
    assert record.quantity == Decimal(1)
    assert record.meta["end_cause"] == "job_crashed"
    assert record.meta["error"] == "ModelFailed"
    assert record.meta["shutdown_reason"] == "job crashed"
    assert run.exit_reason == "job crashed"


async def test_worker_shutdown_ends_the_session_when_requested(clock: ManualClock, out: Path, room: FakeRoom) -> None:
    meters: list[SessionMeter | None] = []

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        clock.advance(30)
        meters.append(meter_for(ctx))

    async def worker(_: FakeRoom | None, channel: Any) -> None:
        await until(lambda: bool(meters))
        channel.send_nowait(proto.ShutdownRequest())  # JobTermination, drain, worker exit
        meter = meters[0]
        assert meter is not None
        await until(lambda: meter.ended)
        clock.advance(LATE)

    run = await run_job(metered(entry, file=out, clock=clock), room=room, during=worker)

    record = final_session(out)
    assert (record.start, record.end) == (at(0), at(30))
    assert record.quantity == Decimal(1)
    assert record.meta["end_cause"] == "worker_shutdown"
    assert record.meta["shutdown_reason"] == "parent process shutdown"
    assert run.exit_reason == "parent process shutdown"


@pytest.mark.parametrize("reason", [rtc.DisconnectReason.ROOM_DELETED, rtc.DisconnectReason.ROOM_CLOSED])
async def test_a_room_that_ends_through_the_worker_first_is_still_the_end_cause(
    clock: ManualClock, out: Path, room: FakeRoom, reason: int
) -> None:
    # A LiveKit server that deletes or closes a room terminates the room's job through its worker,
    # and the room's own disconnect reaches the job a few milliseconds later (tests/test_e2e_livekit.py).
    meters: list[SessionMeter | None] = []

    async def entry(ctx: JobContext) -> None:
        gone = asyncio.Event()
        ctx.room.on("disconnected", lambda *_: gone.set())
        await ctx.connect()
        clock.advance(30)
        meters.append(meter_for(ctx))
        await gone.wait()  # still busy (closing its AgentSession, say) when the room's disconnect arrives

    async def server(room: FakeRoom | None, channel: Any) -> None:
        await until(lambda: bool(meters))
        channel.send_nowait(proto.ShutdownRequest())
        meter = meters[0]
        assert meter is not None and room is not None
        await until(lambda: meter.ended)
        clock.advance(0.005)
        room.server_disconnects(reason)
        clock.advance(LATE)

    await run_job(metered(entry, file=out, clock=clock), room=room, during=server)

    record = final_session(out)
    assert (record.start, record.end) == (at(0), at(30))  # the first end instant stays
    assert record.meta["end_cause"] == "room_ended"
    assert record.meta["disconnect_reason"] == rtc.DisconnectReason.Name(reason)


async def test_agent_session_connecting_for_the_entrypoint_starts_the_session(clock: ManualClock, out: Path) -> None:
    from livekit_metering.scripted import ScriptedLLM

    async def entry(ctx: JobContext) -> None:
        clock.advance(10)
        session = AgentSession(llm=ScriptedLLM(["Hello!"]))
        session.output.set_audio_enabled(False)
        # No ctx.connect() here: AgentSession.start connects through the JobContext when given the room.
        await session.start(Agent(instructions="be brief"), room=ctx.room)
        clock.advance(45)
        ctx.shutdown("conversation over")

    await run_job(metered(entry, file=out, clock=clock), fake_job=True)  # mock room, as in console mode

    record = final_session(out)
    assert (record.start, record.end) == (at(10), at(55))
    assert record.quantity == Decimal(1)
    assert record.meta["end_cause"] == "shutdown"


# -- no connection, no session ----------------------------------------------------------------------


async def _shutdown_before_connect(ctx: JobContext) -> None:
    ctx.shutdown("nobody came")


async def _raise_before_connect(ctx: JobContext) -> None:
    raise ModelFailed("before connect")


async def _connect_after_shutdown(ctx: JobContext) -> None:
    ctx.shutdown("changed my mind")
    await ctx.connect()


@pytest.mark.parametrize("entry", [_shutdown_before_connect, _raise_before_connect, _connect_after_shutdown])
async def test_a_job_that_never_connects_has_no_session_record(
    clock: ManualClock, out: Path, room: FakeRoom, entry: Any
) -> None:
    await run_job(metered(entry, file=out, clock=clock), room=room)
    assert session_records(out) == []


async def test_returning_without_connecting_then_worker_shutdown_has_no_session_record(
    clock: ManualClock, out: Path, room: FakeRoom
) -> None:
    async def entry(ctx: JobContext) -> None:
        clock.advance(20)

    async def worker(_: FakeRoom | None, channel: Any) -> None:
        await asyncio.sleep(0.05)
        channel.send_nowait(proto.ShutdownRequest())

    run = await run_job(metered(entry, file=out, clock=clock), room=room, during=worker)
    assert session_records(out) == []
    assert run.exit_reason == "parent process shutdown"


async def test_a_failed_connect_starts_no_session_and_its_error_propagates(
    clock: ManualClock, out: Path, room: FakeRoom, caplog: pytest.LogCaptureFixture
) -> None:
    room.connect_error = rtc.ConnectError("connection refused")

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()

    with caplog.at_level(logging.ERROR, logger="livekit.agents"):
        run = await run_job(metered(entry, file=out, clock=clock), room=room)

    assert session_records(out) == []
    assert room.connect_error in [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert run.exit_reason == "job crashed"


# -- checkpoints ------------------------------------------------------------------------------------------


async def test_checkpoints_run_while_the_session_is_open_and_the_final_record_supersedes_them(out: Path) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        meter = meter_for(ctx)
        assert meter is not None
        await until(lambda: sum(1 for r in session_records(out) if not r.is_final) >= 4)
        ctx.shutdown("done")

    await run_job(metered(entry, file=out, checkpoint_interval=0.02), room=FakeRoom())

    records = session_records(out)
    checkpoints = [r for r in records if r.status is Status.CHECKPOINT]
    (final,) = [r for r in records if r.is_final]
    assert len(checkpoints) >= 4
    assert {r.id for r in records} == {final.id}
    assert checkpoints[0].raw == 0  # written at connect: the start is on disk before the agent moves on
    assert all(r.start == final.start for r in records)
    raws = [r.raw for r in checkpoints]
    assert raws == sorted(raws) and final.raw >= raws[-1]
    assert all(final.supersedes(r) for r in checkpoints)
    assert [r for r in read_records(out) if r.id == final.id] == [final]


# -- what the records carry -------------------------------------------------------------------------------


async def test_model_usage_is_recorded_into_the_jobs_meter(clock: ManualClock, out: Path, room: FakeRoom) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        meter = current_meter()
        assert meter is meter_for(ctx)  # what the Metered adapters find
        meter.record(Resource.TTS, 42, usage=meter.next_usage("tts"), start=at(0), end=at(1), model="cartesia/sonic-2")
        clock.advance(12)
        ctx.shutdown()

    await run_job(metered(entry, file=out, clock=clock), room=room)

    (tts,) = [r for r in read_records(out) if r.resource is Resource.TTS]
    assert tts.session_id == JOB_ID and tts.room == ROOM and tts.raw == 42
    assert final_session(out).meta["shutdown_reason"] == "user requested"


async def test_customer_from_job_metadata_and_attributes_callable(
    clock: ManualClock, out: Path, room: FakeRoom
) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        ctx.shutdown()

    wrapped = metered(entry, file=out, clock=clock, customer="customer_id", attributes=_tier_attributes)
    await run_job(wrapped, room=room, metadata=json.dumps({"customer_id": "acme", "tier": "gold"}))

    record = final_session(out)
    assert record.customer == "acme"
    assert record.attributes == {"tier": "gold"}


def _tier_attributes(ctx: JobContext) -> dict[str, str]:
    return {"tier": json.loads(ctx.job.metadata)["tier"]}


async def test_customer_from_a_participant_attribute_that_arrives_after_connect(
    clock: ManualClock, out: Path, room: FakeRoom
) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()  # no participant yet: the initial checkpoint has no customer
        room.remote_participants["PA_caller"] = FakeParticipant("caller", {"lk.customer": "globex"})
        ctx.shutdown()

    await run_job(metered(entry, file=out, clock=clock, customer="lk.customer"), room=room)

    first, *_ = session_records(out)
    assert first.customer == ""
    assert final_session(out).customer == "globex"


def _failing_customer(ctx: JobContext) -> str:
    raise LookupError("no such customer")


async def test_metering_failures_are_logged_and_never_reach_the_agent(
    clock: ManualClock, out: Path, room: FakeRoom, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenExporter:
        def export(self, batch: Any) -> None:
            raise OSError("disk full")

        def shutdown(self) -> None:
            raise OSError("still full")

    finished = []

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        ctx.shutdown("done")
        finished.append(True)

    with caplog.at_level(logging.ERROR, logger="livekit_metering"):
        run = await run_job(
            metered(entry, exporter=BrokenExporter(), clock=clock, customer=_failing_customer), room=room
        )

    assert finished == [True]
    assert run.exit_reason == "done"
    messages = [r.getMessage() for r in caplog.records if r.name == "livekit_metering"]
    assert any("could not record" in m for m in messages)
    assert any("customer" in m for m in messages)


async def test_one_cost_line_per_session(
    clock: ManualClock, out: Path, room: FakeRoom, caplog: pytest.LogCaptureFixture
) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        meter = current_meter()
        meter.record(Resource.TTS, 120, usage=meter.next_usage("tts"), start=at(0), end=at(1), model="cartesia/sonic-2")
        clock.advance(125)
        ctx.shutdown()

    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        await run_job(metered(entry, file=out, clock=clock, plan="build"), room=room)

    lines = [r for r in caplog.records if r.name == "livekit_metering" and r.levelno == logging.INFO]
    lines = [r for r in lines if r.getMessage().startswith("session ")]
    assert len(lines) == 1
    text = lines[0].getMessage()
    expected = [f"session {JOB_ID}", "ended=shutdown", "duration=125s", "billed_minutes=3", "tts_chars=120"]
    expected.append("plan=build")
    for part in expected:
        assert part in text, text
    summary = lines[0].livekit_metering  # type: ignore[attr-defined]
    assert summary["billed_minutes"] == "3" and summary["tts_characters"] == 120


async def test_preview_option_prints_the_running_cost_and_the_summary_at_the_end(
    clock: ManualClock, out: Path, room: FakeRoom, capsys: pytest.CaptureFixture[str]
) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        clock.advance(90)
        ctx.shutdown("done")

    await run_job(metered(entry, file=out, clock=clock, preview=True), room=room)

    printed = capsys.readouterr().err
    assert "session so far" in printed  # the live line of each record
    assert "Agent session" in printed and "2 minutes" in printed  # 90 s bills 2 minutes, in the summary table
    assert "$0.02" in printed  # at the Ship plan's $0.01 a minute


async def test_preview_is_off_unless_asked_for_or_in_dev_mode(
    clock: ManualClock, out: Path, room: FakeRoom, capsys: pytest.CaptureFixture[str]
) -> None:
    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        ctx.shutdown("done")

    await run_job(metered(entry, file=out, clock=clock), room=room)

    assert "session so far" not in capsys.readouterr().err
