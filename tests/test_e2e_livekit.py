"""End to end against a real LiveKit server: every part real but the paid model providers.

The open-source ``livekit-server`` (LIVEKIT_METERING_TEST_SERVER; .ci/run installs the pinned version)
runs in dev mode on loopback; a real ``AgentServer`` worker (``tests/harness/e2e_agent.py``)
registers with it; each test creates a room with an explicit dispatch of that agent, a caller made
with the ``livekit`` SDK joins and publishes a tone, the agent holds a voice ``AgentSession`` with the
scripted models, and ``@metered`` ships its records through the outbox to a collector that also
receives the server's own webhooks. Each test then ends the session one way and checks what the
collector holds against what the server reported.

One session at a time: the machine is small, and the server, the worker, its job process and the
caller already share it. About a minute and a half in all, most of it real conversation time.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from harness.livekit_server import (
    Caller,
    CollectorClient,
    Stack,
    Webhook,
    create_room,
    delete_room,
    dispatch_metadata,
    now_ms,
    unique_room,
    until,
)
from livekit.protocol import models

from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

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
def lk(stack: Stack) -> Iterator[Stack]:
    """The stack with a registered worker (restarted if a test killed it); its logs on failure."""
    stack.ensure_worker()
    yield stack


@pytest.fixture
def collector(stack: Stack) -> CollectorClient:
    return CollectorClient(stack.collector_url)


# -- what the server reported ---------------------------------------------------------------------------------


def agent_joined(stack: Stack, room: str) -> Webhook | None:
    for hook in stack.tap.seen(room):
        if hook.name == "participant_joined" and hook.event.participant.kind == models.ParticipantInfo.Kind.AGENT:
            return hook
    return None


def server_presence_ms(stack: Stack, room: str, identity: str) -> tuple[int, int]:
    """(joined, left) of a participant as the server reported them: joined_at_ms, and the
    participant_left event's time (whole seconds)."""
    joined = stack.tap.find(room, "participant_joined", identity)
    left = stack.tap.find(room, "participant_left", identity)
    assert joined is not None and left is not None, [h.name for h in stack.tap.seen(room)]
    return int(joined.event.participant.joined_at_ms), left.created_ms


def agree_within_one_increment(record: MeterRecord, server_ms: int) -> None:
    """The agent's billed session and the one the server's join/leave times give, under the record's policy."""
    rule = get_policy(record.policy).rule(Resource.AGENT_SESSION)
    from_server = rule.quantity(server_ms)
    increment = Decimal(rule.increment) / MINUTE_MS
    assert abs(record.quantity - from_server) <= increment, (record.quantity, from_server, record.raw, server_ms)


def only(records: list[MeterRecord], resource: Resource) -> MeterRecord:
    found = [r for r in records if r.resource is resource]
    assert len(found) == 1, found
    return found[0]


def billed_once(records: list[MeterRecord], usage: dict[str, str]) -> None:
    """The room's usage in the collector's roll-ups is each stored record counted exactly once."""
    expected: dict[str, Decimal] = {}
    for r in records:
        expected[r.resource.value] = expected.get(r.resource.value, Decimal(0)) + r.quantity
    assert {k: Decimal(v) for k, v in usage.items() if Decimal(v)} == {k: v for k, v in expected.items() if v}


async def final_records(
    collector: CollectorClient, room: str, closed_by: str | None = None, timeout: float = 60.0
) -> list[MeterRecord]:
    """The records of the room's session once its agent_session record is final and closed by
    ``closed_by`` (None: the agent's own final record). A webhook may close a session before the
    agent's final record arrives; the agent's figure then replaces it."""

    async def final() -> list[MeterRecord] | None:
        session = await collector.session(room)
        if session is None or session["state"] != "closed":
            return None
        records = await collector.records(session["session_id"])
        s = only(records, Resource.AGENT_SESSION)
        return records if s.is_final and s.meta.get("closed_by") == closed_by else None

    return await until(final, f"the agent session in {room} closed by {closed_by or 'the agent'}", timeout)


# -- the tests ----------------------------------------------------------------------------------------------------


async def test_ctx_shutdown_after_a_conversation_is_metered_once_and_agrees_with_the_servers_webhooks(
    lk: Stack, collector: CollectorClient
) -> None:
    room = unique_room("shutdown")
    created = await create_room(lk.server, room, dispatch_metadata(SCRIPT, end="shutdown"))
    caller = Caller(lk.server.ws_url, room)
    await caller.join()
    try:
        replies = [reply for _, reply in SCRIPT]
        await until(lambda: caller.agent_said() == replies, "the agent's two replies, heard by the caller")
        joined = await until(lambda: agent_joined(lk, room), "the agent's participant_joined webhook")
        agent = joined.identity
        await until(lambda: lk.tap.find(room, "participant_left", agent), "the agent leaving the room")
    finally:
        await caller.leave()
    await until(lambda: lk.tap.find(room, "room_finished"), "room_finished")
    records = await final_records(collector, room)
    session = await collector.session(room)

    # The dispatch: the job the server created for this room, run by the metered agent.
    assert session is not None and agent == f"agent-{session['session_id']}" and session["room_sid"] == created.sid
    assert session["agent_name"] == "metered-e2e"

    # The agent's own final figure, from its connection to ctx.shutdown().
    s = only(records, Resource.AGENT_SESSION)
    assert s.status is Status.OK and "closed_by" not in s.meta, s.meta
    assert s.meta["end_cause"] == "shutdown" and s.meta["shutdown_reason"] == "conversation over"
    assert timedelta(milliseconds=s.raw) == s.end - s.start
    assert 0 < s.raw < MINUTE_MS and s.quantity == 1  # under a minute: one minute

    # What the server saw of the agent: it joined before the agent's connect() returned, and left
    # after the agent asked to shut down (the job still closes its session and the room first).
    joined_ms, left_ms = server_presence_ms(lk, room, agent)
    start_ms, end_ms = _ms(s.start), _ms(s.end)
    assert joined_ms <= start_ms and end_ms <= lk.tap.find(room, "participant_left", agent).arrived_ms
    agree_within_one_increment(s, left_ms - joined_ms)

    # The models, as the scripted providers bill them (figures by hand from the script).
    prompts = [
        len(INSTRUCTIONS) + len(SCRIPT[0][0]),
        len(INSTRUCTIONS) + len(SCRIPT[0][0]) + len(SCRIPT[0][1]) + len(SCRIPT[1][0]),
    ]
    llm_in = [r for r in records if r.resource is Resource.LLM_INPUT]
    assert sorted(r.raw for r in llm_in) == sorted(max(1, chars // 4) for chars in prompts)
    llm_out = [r for r in records if r.resource is Resource.LLM_OUTPUT]
    assert sorted(r.raw for r in llm_out) == sorted(len(reply.split(" ")) for _, reply in SCRIPT)
    assert sum(r.raw for r in records if r.resource is Resource.TTS) == sum(len(reply) for _, reply in SCRIPT)
    stt = only(records, Resource.STT)
    assert stt.meta["provider_ms"] >= 2 * 500  # the caller's audio reached the scripted STT before each line
    assert stt.quantity == math.ceil(stt.raw / 1000)

    # Each usage billed once, though the agent's participant_left webhook reached the collector too.
    assert all(hook.answer == 200 for hook in lk.tap.seen(room))
    billed_once(records, await collector.usage_of_room(room))


def _ms(when: Any) -> int:
    return int(when.timestamp() * 1000)


async def test_the_room_deleted_through_the_room_service_ends_the_session_with_the_room(
    lk: Stack, collector: CollectorClient
) -> None:
    room = unique_room("deleted")
    await create_room(lk.server, room, dispatch_metadata(SCRIPT[:1], end="stay"))
    caller = Caller(lk.server.ws_url, room)
    await caller.join()
    try:
        await until(lambda: caller.agent_said() == [SCRIPT[0][1]], "the agent's reply")
        deleted_ms = now_ms()
        await delete_room(lk.server, room)
        await until(lambda: lk.tap.find(room, "room_finished"), "room_finished")
    finally:
        await caller.leave()
    records = await final_records(collector, room)
    s = only(records, Resource.AGENT_SESSION)
    assert s.status is Status.OK
    # The server ends the job through its worker and disconnects the agent: both are the deletion.
    assert s.meta["end_cause"] == "room_ended" and s.meta["disconnect_reason"] == "ROOM_DELETED", s.meta
    left = lk.tap.find(room, "participant_left", f"agent-{s.session_id}")
    assert left is not None and left.disconnect_reason == "ROOM_DELETED"
    assert _ms(s.end) >= deleted_ms  # never billed short of the deletion
    joined_ms, left_ms = server_presence_ms(lk, room, left.identity)
    agree_within_one_increment(s, left_ms - joined_ms)
    billed_once(records, await collector.usage_of_room(room))


async def test_the_caller_leaving_closes_the_room_and_the_agents_session_ends_with_it(
    lk: Stack, collector: CollectorClient
) -> None:
    room = unique_room("left")
    await create_room(lk.server, room, dispatch_metadata(SCRIPT[:1], end="stay"))
    caller = Caller(lk.server.ws_url, room)
    await caller.join()
    try:
        await until(lambda: caller.agent_said() == [SCRIPT[0][1]], "the agent's reply")
    finally:
        await caller.leave()
    assert caller.left_ms is not None
    await until(lambda: lk.tap.find(room, "room_finished"), "room_finished")
    records = await final_records(collector, room)
    s = only(records, Resource.AGENT_SESSION)
    assert s.status is Status.OK
    # The server closes the room once its last non-agent participant has gone; the agent is billed
    # until then, not until the caller left.
    left = lk.tap.find(room, "participant_left", f"agent-{s.session_id}")
    assert left is not None and left.disconnect_reason == "ROOM_CLOSED"
    assert s.meta["end_cause"] == "room_ended" and s.meta["disconnect_reason"] == "ROOM_CLOSED", s.meta
    assert _ms(s.end) > caller.left_ms
    joined_ms, left_ms = server_presence_ms(lk, room, left.identity)
    agree_within_one_increment(s, left_ms - joined_ms)
    billed_once(records, await collector.usage_of_room(room))


async def _checkpoint_stored(collector: CollectorClient, room: str) -> MeterRecord:
    """The first periodic checkpoint of the room's session, once the collector has it."""

    async def stored() -> MeterRecord | None:
        session = await collector.session(room)
        if session is None:
            return None
        found = [r for r in await collector.records(session["session_id"]) if r.resource is Resource.AGENT_SESSION]
        return found[0] if found and found[0].status is Status.CHECKPOINT and found[0].raw > 0 else None

    return await until(stored, f"a checkpoint of the session in {room}")


async def test_a_job_process_killed_mid_session_without_webhooks_is_closed_at_its_last_checkpoint(
    lk: Stack, collector: CollectorClient, tmp_path: Path
) -> None:
    room = unique_room("stale")
    pid_file = tmp_path / "job.pid"
    lk.tap.hold(room)  # the server's webhooks for this room do not reach the collector
    await create_room(lk.server, room, dispatch_metadata(SCRIPT[:1], end="stay", pid_file=pid_file))
    caller = Caller(lk.server.ws_url, room)
    await caller.join()
    try:
        await until(lambda: caller.agent_said() == [SCRIPT[0][1]], "the agent's reply")
        await _checkpoint_stored(collector, room)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed_ms = now_ms()
    finally:
        await caller.leave()
    records = await final_records(collector, room, "stale-checkpoint", timeout=STALE_AFTER.total_seconds() + 60)
    s = only(records, Resource.AGENT_SESSION)
    assert s.status is Status.OK
    assert _ms(s.end) <= killed_ms

    # The webhooks arrive late after all: they change nothing, and nothing is billed twice.
    await until(lambda: lk.tap.find(room, "room_finished"), "room_finished")
    answers = await lk.release(room)
    assert answers and set(answers) == {200}
    assert await collector.records(s.session_id) == records
    billed_once(records, await collector.usage_of_room(room))


async def test_a_worker_sigkilled_mid_session_is_closed_by_the_servers_participant_left_webhook(
    lk: Stack, collector: CollectorClient
) -> None:
    room = unique_room("killed")
    await create_room(lk.server, room, dispatch_metadata(SCRIPT[:1], end="stay"))
    caller = Caller(lk.server.ws_url, room)
    await caller.join()
    try:
        await until(lambda: caller.agent_said() == [SCRIPT[0][1]], "the agent's reply")
        checkpoint = await _checkpoint_stored(collector, room)
        lk.worker.kill()
    finally:
        await caller.leave()  # the room closes DEPARTURE_TIMEOUT later; the dead agent leaves with it
    left = await until(lambda: lk.tap.find(room, "participant_left", f"agent-{checkpoint.session_id}"), "agent left")
    records = await final_records(collector, room, "webhook:participant_left")
    s = only(records, Resource.AGENT_SESSION)
    assert s.status is Status.OK
    assert s.start == checkpoint.start and _ms(s.end) == max(left.created_ms, _ms(checkpoint.end))
    joined_ms, left_ms = server_presence_ms(lk, room, left.identity)
    agree_within_one_increment(s, left_ms - joined_ms)
    billed_once(records, await collector.usage_of_room(room))
