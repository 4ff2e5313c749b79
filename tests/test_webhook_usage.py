"""The collector meters the whole project from LiveKit's webhooks: each participant connection, SIP
call, egress and ingress is one usage, rounded up on its own, stored once whatever the order or
number of deliveries, and the agent's own figure wins where it reported the same usage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, post
from webhook_month import EXPECTED, MONTH, SETTINGS, Hook, at, build_month

from livekit_metering.collector.settings import parse_settings
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.records import Resource, participant_usage_id, sip_call_id

KEYS = {TEST_KEY: (TEST_SECRET, "acme")}
REPLAYED_AT = at(31, 23, 0)  # the collector's clock while the month is replayed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def deliver(http: aiohttp.ClientSession, url: str, hook: Hook) -> dict[str, Any]:
    from test_webhooks import signature

    headers = {"Authorization": signature(hook.body), "Content-Type": "application/webhook+json"}
    async with http.post(f"{url}/v1/livekit/webhook", data=hook.body.encode(), headers=headers) as resp:
        doc = await resp.json()
        assert resp.status == 200, (hook.label, doc)
        return dict(doc)


async def api(http: aiohttp.ClientSession, url: str, path: str, **query: str) -> Any:
    async with http.get(f"{url}{path}", params=query, headers={"Authorization": sign()}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def month_totals(http: aiohttp.ClientSession, url: str) -> dict[str, Decimal]:
    doc = await api(http, url, "/v1/usage", group_by="resource", since=f"{MONTH}-01", until="2026-11-01")
    out: dict[str, Decimal] = {}
    for row in doc["rows"]:
        out[row["resource"]] = out.get(row["resource"], Decimal(0)) + Decimal(row["quantity"])
    return {k: v for k, v in out.items() if v}


async def records_of(http: aiohttp.ClientSession, url: str, session: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (await api(http, url, f"/v1/sessions/{session}/records"))["records"]}


@pytest.mark.parametrize("order", ["as_sent", "shuffled_and_redelivered"])
async def test_a_month_of_webhooks_meters_every_usage_once_rounded_on_its_own(
    database: str, http: aiohttp.ClientSession, order: str
) -> None:
    hooks, own = build_month()
    if order == "shuffled_and_redelivered":
        rng = random.Random(13)
        hooks = hooks + rng.sample(hooks, 12)
        rng.shuffle(hooks)
    settings = parse_settings(SETTINGS)
    async with run_collector(database, KEYS, settings=settings, clock=Clock(REPLAYED_AT)) as url:
        # The agents' own records arrive first (as sent), or in the middle of the shuffled webhooks.
        half = 0 if order == "as_sent" else len(hooks) // 2
        answers = [await deliver(http, url, hook) for hook in hooks[:half]]
        status, doc = await post(http, url, body_of(own))
        assert status == 200 and {r["status"] for r in doc["results"]} == {"accepted"}
        answers += [await deliver(http, url, hook) for hook in hooks[half:]]
        assert sum(a["duplicate"] for a in answers) == (12 if order != "as_sent" else 0)

        # Hand-calculated totals (see webhook_month); erin's join, still open, shows its minute so far.
        assert await month_totals(http, url) == EXPECTED

        # Each connection rounded up on its own: 10 s -> 1, 70 s -> 2, alice's second connection 1 more.
        room_a = await records_of(http, url, "room:RM_A")
        quantity = {rid: r["quantity"] for rid, r in room_a.items()}
        assert quantity == {
            participant_usage_id("RM_A", "PA_alice1", Resource.CONNECTION): "1",
            participant_usage_id("RM_A", "PA_bob", Resource.CONNECTION): "2",
            participant_usage_id("RM_A", "PA_alice2", Resource.CONNECTION): "1",
        }
        # The self-hosted agent: the webhook said 121 s (3 minutes), its own figure (119.6 s) wins.
        [mine] = (await records_of(http, url, "AJ_self")).values()
        assert (mine["raw"], mine["quantity"], mine["meta"]["end_cause"]) == (119_600, "2", "shutdown")
        # Stored once, in the agent's session: the room's webhook session no longer counts it.
        sessions = {s["session_id"]: s for s in (await api(http, url, "/v1/sessions", limit="100"))["sessions"]}
        assert (sessions["room:RM_A"]["records"], sessions["AJ_self"]["records"]) == (3, 1)
        assert (sessions["room:RM_A"]["state"], sessions["AJ_self"]["state"]) == ("usage", "closed")
        # The Cloud-deployed agent bills agent session minutes only.
        assert {r["resource"] for r in (await records_of(http, url, "AJ_cloud")).values()} == {"agent_session"}

        room_b = await records_of(http, url, "room:RM_B")
        calls = {r["resource"]: r["quantity"] for rid, r in room_b.items() if r["resource"].startswith("sip")}
        assert calls == {"sip_inbound": "2", "sip_inbound_toll_free": "1", "sip_trunk": "4"}
        assert room_b[sip_call_id("RM_B", "PA_sip1")]["resource"] == "sip_inbound"
        carol = room_b[participant_usage_id("RM_B", "PA_carol", Resource.CONNECTION)]
        assert (carol["status"], carol["raw"], carol["quantity"]) == ("ok", 1_230_000, "21")
        assert (carol["meta"]["closed_by"], carol["meta"]["flag"]) == ("webhook:room_finished", "no-leave")

        room_c = await records_of(http, url, "room:RM_C")
        assert sorted((r["resource"], r["quantity"], r["status"]) for r in room_c.values()) == [
            ("stream_import", "4", "ok"),
            ("track_egress", "2", "ok"),
            ("transcode", "4", "ok"),
            ("transcode_audio", "1", "ok"),
        ]
        room_d = await records_of(http, url, "room:RM_D")
        dave = room_d[participant_usage_id("RM_D", "PA_dave", Resource.CONNECTION)]
        assert (dave["status"], dave["raw"], dave["quantity"]) == ("ok", 30_000, "1")
        erin = room_d[participant_usage_id("RM_D", "PA_erin", Resource.CONNECTION)]
        assert erin["status"] == "checkpoint"

    # A day after erin was last seen, a collector on the same store closes her join, flagged.
    sweeping = {"close_stale_after": timedelta(minutes=15), "close_joins_after": timedelta(hours=24)}
    async with run_collector(
        database, KEYS, settings=settings, clock=Clock(REPLAYED_AT), sweep_every=timedelta(milliseconds=50), **sweeping
    ) as url:
        erin_id = participant_usage_id("RM_D", "PA_erin", Resource.CONNECTION)
        for _ in range(200):
            erin = (await records_of(http, url, "room:RM_D"))[erin_id]
            if erin["status"] == "ok":
                break
            await asyncio.sleep(0.05)
        assert (erin["status"], erin["raw"], erin["quantity"]) == ("ok", 750, "1")
        assert (erin["meta"]["closed_by"], erin["meta"]["flag"]) == ("stale-join", "no-leave")
        assert await month_totals(http, url) == EXPECTED


# -- the rules, one by one ----------------------------------------------------------------------------


def event_of(kind: str, **fields: Any) -> Any:
    from livekit.protocol.webhook import WebhookEvent

    return WebhookEvent(event=kind, id="EV_x", created_at=int(at(5, 10, 1).timestamp()), **fields)


def left(kind: int, *, details: Iterable[int] = (), attributes: dict[str, str] | None = None) -> Any:
    from livekit.protocol import models

    participant = models.ParticipantInfo(
        sid="PA_1", identity="someone", kind=kind, kind_details=list(details), attributes=attributes or {},  # type: ignore[arg-type]
        joined_at_ms=int(at(5, 10, 0).timestamp() * 1000),
    )  # fmt: skip
    return event_of("participant_left", room=models.Room(sid="RM_1", name="r"), participant=participant)


def test_which_participants_bill_connection_minutes() -> None:
    from dataclasses import replace

    from livekit.protocol import models

    from livekit_metering.collector.webhook_usage import UsageRules, usage_of
    from livekit_metering.rates import get_policy

    kind = models.ParticipantInfo.Kind
    rules = UsageRules(get_policy())
    billed = {k: [s.record.resource.value for s in usage_of(left(k), rules)] for k in kind.values()}
    assert billed == {
        kind.STANDARD: ["connection"],
        kind.AGENT: ["connection"],  # a self-hosted agent
        kind.SIP: ["sip_trunk"],  # telephony, never connection minutes
        kind.INGRESS: [],
        kind.EGRESS: [],
        kind.CONNECTOR: [],
        kind.BRIDGE: [],
    }
    cloud = left(kind.AGENT, details=[models.ParticipantInfo.CLOUD_AGENT])
    assert usage_of(cloud, rules) == []
    counted = UsageRules(replace(get_policy(), cloud_agent_connection=True))
    assert [s.record.resource for s in usage_of(cloud, counted)] == [Resource.CONNECTION]
    [one] = usage_of(left(kind.STANDARD), rules)
    assert (one.by_webhook, one.record.raw, one.record.quantity, one.record.session_id) == (
        True,
        60_000,
        1,
        "room:RM_1",
    )


def test_egress_bills_by_what_it_records() -> None:
    from livekit.protocol import egress as eg

    from livekit_metering.collector.webhook_usage import egress_resource

    cases = {
        Resource.TRANSCODE: [
            eg.EgressInfo(room_composite=eg.RoomCompositeEgressRequest()),
            eg.EgressInfo(web=eg.WebEgressRequest(url="https://x")),
            eg.EgressInfo(participant=eg.ParticipantEgressRequest()),
            eg.EgressInfo(track_composite=eg.TrackCompositeEgressRequest(audio_track_id="TR_a", video_track_id="TR_v")),
            eg.EgressInfo(egress=eg.StartEgressRequest(media=eg.MediaSource(video_track_id="TR_v"))),
        ],
        Resource.TRANSCODE_AUDIO: [
            eg.EgressInfo(room_composite=eg.RoomCompositeEgressRequest(audio_only=True)),
            eg.EgressInfo(web=eg.WebEgressRequest(audio_only=True)),
            eg.EgressInfo(track_composite=eg.TrackCompositeEgressRequest(audio_track_id="TR_a")),
            eg.EgressInfo(egress=eg.StartEgressRequest(template=eg.TemplateSource(audio_only=True))),
            eg.EgressInfo(egress=eg.StartEgressRequest(media=eg.MediaSource())),
        ],
        Resource.TRACK_EGRESS: [eg.EgressInfo(track=eg.TrackEgressRequest())],
    }
    for resource, infos in cases.items():
        for info in infos:
            assert egress_resource(info) is resource, info


def test_each_session_of_a_reusable_ingress_is_its_own_usage() -> None:
    from livekit.protocol import ingress as ig

    from livekit_metering.collector.webhook_usage import UsageRules, usage_of
    from livekit_metering.rates import get_policy

    def ended(resource_id: str, start_s: int) -> Any:
        state = ig.IngressState(
            room_id="RM_1", resource_id=resource_id, started_at=start_s * 10**9, ended_at=(start_s + 61) * 10**9
        )
        return event_of("ingress_ended", ingress_info=ig.IngressInfo(ingress_id="IN_1", state=state))

    start = int(at(5, 9, 0).timestamp())
    rules = UsageRules(get_policy())
    [a], [b] = usage_of(ended("R1", start), rules), usage_of(ended("R2", start + 3600), rules)
    assert a.record.id != b.record.id
    assert (a.record.resource, a.record.quantity, a.record.meta["transcoded"]) == (Resource.STREAM_IMPORT, 2, True)


# -- what a webhook closes, and what closes it --------------------------------------------------------


async def test_a_join_delivered_after_its_room_finished_is_closed_at_the_rooms_end(
    database: str, http: aiohttp.ClientSession
) -> None:
    from webhook_month import Month

    m = Month()
    m.participant("Z", "PA_late", "late", at(5, 9, 0), None)
    m.room_finished("Z", at(5, 9, 30, 1))
    join, finished = m.hooks
    async with run_collector(database, KEYS, clock=Clock(REPLAYED_AT)) as url:
        assert (await deliver(http, url, finished))["usage"] == []
        assert len((await deliver(http, url, join))["usage"]) == 1
        [record] = (await records_of(http, url, "room:RM_Z")).values()
        assert (record["status"], record["raw"], record["quantity"]) == ("ok", 1_801_000, "31")
        assert record["meta"]["flag"] == "no-leave"


async def test_an_agents_clipped_call_closed_as_stale_is_still_closed_by_the_callers_leave(
    database: str, http: aiohttp.ClientSession
) -> None:
    """The agent left at 10:02 while the caller stayed on (its figure stays a checkpoint); the stale sweep
    closes it at the agent's last figure, flagged; the caller's leave at 10:40 then gives LiveKit's figure."""
    from livekit.protocol import models
    from webhook_month import Month

    from livekit_metering.rates import get_policy

    call_id = sip_call_id("RM_S", "PA_caller")
    clipped = get_policy().record(
        id=call_id, session_id="AJ_7", resource=Resource.SIP_TRUNK, raw=120_000, start=at(5, 10, 0),
        end=at(5, 10, 2), status="checkpoint", room_sid="RM_S", meta={"clipped": "end"},
    )  # fmt: skip
    m = Month()
    m.participant("S", "PA_caller", "caller", at(5, 10, 0), at(5, 10, 40), kind=models.ParticipantInfo.Kind.SIP,
                  join_lost=True)  # fmt: skip
    [leave] = m.hooks
    clock = Clock(at(5, 10, 30))
    sweep = {"close_stale_after": timedelta(minutes=15), "sweep_every": timedelta(milliseconds=50)}
    async with run_collector(database, KEYS, clock=clock, **sweep) as url:
        assert (await post(http, url, body_of([clipped])))[0] == 200
        for _ in range(200):
            record = (await records_of(http, url, "AJ_7"))[call_id]
            if record["status"] == "ok":
                break
            await asyncio.sleep(0.05)
        assert (record["raw"], record["meta"]["closed_by"], record["meta"]["flag"]) == (
            120_000,
            "stale-checkpoint",
            "no-end",
        )
        clock.now = at(5, 10, 41)
        await deliver(http, url, leave)
        record = (await records_of(http, url, "AJ_7"))[call_id]
        assert (record["raw"], record["quantity"], record["meta"]["closed_by"]) == (
            2_400_000,
            "40",
            "webhook:participant_left",
        )
        assert "flag" not in record["meta"]


async def test_a_self_hosted_agents_session_time_record_decides_its_session(
    database: str, http: aiohttp.ClientSession
) -> None:
    from livekit.protocol import models
    from webhook_month import Month

    from livekit_metering.rates import get_policy

    rid = participant_usage_id("RM_H", "PA_agent", Resource.CONNECTION)
    checkpoint = get_policy().record(
        id=rid, session_id="AJ_h", resource=Resource.CONNECTION, raw=45_000, start=at(5, 10, 0), end=at(5, 10, 0, 45),
        status="checkpoint", room_sid="RM_H", room="room-H", meta={"session_time": True},
    )  # fmt: skip
    m = Month()
    m.participant("H", "PA_agent", "agent-AJ_h", at(5, 10, 0), at(5, 10, 1, 30), kind=models.ParticipantInfo.Kind.AGENT,
                  join_lost=True)  # fmt: skip
    async with run_collector(database, KEYS, clock=Clock(REPLAYED_AT)) as url:
        await post(http, url, body_of([checkpoint]))
        [row] = (await api(http, url, "/v1/sessions"))["sessions"]
        assert (row["session_id"], row["state"], row["billed_minutes"]) == ("AJ_h", "open", "1")
        await deliver(http, url, m.hooks[0])  # the crashed agent's participant leaves: LiveKit closes it
        [row] = (await api(http, url, "/v1/sessions"))["sessions"]
        assert (row["state"], row["billed_minutes"]) == ("closed", "2")


async def test_the_agents_figure_arriving_after_the_webhooks_moves_the_usage_to_its_session(
    database: str, http: aiohttp.ClientSession
) -> None:
    from livekit.protocol import models
    from webhook_month import Month

    from livekit_metering.rates import get_policy

    m = Month()
    m.participant("M", "PA_c", "caller", at(5, 10, 0), at(5, 10, 1, 1), kind=models.ParticipantInfo.Kind.SIP)
    seen = get_policy().record(
        id=sip_call_id("RM_M", "PA_c"), session_id="AJ_m", resource=Resource.SIP_TRUNK, raw=61_000,
        start=at(5, 10, 0), end=at(5, 10, 1, 1), room_sid="RM_M", customer="acme-bikes",
    )  # fmt: skip
    async with run_collector(database, KEYS, clock=Clock(REPLAYED_AT)) as url:
        for hook in m.hooks:
            await deliver(http, url, hook)
        assert (await post(http, url, body_of([seen])))[1]["results"][0]["status"] == "accepted"
        sessions = {s["session_id"]: s["records"] for s in (await api(http, url, "/v1/sessions"))["sessions"]}
        assert sessions == {"AJ_m": 1, "room:RM_M": 0}
        [record] = (await records_of(http, url, "AJ_m")).values()
        assert (record["customer"], record["quantity"]) == ("acme-bikes", "2")


def test_times_in_a_webhook_are_bounded_by_when_it_was_sent() -> None:
    from livekit.protocol import egress as eg

    from livekit_metering.collector.webhook_usage import UsageRules, usage_of
    from livekit_metering.rates import get_policy

    sent = at(5, 10, 1)
    info = eg.EgressInfo(
        egress_id="EG_x", room_id="RM_1", started_at=int(at(5, 10, 0).timestamp()) * 10**9, ended_at=2**63 - 1,
        track=eg.TrackEgressRequest(),
    )  # fmt: skip
    [usage] = usage_of(event_of("egress_ended", egress_info=info), UsageRules(get_policy()))
    assert usage.record.end == sent + timedelta(minutes=5)  # not the year 2262
    assert (
        usage_of(
            event_of("egress_ended", egress_info=eg.EgressInfo(egress_id="EG_y", started_at=-5)),
            UsageRules(get_policy()),
        )
        == []
    )


@pytest.mark.parametrize("server", ["cloud", "self-hosted"])
async def test_a_self_hosted_servers_usage_is_metered_but_not_billed(
    database: str, http: aiohttp.ClientSession, server: str
) -> None:
    hooks, _ = build_month()
    settings = parse_settings({**SETTINGS, "projects": {"acme": {"livekit_server": server}}})
    async with run_collector(database, KEYS, settings=settings, clock=Clock(REPLAYED_AT)) as url:
        for hook in hooks:
            await deliver(http, url, hook)
        # Metered the same either way: every usage, each rounded on its own.
        totals = await month_totals(http, url)
        assert totals["connection"] == EXPECTED["connection"] + 1  # the self-hosted agent at the webhook's 3 minutes
        assert {k: v for k, v in totals.items() if k != "connection"} == {
            k: v for k, v in EXPECTED.items() if k not in ("connection", "agent_session")
        }
        providers = {
            r["provider"]
            for room in ("room:RM_A", "room:RM_B", "room:RM_C")
            for r in (await records_of(http, url, room)).values()
        }
        invoice = await api(http, url, "/v1/invoice", month=MONTH)
    billed = {line["resource"] for line in invoice["lines"] if "resource" in line}
    if server == "cloud":
        assert providers == {""}
        assert {"connection", "sip_inbound", "transcode", "stream_import"} <= billed
        assert not invoice["not_billed_by_livekit"]
    else:
        # Your own server's usage is shown, not invoiced: LiveKit never sees it.
        assert providers == {"self-hosted"}
        assert not billed & {"connection", "sip_inbound", "sip_trunk", "transcode", "stream_import", "track_egress"}
        assert invoice["not_billed_by_livekit"]
