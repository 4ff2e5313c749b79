"""LiveKit webhooks close sessions whose agent crashed (only checkpoints arrived), at the time
LiveKit reports, rounded by the checkpoint's policy. Redelivery, reordering and a late final
record from the agent itself all leave the totals where they belong."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import NOW, body_of, get, post, session_cp, usage_totals
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector
from livekit_metering.records import Status

OTHER_KEY, OTHER_SECRET = "APIotherkey", "other-secret-other-secret-other-secret"
KEYS = {TEST_KEY: (TEST_SECRET, "acme"), OTHER_KEY: (OTHER_SECRET, "globex")}


@pytest.fixture
async def collector(database: str) -> AsyncIterator[str]:
    async with run_collector(database, KEYS) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def event(kind: str, *, job: str = "J1", at: datetime, event_id: str | None = None, **over: Any) -> str:
    """A webhook body exactly as LiveKit's server serializes it (protojson, camelCase)."""
    room = models.Room(sid=over.get("room_sid", f"RM_{job}"), name=f"room-{job}")
    ev = WebhookEvent(
        event=kind, id=event_id or f"EV_{kind}_{job}_{int(at.timestamp())}", created_at=int(at.timestamp()), room=room
    )
    if kind.startswith("participant_"):
        agent = over.get("participant_kind", models.ParticipantInfo.Kind.AGENT)
        ev.participant.CopyFrom(
            models.ParticipantInfo(
                sid="PA_1",
                identity=over.get("identity", f"agent-{job}"),
                kind=agent,
                # These agents bill agent session minutes: deployed to LiveKit Cloud.
                kind_details=[models.ParticipantInfo.CLOUD_AGENT] if agent == models.ParticipantInfo.Kind.AGENT else [],
            )
        )
    if kind.startswith("agent_job_"):
        ended = over.get("ended_at", at)
        ev.job.CopyFrom(
            agent_pb.Job(
                id=job,
                room=room,
                state=agent_pb.JobState(status=agent_pb.JobStatus.JS_FAILED, ended_at=int(ended.timestamp()) * 10**9),
            )
        )
    return MessageToJson(ev)


def signature(body: str, key: str = TEST_KEY, secret: str = TEST_SECRET, ttl: timedelta = timedelta(minutes=5)) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(key, secret).with_ttl(ttl).with_sha256(digest).to_jwt()


async def deliver(http: aiohttp.ClientSession, url: str, body: str, auth: str | None = None) -> tuple[int, Any]:
    headers = {
        "Authorization": auth if auth is not None else signature(body),
        "Content-Type": "application/webhook+json",
    }
    async with http.post(f"{url}/v1/livekit/webhook", data=body.encode(), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def crashed_session(http: aiohttp.ClientSession, url: str, job: str = "J1", ms: int = 60_000, **kw: Any) -> None:
    status, doc = await post(http, url, body_of([session_cp(job, ms, room_sid=f"RM_{job}", **kw)]))
    assert status == 200 and doc["results"][0]["status"] == "accepted"


async def agent_record(http: aiohttp.ClientSession, url: str, job: str = "J1") -> dict[str, Any]:
    _, doc = await get(http, url, f"/v1/sessions/{job}/records")
    [record] = [r for r in doc["records"] if r["resource"] == "agent_session"]
    return record


async def test_participant_left_closes_a_crashed_session_at_the_reported_time(
    collector: str, http: aiohttp.ClientSession
) -> None:
    await crashed_session(http, collector)
    body = event("participant_left", at=NOW + timedelta(seconds=150))
    status, doc = await deliver(http, collector, body)
    assert (status, doc["closed"], doc["duplicate"]) == (200, ["J1"], False)
    record = await agent_record(http, collector)
    assert (record["status"], record["raw"], record["quantity"]) == ("ok", 150_000, "3")
    assert record["meta"]["closed_by"] == "webhook:participant_left"
    _, doc = await get(http, collector, "/v1/sessions")
    assert (doc["sessions"][0]["state"], doc["sessions"][0]["end_cause"]) == ("closed", "webhook:participant_left")

    # Redelivery: remembered, harmless.
    status, doc = await deliver(http, collector, body)
    assert (status, doc["closed"], doc["duplicate"]) == (200, [], True)
    assert await usage_totals(http, collector) == {"agent_session": Decimal(3)}


@pytest.mark.parametrize("order", ["room_first", "participant_first"])
async def test_out_of_order_webhooks_settle_on_the_earliest_end(
    collector: str, http: aiohttp.ClientSession, order: str
) -> None:
    await crashed_session(http, collector)
    left = event("participant_left", at=NOW + timedelta(seconds=150))
    finished = event("room_finished", at=NOW + timedelta(seconds=250))
    for body in (finished, left) if order == "room_first" else (left, finished):
        assert (await deliver(http, collector, body))[0] == 200
    assert (await agent_record(http, collector))["raw"] == 150_000


async def test_the_agents_own_final_record_supersedes_a_webhook_close(
    collector: str, http: aiohttp.ClientSession
) -> None:
    await crashed_session(http, collector)
    await deliver(http, collector, event("room_finished", at=NOW + timedelta(seconds=400)))
    final = session_cp("J1", 100_000, status=Status.OK, room_sid="RM_J1", meta={"end_cause": "shutdown"})
    _, doc = await post(http, collector, body_of([final]))
    assert doc["results"][0]["status"] == "accepted"
    # A later webhook (or a redelivery) does not undo the agent's figure.
    await deliver(http, collector, event("agent_job_ended", at=NOW + timedelta(seconds=120)))
    record = await agent_record(http, collector)
    assert (record["raw"], record["meta"]) == (100_000, {"end_cause": "shutdown"})
    assert await usage_totals(http, collector) == {"agent_session": Decimal(2)}


async def test_agent_job_ended_uses_the_jobs_end_and_the_checkpoints_policy(
    collector: str, http: aiohttp.ClientSession
) -> None:
    await crashed_session(http, collector, ms=4_000, policy="per-second-10s-minimum")
    body = event("agent_job_ended", at=NOW + timedelta(seconds=60), ended_at=NOW + timedelta(seconds=7))
    status, doc = await deliver(http, collector, body)
    assert (status, doc["closed"]) == (200, ["J1"])
    record = await agent_record(http, collector)
    # 7 s of session, billed at the per-second policy's 10 s minimum.
    assert (record["raw"], record["unit"], record["quantity"]) == (7_000, "second", "10")


async def test_a_webhook_never_ends_a_session_before_its_last_checkpoint(
    collector: str, http: aiohttp.ClientSession
) -> None:
    await crashed_session(http, collector, ms=200_000)
    await deliver(http, collector, event("room_finished", at=NOW + timedelta(seconds=30)))
    assert (await agent_record(http, collector))["raw"] == 200_000


async def test_non_agent_participants_and_other_projects_are_left_alone(
    collector: str, http: aiohttp.ClientSession
) -> None:
    await crashed_session(http, collector)
    human = event("participant_left", at=NOW + timedelta(seconds=90), identity="caller", participant_kind=0)
    assert (await deliver(http, collector, human))[1]["closed"] == []
    other = event("room_finished", at=NOW + timedelta(seconds=90))
    status, doc = await deliver(http, collector, other, auth=signature(other, OTHER_KEY, OTHER_SECRET))
    assert (status, doc["closed"]) == (200, [])
    assert (await agent_record(http, collector))["status"] == "checkpoint"


async def test_bad_webhook_signatures_get_401_and_change_nothing(collector: str, http: aiohttp.ClientSession) -> None:
    await crashed_session(http, collector)
    body = event("room_finished", at=NOW + timedelta(seconds=90))
    cases = {
        "missing": "",
        "tampered body": signature(body.replace("RM_J1", "RM_J2")),
        "re-serialized body": signature(json.dumps(json.loads(body))),
        "wrong secret": signature(body, secret="wrong-secret-wrong-secret-wrong-secret"),
        "unknown key": signature(body, key="APInobody"),
        "expired": signature(body, ttl=timedelta(minutes=-5)),
        "no sha256": api.AccessToken(TEST_KEY, TEST_SECRET).to_jwt(),
    }
    for case, auth in cases.items():
        status, doc = await deliver(http, collector, body, auth=auth)
        assert status == 401 and doc["error"], case
    status, doc = await deliver(http, collector, "{not json", auth=signature("{not json"))
    assert status == 400 and "WebhookEvent" in doc["error"]  # signed, but not an event
    assert (await agent_record(http, collector))["status"] == "checkpoint"


async def test_stale_sessions_are_closed_at_their_last_checkpoint(database: str) -> None:
    from livekit_metering.collector.auth import KeyRing
    from livekit_metering.collector.store.base import Stored, open_store
    from livekit_metering.collector.webhooks import Webhooks

    async with open_store(database) as store:
        old = session_cp("OLD", 90_000)  # ended about an hour ago
        fresh = session_cp("NEW", 90_000, start=datetime.now(NOW.tzinfo) - timedelta(minutes=3))
        await store.ingest("acme", [Stored(old), Stored(fresh)])
        hooks = Webhooks(store, KeyRing(KEYS))
        now = datetime.now(NOW.tzinfo)
        assert await hooks.close_stale(now, timedelta(minutes=15)) == ["OLD"]
        assert await hooks.close_stale(now, timedelta(minutes=15)) == []  # idempotent
        [closed] = await store.session_records("acme", ["OLD"])
        assert (closed.status, closed.raw, closed.meta["closed_by"]) == (Status.OK, 90_000, "stale-checkpoint")
        [still_open] = await store.session_records("acme", ["NEW"])
        assert still_open.status is Status.CHECKPOINT
        # The agent's own final record, arriving late, still wins.
        final = session_cp("OLD", 120_000, status=Status.OK)
        assert [o.value for o in await store.ingest("acme", [Stored(final)])] == ["accepted"]
        assert (await store.session_records("acme", ["OLD"]))[0] == final


async def test_the_collector_sweeps_stale_sessions_by_itself(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # Nothing here calls close_stale(): only the collector's own sweeper can close this session.
    every = timedelta(milliseconds=200)
    async with run_collector(
        tmp_path / "sweep.db", KEYS, close_stale_after=timedelta(minutes=15), sweep_every=every
    ) as url:
        status, _ = await post(http, url, body_of([session_cp("OLD", 90_000)]))  # ended about an hour ago
        assert status == 200
        for _ in range(100):  # 10 s at most; the sweeper runs every 0.2 s
            record = await agent_record(http, url, "OLD")
            if record["status"] != "checkpoint":
                break
            await asyncio.sleep(0.1)
        assert (record["status"], record["meta"]["closed_by"]) == ("ok", "stale-checkpoint")
