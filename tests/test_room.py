"""The room around the agent: SIP callers and the downstream data the agent receives.

Job-runner tests drive livekit-agents' real ``_JobProc`` with a real AgentSession; the FakeRoom plays
the LiveKit server: participants join and leave (``participant_connected`` / ``_disconnected``), and
its subscriber transport's byte counter is what ``get_rtc_stats()`` reports. The manual clock moves
only when the test moves it, so every instant in a record is checked exactly.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, get, post
from harness.jobproc import JOB_ID, ROOM_SID, FakeParticipant, FakeRoom, ManualClock, run_job, until
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext

from livekit_metering.collector.config import Limits
from livekit_metering.collector.testing import run_collector
from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.hosting import CLOUD_AGENT_ENV, HOSTING_ENV
from livekit_metering.pricing import PriceBook
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status, sip_call_id
from livekit_metering.scripted import ScriptedLLM
from livekit_metering.telephony import sip_resource

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
CLOUD_URL = "wss://acme-4x7k.livekit.cloud"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def inbound(called: str, *, trunk: str = "", caller: str = "+14155550123") -> dict[str, str]:
    """The sip.* attributes LiveKit SIP sets on an inbound caller."""
    attributes = {
        "sip.callID": "SCL_x1",
        "sip.ruleID": "SDR_rule",
        "sip.phoneNumber": caller,
        "sip.trunkPhoneNumber": called,
        "sip.callStatus": "active",
    }
    if trunk:
        attributes["sip.trunkID"] = trunk
    return attributes


def outbound(dialled: str, *, trunk: str = "ST_outbound") -> dict[str, str]:
    return {"sip.callID": "SCL_out", "sip.trunkID": trunk, "sip.phoneNumber": dialled, "sip.trunkPhoneNumber": "+1415"}


# -- the classification rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "numbers", "expected"),
    [
        (inbound("+14155550100"), None, Resource.SIP_INBOUND),  # a LiveKit number: no inbound trunk
        (inbound("+18005550100"), None, Resource.SIP_INBOUND_TOLL_FREE),
        (inbound("+1 (888) 555-0100"), None, Resource.SIP_INBOUND_TOLL_FREE),
        (inbound("+18335550100", trunk="ST_twilio"), None, Resource.SIP_TRUNK),  # toll-free, but a third-party trunk
        (inbound("+14155550100", trunk="ST_twilio"), None, Resource.SIP_TRUNK),
        (outbound("+18005550100"), None, Resource.SIP_TRUNK),  # LiveKit numbers take no outbound calls
        # with the project's numbers configured, the list decides
        (inbound("+14155550100", trunk="ST_x"), ["+1 415 555 0100"], Resource.SIP_INBOUND),
        (inbound("+14155550199"), ["+14155550100"], Resource.SIP_TRUNK),
        (inbound("8005550100"), ["+18005550100"], Resource.SIP_INBOUND_TOLL_FREE),
        (inbound("+442071234567"), ["+442071234567"], Resource.SIP_INBOUND),  # not North American: not toll-free
    ],
)
def test_sip_calls_are_classified_by_direction_called_number_and_trunk(
    attributes: dict[str, str], numbers: list[str] | None, expected: Resource
) -> None:
    assert sip_resource(attributes, livekit_numbers=numbers) is expected


# -- SIP calls in the real job runner ---------------------------------------------------------------


def sip_records(out: Path) -> list[MeterRecord]:
    return [r for r in read_records(out) if r.resource.value.startswith("sip_")]


async def _call(
    clock: ManualClock,
    out: Path,
    script: Any,
    *,
    room: FakeRoom | None = None,
    end: float = 100,
    **options: Any,
) -> FakeRoom:
    """The agent connects at +2 s and runs a real AgentSession; ``script(room)`` plays the callers; ends at ``end``."""
    room = room or FakeRoom()
    played = False

    async def entry(ctx: JobContext) -> None:
        nonlocal played
        clock.advance(2)
        await ctx.connect()
        session: AgentSession[None] = AgentSession(llm=ScriptedLLM(["Hello, how can I help?"]))
        await session.start(Agent(instructions="Answer briefly."))
        await session.run(user_input="hi")
        await script(room)
        played = True
        clock.now = 1000 + end
        ctx.shutdown("call over")
        await session.aclose()

    await run_job(metered(entry, file=out, clock=clock, **options), room=room)
    assert played
    return room


async def test_a_caller_who_joins_after_the_agent_and_hangs_up_61_s_later_bills_2_inbound_minutes(
    tmp_path: Path,
) -> None:
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    caller = FakeParticipant("sip_+14155550123", inbound("+14155550100"), kind=SIP)

    async def script(room: FakeRoom) -> None:
        clock.advance(5)  # the caller joins 5 s after the agent connected
        room.joins(caller)
        clock.advance(61)
        room.leaves(caller)

    await _call(clock, out, script)
    (call,) = sip_records(out)
    assert call.resource is Resource.SIP_INBOUND and call.status is Status.OK
    assert (call.start, call.end, call.raw) == (at(7), at(68), 61_000)
    assert call.quantity == Decimal(2)  # 61 s: 2 minutes, rounded up per call
    assert call.id == sip_call_id(ROOM_SID, caller.sid)  # the id LiveKit's webhooks give the collector
    assert call.session_id == JOB_ID
    assert call.meta["direction"] == "inbound" and call.meta["sip_call_id"] == "SCL_x1"
    assert call.meta["participant_sid"] == caller.sid and "clipped" not in call.meta
    assert call.meta["start_source"] == "participant_connected"
    # its start was on disk as a checkpoint when the caller joined
    firsts = [r for r in read_records(out, latest=False) if r.id == call.id]
    assert (firsts[0].status, firsts[0].start, firsts[0].raw) == (Status.CHECKPOINT, at(7), 0)
    # $0.01 a minute past the Ship quota (hand calculation: 2 × 0.01)
    assert PriceBook.bundled().cost([call], plan="ship").total == Decimal("0.02")


async def test_a_toll_free_call_bills_toll_free_minutes(tmp_path: Path) -> None:
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    caller = FakeParticipant("sip_caller", inbound("+18885550100"), kind=SIP)

    async def script(room: FakeRoom) -> None:
        clock.advance(1)
        room.joins(caller)
        clock.advance(125)
        room.leaves(caller)

    await _call(clock, out, script, end=200)
    (call,) = sip_records(out)
    assert call.resource is Resource.SIP_INBOUND_TOLL_FREE and call.raw == 125_000 and call.quantity == Decimal(3)
    assert PriceBook.bundled().cost([call], plan="ship").total == Decimal("0.06")  # 3 × $0.02


async def test_calls_through_a_trunk_and_calls_the_agent_places_bill_trunk_minutes(tmp_path: Path) -> None:
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    trunk_caller = FakeParticipant("sip_in", inbound("+14155550100", trunk="ST_twilio"), kind=SIP)
    dialled = FakeParticipant("sip_out", outbound("+14155550111"), kind=SIP)  # create_sip_participant joins it
    web_user = FakeParticipant("browser-user")  # a standard participant: not a call

    async def script(room: FakeRoom) -> None:
        room.joins(web_user)
        room.joins(trunk_caller)
        clock.advance(30)
        room.joins(dialled)
        clock.advance(10)
        room.leaves(trunk_caller)
        clock.advance(10)
        room.leaves(dialled)

    await _call(clock, out, script)
    calls = {r.meta["participant_sid"]: r for r in sip_records(out)}
    assert set(calls) == {trunk_caller.sid, dialled.sid}
    assert calls[trunk_caller.sid].resource is Resource.SIP_TRUNK and calls[trunk_caller.sid].raw == 40_000
    assert calls[dialled.sid].resource is Resource.SIP_TRUNK and calls[dialled.sid].raw == 20_000
    assert calls[dialled.sid].meta["direction"] == "outbound"
    assert [c.quantity for c in calls.values()] == [Decimal(1), Decimal(1)]  # each call rounded on its own


async def test_a_caller_already_there_starts_at_the_servers_join_time(tmp_path: Path) -> None:
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    early = FakeParticipant("sip_early", inbound("+14155550100"), kind=SIP, joined_at=T0 - timedelta(seconds=4))
    room = FakeRoom()
    room.remote_participants[early.identity] = early  # dispatched on the call: the caller was there first

    async def script(room: FakeRoom) -> None:
        clock.advance(50)
        room.leaves(early)

    await _call(clock, out, script, room=room, end=90)
    (call,) = sip_records(out)
    assert (call.start, call.end, call.raw) == (at(-4), at(52), 56_000)  # joined 4 s before T0, left at +52 s
    assert call.status is Status.OK and call.quantity == Decimal(1)
    assert call.meta["start_source"] == "joined_at" and "clipped" not in call.meta


async def test_a_call_the_agent_saw_only_part_of_stays_a_checkpoint_marked_clipped(tmp_path: Path) -> None:
    """No join time from the SDK, and still on the line when the session ends: the agent's figure stays
    a checkpoint, for the collector to close at the end LiveKit reports (participant_left, room_finished)."""
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    early = FakeParticipant("sip_early", inbound("+14155550100"), kind=SIP)
    room = FakeRoom()
    room.remote_participants[early.identity] = early

    async def script(room: FakeRoom) -> None:
        clock.advance(50)  # and still there when the session ends

    await _call(clock, out, script, room=room, end=90)
    (call,) = sip_records(out)
    assert (call.start, call.end) == (at(2), at(90))  # from the agent's connect to the session's end
    assert call.status is Status.CHECKPOINT  # never final: the agent did not see the call end
    assert call.meta["clipped"] == "both" and call.meta["start_source"] == "agent_connected"


async def test_configured_livekit_numbers_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_METERING_PHONE_NUMBERS", "+14155550100, +18005550100")
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    ours = FakeParticipant("sip_a", inbound("+14155550100", trunk="ST_imported"), kind=SIP)
    theirs = FakeParticipant("sip_b", inbound("+14155550199"), kind=SIP)

    async def script(room: FakeRoom) -> None:
        room.joins(ours)
        room.joins(theirs)
        clock.advance(10)

    await _call(clock, out, script)
    kinds = {r.meta["participant_sid"]: r.resource for r in sip_records(out)}
    assert kinds == {ours.sid: Resource.SIP_INBOUND, theirs.sid: Resource.SIP_TRUNK}


# -- downstream data ----------------------------------------------------------------------------------


@pytest.fixture
def self_hosted_on_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (HOSTING_ENV, *CLOUD_AGENT_ENV, "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_OBSERVABILITY_URL"):
        monkeypatch.delenv(name, raising=False)


async def test_downstream_bytes_from_rtc_stats_round_up_to_a_hundredth_of_a_gb(
    tmp_path: Path, self_hosted_on_cloud: None
) -> None:
    clock, out = ManualClock(), tmp_path / "r.jsonl"
    room = FakeRoom()

    def running() -> int:
        found = [r for r in read_records(out, latest=False) if r.resource is Resource.DATA_TRANSFER]
        return found[-1].raw if found else -1

    async def entry(ctx: JobContext) -> None:
        clock.advance(1)
        await ctx.connect()
        room.bytes_received = 4_000_000
        await until(lambda: running() == 4_000_000)  # a periodic checkpoint samples the counter
        room.bytes_received = 1_000  # a full reconnect: the new transport counts from zero again
        await until(lambda: running() == 4_001_000)  # the first transport's bytes are kept
        room.bytes_received = 3_000_001
        clock.advance(30)
        ctx.shutdown("done")

    await run_job(metered(entry, file=out, clock=clock, checkpoint_interval=0.02), room=room, url=CLOUD_URL)
    (final,) = [r for r in read_records(out) if r.resource is Resource.DATA_TRANSFER]
    assert final.status is Status.OK
    assert final.raw == 7_000_001  # 4,000,000 before the reconnect + 3,000,001 after, sampled before disconnect
    assert final.quantity == Decimal("0.01")  # 0.007 GB rounds up to the 0.01 GB increment
    assert final.meta["hosting"] == "self-hosted-on-cloud" and final.start == at(1)
    assert final.id == f"{JOB_ID}/session/data_transfer"


async def test_a_month_of_data_transfer_on_the_invoice_matches_a_hand_calculation_to_the_cent() -> None:
    """250 sessions in November, each with the downstream bytes of one session as the agent measures
    them; the Ship plan includes 250 GB, then $0.12 a GB. Checked on the price book's invoice preview
    and on the collector's, which prices its roll-ups."""
    policy = get_policy()
    sizes = [1_234_567_890 + 7_777_777 * i for i in range(250)]  # about 1.2 to 3.2 GB each
    records = [
        policy.record(
            id=f"AJ_{i}/session/data_transfer",
            session_id=f"AJ_{i}",
            resource=Resource.DATA_TRANSFER,
            raw=size,
            start=datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(hours=2 * i),
            end=datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(hours=2 * i, minutes=5),
            meta={"hosting": "self-hosted-on-cloud"},
        )
        for i, size in enumerate(sizes)
    ]
    # by hand: each session up to whole hundredths of a GB (10^7 bytes), then summed
    hundredths = sum(math.ceil(size / 10_000_000) for size in sizes)
    assert hundredths == sum(int(r.quantity * 100) for r in records)
    billable = Decimal(hundredths - 250 * 100) / 100  # past the 250 GB included
    expected = (billable * Decimal("0.12")).quantize(Decimal("0.01"))
    # 550.73 GB of bytes, 552.09 GB once each session is rounded up; 302.09 GB past the quota at $0.12
    # = $36.2508 (rounding the month's sum instead would give 300.73 GB and $36.09)
    assert (hundredths, expected) == (55_209, Decimal("36.25"))

    invoice = PriceBook.bundled().invoice(records, plan="ship", month="2026-11")
    (line,) = [ln for ln in invoice.lines if ln.resource == "data_transfer"]
    assert (line.quantity, line.included, line.billable, line.amount) == (
        Decimal(hundredths) / 100,
        Decimal(250),
        billable,
        expected,
    )
    assert invoice.total == Decimal(50) + expected  # the plan fee and the data

    async with run_collector(limits=Limits(max_past=timedelta(days=3650))) as url, aiohttp.ClientSession() as http:
        status, answer = await post(http, url, body_of(records))
        assert status == 200 and [r["status"] for r in answer["results"]] == ["accepted"] * 250, answer
        status, collected = await get(http, url, "/v1/invoice?month=2026-11&plan=ship")
    assert status == 200
    (remote,) = [ln for ln in collected["lines"] if ln["resource"] == "data_transfer"]
    assert Decimal(remote["amount"]) == expected and Decimal(collected["total"]) == Decimal(50) + expected
