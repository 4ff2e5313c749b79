"""The agent and LiveKit's webhooks report the same usages: a self-hosted agent's own connection and the
SIP calls it sees. In a real collector each is stored once, under the id both sides derive; the
agent's final figure wins, and a call the agent saw only part of is closed by the webhook's.

The agent side is livekit-agents' real job runner with a real AgentSession (FakeRoom for the server);
the webhook side is signed LiveKit webhooks (tests/webhook_month.py) for the same room and participants.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from collector_helpers import body_of, post
from harness.jobproc import JOB_ID, ROOM_SID, FakeParticipant, FakeRoom, ManualClock, run_job
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext
from livekit.protocol.models import ParticipantInfo
from test_webhook_usage import Clock, api, deliver
from webhook_month import Month

from livekit_metering.collector.config import Limits
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector
from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.hosting import CLOUD_AGENT_ENV, HOSTING_ENV
from livekit_metering.records import Resource, participant_usage_id, sip_call_id
from livekit_metering.scripted import ScriptedLLM

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)  # the manual clock's wall time at its start
SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
CALLER = {"sip.ruleID": "SDR_1", "sip.trunkPhoneNumber": "+14155550100", "sip.callID": "SCL_1"}  # a LiveKit number


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def self_hosted_on_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (HOSTING_ENV, *CLOUD_AGENT_ENV, "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_OBSERVABILITY_URL"):
        monkeypatch.delenv(name, raising=False)


async def test_the_agents_figures_and_the_webhooks_are_stored_once(tmp_path: Path, self_hosted_on_cloud: None) -> None:
    clock, out, room = ManualClock(), tmp_path / "r.jsonl", FakeRoom()
    first = FakeParticipant("sip_first", CALLER, kind=SIP)
    second = FakeParticipant("sip_second", CALLER, kind=SIP, joined_at=at(-4))
    room.remote_participants[second.identity] = second  # on the line before the agent came

    async def entry(ctx: JobContext) -> None:
        clock.advance(2)
        await ctx.connect()
        session: AgentSession[None] = AgentSession(llm=ScriptedLLM(["Hello!"]))
        await session.start(Agent(instructions="be brief"))
        await session.run(user_input="hi")
        clock.advance(5)
        room.joins(first)
        clock.advance(61)
        room.leaves(first)
        clock.advance(24)
        ctx.shutdown("done")  # at +92 s; the second caller is still on the line
        await session.aclose()

    await run_job(metered(entry, file=out, clock=clock), room=room, url="wss://acme.livekit.cloud")
    own = read_records(out)

    # What LiveKit reports for the same room (its times differ a little from the agent's, on purpose).
    month = Month()
    agent_sid = "PA_agent-" + JOB_ID
    month.participant("test1", agent_sid, "agent-" + JOB_ID, at(1.5), at(150), kind=ParticipantInfo.Kind.AGENT)
    month.participant("test1", first.sid, first.identity, at(6.5), at(130), kind=SIP, attributes=CALLER)
    month.participant("test1", second.sid, second.identity, at(-4), at(200), kind=SIP, attributes=CALLER)
    assert ROOM_SID == "RM_test1"

    keys = {TEST_KEY: (TEST_SECRET, "acme")}
    limits = Limits(max_past=timedelta(days=3650))
    async with (
        run_collector(keys=keys, limits=limits, clock=Clock(at(86_400))) as url,
        aiohttp.ClientSession() as http,
    ):
        for hook in month.hooks[:3]:  # some webhooks before the agent's records, some after
            await deliver(http, url, hook)
        status, doc = await post(http, url, body_of(own))
        assert status == 200 and {r["status"] for r in doc["results"]} <= {"accepted", "duplicate"}, doc
        for hook in month.hooks[3:]:
            await deliver(http, url, hook)
        stored = {r["id"]: r for r in (await api(http, url, f"/v1/sessions/{JOB_ID}/records"))["records"]}
        usage = await api(http, url, "/v1/usage", group_by="resource", since="2026-11-27", until="2026-11-28")

    agent = stored[participant_usage_id(ROOM_SID, agent_sid, Resource.CONNECTION)]
    assert (agent["raw"], agent["quantity"]) == (90_000, "2")  # the agent's own 90 s, not the webhook's 148.5 s
    call = stored[sip_call_id(ROOM_SID, first.sid)]
    # the agent saw this call whole: its 61 s, not the webhook's 123.5 s
    assert (call["resource"], call["raw"], call["quantity"]) == ("sip_inbound", 61_000, "2")
    late = stored[sip_call_id(ROOM_SID, second.sid)]
    # the agent saw it from the join time to its own end only: LiveKit's leave closes it, 204 s
    assert (late["status"], late["raw"], late["quantity"]) == ("ok", 204_000, "4")
    totals: dict[str, Decimal] = {}
    for row in usage["rows"]:
        totals[row["resource"]] = totals.get(row["resource"], Decimal(0)) + Decimal(row["quantity"])
    assert totals["connection"] == 2 and totals["sip_inbound"] == 2 + 4  # each usage once
