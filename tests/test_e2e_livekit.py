"""End to end against a real LiveKit server: every part real but the paid model providers.

The open-source ``livekit-server`` (LIVEKIT_METERING_TEST_SERVER; .ci/run installs the pinned version)
runs in dev mode on loopback; a real ``AgentServer`` worker (``tests/harness/e2e_agent.py``)
registers with it; each test creates a room with an explicit dispatch of that agent, a caller made
with the ``livekit`` SDK joins and publishes a tone, the agent holds a voice ``AgentSession`` with the
scripted models, and ``@metered`` ships its records through the outbox to a collector that also
receives the server's own webhooks. Each test then ends the session one way and checks what the
collector holds against what the server reported.

One session at a time: the machine is small, and the server, the worker, its job process and the
caller already share it. About a minute in all, most of it real conversation time and worker start-up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from harness.livekit_server import CollectorClient, SessionRun, Stack, only, run_session
from livekit.protocol import models

from livekit_metering.rates import get_policy
from livekit_metering.records import UNIT_SIZE, MeterRecord, Resource, Status

pytestmark = pytest.mark.slow

INSTRUCTIONS = "You answer callers of the metering test line in one short sentence."  # as in e2e_agent
SCRIPT = [
    ("Hello, is this the metering line?", "Yes, every second of this call is measured."),
    ("And what will it cost me?", "One minute of agent time, rounded up, plus the models."),
]
MINUTE_MS = 60_000
# The collector closes a session with neither a final record nor a webhook this long after its last
# checkpoint. Longer than a webhook takes to arrive after a kill (the caller leaves, the room closes
# DEPARTURE_TIMEOUT later), so only the test that holds the webhooks back sees the sweep.
STALE_AFTER = timedelta(seconds=8)


@pytest.fixture(scope="module")
def stack(livekit_server_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(livekit_server_binary, tmp_path_factory.mktemp("e2e"), close_stale_after=STALE_AFTER)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def lk(stack: Stack) -> Stack:
    """The stack with a registered worker (restarted if a test killed it)."""
    stack.ensure_worker()
    return stack


@pytest.fixture
def collector(stack: Stack) -> CollectorClient:
    return CollectorClient(stack.collector_url)


def agrees_with_the_server(run: SessionRun) -> None:
    """The agent's billed session time is within one rounding increment of the server's join and leave
    times for the agent participant (as the tap saw them), and it is the usage the webhooks report for
    that participant: one id, stored once (a self-hosted agent's time is its ``connection``, issue 16)."""
    s = run.session
    joined_ms, left_ms = run.presence_ms(run.agent)
    rule = get_policy(s.policy).rule(s.resource)
    increment = Decimal(rule.increment) / UNIT_SIZE[rule.unit]
    from_server = rule.quantity(left_ms - joined_ms)
    assert abs(s.quantity - from_server) <= increment, (s.quantity, from_server, s.raw, left_ms - joined_ms)
    assert run.connection(run.agent) == s


def caller_connection_from_webhooks(run: SessionRun) -> None:
    """The caller's WebRTC minutes, which only the server sees: from its join to its leave as the
    webhooks report them, in the room's own usage (hand-calculated from the tap's copies)."""
    c = run.connection("caller")
    joined_ms, left_ms = run.presence_ms("caller")
    assert c.session_id == f"room:{run.room_sid}" and c.status is Status.OK and c.meta["source"] == "webhook"
    assert (ms(c.start), ms(c.end)) == (joined_ms, left_ms) and c.raw == left_ms - joined_ms
    assert c.quantity == math.ceil(c.raw / MINUTE_MS)


async def billed_once(collector: CollectorClient, run: SessionRun) -> None:
    """Each usage billed once: the room's usage is its records (the agent's session and the usage its
    webhooks reported), one row per usage, and the project's month-to-date roll-ups (what invoices are
    made of) equal every stored record summed, after all the webhooks, checkpoints and final records
    that reached the collector."""
    in_room = {k: v for k, v in (await collector.usage("room")).items() if k[0] == run.room}
    assert in_room == totals(run.room_records, lambda r: run.room)
    assert len({r.id for r in run.room_records}) == len(run.room_records)
    assert await collector.usage("resource") == totals(await collector.all_records(), lambda r: r.resource.value)


def totals(records: list[MeterRecord], key: Callable[[MeterRecord], str]) -> dict[tuple[str, str], Decimal]:
    """Billed quantity per (group key, resource), zeros left out."""
    summed: dict[tuple[str, str], Decimal] = {}
    for r in records:
        group = (key(r), r.resource.value)
        summed[group] = summed.get(group, Decimal(0)) + r.quantity
    return {k: v for k, v in summed.items() if v}


def stt_kept_until_the_kill(run: SessionRun) -> None:
    """The STT stream never closed, but its last running figure (a checkpoint every second) is stored:
    as it is, or closed there by the stale sweep (flagged, so a later real end would still win)."""
    stt = only(run.records, Resource.STT)
    assert stt.raw >= 1000 and ms(stt.end) <= run.marks["killed"], stt
    if stt.status is not Status.CHECKPOINT:
        assert stt.meta["closed_by"] == "stale-checkpoint" and stt.meta["flag"] == "no-end", stt
    assert stt.quantity == math.ceil(stt.raw / 1000)


async def run_after_release(collector: CollectorClient, run: SessionRun) -> SessionRun:
    """``run`` as the collector holds it now."""
    session = await collector.records(run.session.session_id)
    return dataclasses.replace(run, records=session, room_records=await collector.room_records(run.room))


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# -- the tests ----------------------------------------------------------------------------------------------------


async def test_ctx_shutdown_after_a_conversation_is_metered_once_and_agrees_with_the_servers_webhooks(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "shutdown", SCRIPT, workdir=tmp_path)
    s = run.session

    # The dispatch: the job the server created for this room, run by the metered agent.
    assert s.room_sid == run.room_sid and s.agent_name == "metered-e2e"
    assert run.webhook("participant_joined", run.agent).event.participant.kind == models.ParticipantInfo.Kind.AGENT

    # The agent's own final figure, from its connection to ctx.shutdown().
    assert s.status is Status.OK and "closed_by" not in s.meta, s.meta
    assert s.meta["end_cause"] == "shutdown" and s.meta["shutdown_reason"] == "conversation over"
    assert timedelta(milliseconds=s.raw) == s.end - s.start
    assert 0 < s.raw < MINUTE_MS and s.quantity == 1  # under a minute: one minute

    # What the server saw of the agent: it joined before the agent's connect() returned, and left
    # after the agent asked to shut down (the job still closes its session and the room first).
    joined_ms, _ = run.presence_ms(run.agent)
    assert joined_ms <= ms(s.start) and ms(s.end) <= run.webhook("participant_left", run.agent).arrived_ms
    agrees_with_the_server(run)

    # The models, as the scripted providers bill them (figures by hand from the script).
    prompts = [
        len(INSTRUCTIONS) + len(SCRIPT[0][0]),
        len(INSTRUCTIONS) + len(SCRIPT[0][0]) + len(SCRIPT[0][1]) + len(SCRIPT[1][0]),
    ]
    llm_in = [r.raw for r in run.records if r.resource is Resource.LLM_INPUT]
    assert sorted(llm_in) == sorted(max(1, chars // 4) for chars in prompts)
    llm_out = [r.raw for r in run.records if r.resource is Resource.LLM_OUTPUT]
    assert sorted(llm_out) == sorted(len(reply.split(" ")) for _, reply in SCRIPT)
    assert sum(r.raw for r in run.records if r.resource is Resource.TTS) == sum(len(reply) for _, reply in SCRIPT)
    stt = only(run.records, Resource.STT)
    assert stt.meta["provider_ms"] >= 2 * 500  # the caller's audio reached the scripted STT before each line
    assert stt.quantity == math.ceil(stt.raw / 1000)

    # The project's usage the server alone reports, and each usage billed once, though the agent's
    # participant_left webhook reached the collector too.
    assert {hook.answer for hook in run.webhooks} == {200}
    caller_connection_from_webhooks(run)
    await billed_once(collector, run)


async def test_the_room_deleted_through_the_room_service_ends_the_session_with_the_room(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "deleted", SCRIPT[:1], workdir=tmp_path)
    s = run.session

    assert s.status is Status.OK and "closed_by" not in s.meta, s.meta
    # The server ends the job through its worker and disconnects the agent: both are the deletion.
    assert s.meta["end_cause"] == "room_ended" and s.meta["disconnect_reason"] == "ROOM_DELETED", s.meta
    assert run.webhook("participant_left", run.agent).disconnect_reason == "ROOM_DELETED"
    assert ms(s.end) >= run.marks["deleted"]  # never billed short of the deletion
    agrees_with_the_server(run)
    caller_connection_from_webhooks(run)
    await billed_once(collector, run)


async def test_the_caller_leaving_closes_the_room_and_the_agents_session_ends_with_it(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "left", SCRIPT[:1], workdir=tmp_path)
    s = run.session

    assert s.status is Status.OK and "closed_by" not in s.meta, s.meta
    # The server closes the room once its last non-agent participant has gone; the agent is billed
    # until then, not until the caller left.
    assert run.webhook("participant_left", run.agent).disconnect_reason == "ROOM_CLOSED"
    assert s.meta["end_cause"] == "room_ended" and s.meta["disconnect_reason"] == "ROOM_CLOSED", s.meta
    assert run.caller.left_ms is not None and ms(s.end) > run.caller.left_ms
    agrees_with_the_server(run)
    caller_connection_from_webhooks(run)
    await billed_once(collector, run)


async def test_a_self_hosted_agent_on_its_own_server_is_billed_once_as_connection_time_livekit_does_not_bill(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "shutdown", SCRIPT[:1], workdir=tmp_path)

    # Against its own LiveKit server (not a LiveKit Cloud URL) the agent is self-hosted: its time is its
    # participant's connection, one record under the id the webhooks give it too, with the agent's own
    # figure, and LiveKit bills none of it (README, "Where the agent runs").
    assert [r for r in run.records if r.resource is Resource.AGENT_SESSION] == []
    s = run.session
    assert s.resource is Resource.CONNECTION
    assert "closed_by" not in s.meta and s.meta["end_cause"] == "shutdown"
    assert s.provider == "self-hosted" and s.meta["hosting"] == "self-hosted" and s.meta["session_time"] is True
    agrees_with_the_server(run)
    invoice = await collector.get("/v1/invoice")
    assert "connection via self-hosted" in invoice["not_billed_by_livekit"]
    await billed_once(collector, run)


async def test_a_job_process_killed_mid_session_without_webhooks_is_closed_at_its_last_checkpoint(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "stale", SCRIPT[:1], workdir=tmp_path)
    s = run.session

    assert s.status is Status.OK and s.meta["closed_by"] == "stale-checkpoint"
    assert run.checkpoint is not None and run.checkpoint.end <= s.end and ms(s.end) <= run.marks["killed"]
    assert all(hook.answer is None for hook in run.webhooks)  # none reached the collector
    stt_kept_until_the_kill(run)

    # The webhooks arrive late after all: the session's close stands, they add only the room's usage
    # that nothing else reports (both participants' connections), and nothing is billed twice.
    assert [r.id for r in run.room_records] == [r.id for r in run.records]
    answers = await lk.release(run.room)
    assert len(answers) == len(run.webhooks) and set(answers) == {200}
    late = await run_after_release(collector, run)
    assert late.session == s == late.connection(run.agent)
    added = {r.id for r in late.room_records} - {r.id for r in run.records}
    assert added == {late.connection("caller").id}
    caller_connection_from_webhooks(late)
    await billed_once(collector, late)


async def test_a_worker_sigkilled_mid_session_is_closed_by_the_servers_participant_left_webhook(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    run = await run_session(lk, "killed", SCRIPT[:1], workdir=tmp_path)
    s, checkpoint = run.session, run.checkpoint

    # The dead agent stays in the room until it closes (the caller left); the server then reports it
    # gone, and its figure (the agent's join to its leave) replaces the agent's last checkpoint, under
    # the agent's labels: its job's session, and not billed by LiveKit (its own server).
    left = run.webhook("participant_left", run.agent)
    assert left.disconnect_reason == "ROOM_CLOSED"
    assert s.status is Status.OK and s.meta["closed_by"] == "webhook:participant_left"
    assert (ms(s.start), ms(s.end)) == run.presence_ms(run.agent)
    assert checkpoint is not None and checkpoint.end <= s.end and checkpoint.session_id == s.session_id
    assert s.provider == checkpoint.provider == "self-hosted"
    agrees_with_the_server(run)
    caller_connection_from_webhooks(run)
    stt_kept_until_the_kill(run)
    await billed_once(collector, run)
