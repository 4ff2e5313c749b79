"""The collector meters the whole project from LiveKit's webhooks: each participant connection, SIP
call, egress and ingress is one usage, rounded up on its own, stored once whatever the order or
number of deliveries, and the agent's own figure wins where it reported the same usage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
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
        half = len(hooks) // 2
        answers = [await deliver(http, url, hook) for hook in hooks[:half]]
        status, doc = await post(http, url, body_of(own))  # the agents' own records, mid-replay
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
        assert (mine["raw"], mine["quantity"], mine["meta"]) == (119_600, "2", {"end_cause": "shutdown"})
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
