"""The collector over HTTP, on SQLite and PostgreSQL: signed ingest with per-record outcomes,
limits and bad input answered with clear 4xx (never a 500, nothing stored), project isolation,
the query API, OpenAPI, health, metrics and the dashboard."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from collector_helpers import NOW, body_of, get, post, rec, session_cp, usage_totals

from livekit_metering.collector.config import Limits
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.records import Resource, Status

OTHER_KEY, OTHER_SECRET = "APIotherkey", "other-secret-other-secret-other-secret"
KEYS = {TEST_KEY: (TEST_SECRET, "acme"), OTHER_KEY: (OTHER_SECRET, "globex")}
LIMITS = Limits(max_body_bytes=256 * 1024, max_inflated_bytes=1024 * 1024, max_batch=200)


@pytest.fixture
async def collector(database: str) -> AsyncIterator[str]:
    async with run_collector(database, KEYS, limits=LIMITS) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def stored_count(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    status, doc = await get(http, url, "/v1/sessions?limit=1000", **kw)
    assert status == 200
    return sum(s["records"] for s in doc["sessions"])


# -- ingest ---------------------------------------------------------------------------------------


async def test_each_record_gets_its_own_outcome_in_batch_order(collector: str, http: aiohttp.ClientSession) -> None:
    good, other = rec("S", "llm-1"), rec("S", "llm-2", raw=3)
    status, doc = await post(http, collector, body_of([good, other]))
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["accepted", "accepted"]

    bad_rounding = {**rec("S", "llm-3").to_json(), "quantity": "99"}
    unknown_policy = {**rec("S", "llm-4").to_json(), "policy": "no-such-policy"}
    too_old = rec("S", "llm-5", start=NOW - timedelta(days=40))
    future = rec("S", "llm-6", start=NOW + timedelta(hours=2))
    conflicting = rec("S", "llm-1", raw=101)
    wrong_type = {**rec("S", "llm-7").to_json(), "raw": "lots"}
    batch = [good, bad_rounding, unknown_policy, too_old, future, conflicting, wrong_type, rec("S", "llm-8")]
    status, doc = await post(http, collector, body_of(batch))
    assert status == 200
    results = doc["results"]
    assert [r["status"] for r in results] == [
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "conflict",
        "rejected",
        "accepted",
    ]
    assert [r["id"] for r in results] == [
        b["id"] if isinstance(b, dict) else b.id
        for b in batch  # ids echo the batch, in order
    ]
    reasons = [r["reason"] for r in results]
    assert "does not match raw" in reasons[1]
    assert "unknown rate policy 'no-such-policy'" in reasons[2]
    assert "35 days in the past" in reasons[3]
    assert "in the future" in reasons[4]
    assert "raw" in reasons[6]
    assert await stored_count(http, collector) == 3


async def test_checkpoint_replaced_by_a_later_figure_answers_accepted(
    collector: str, http: aiohttp.ClientSession
) -> None:
    for ms, expected in ((30_000, "accepted"), (90_000, "accepted"), (30_000, "duplicate")):
        status, doc = await post(http, collector, body_of([session_cp("S", ms)]))
        assert (status, doc["results"][0]["status"]) == (200, expected)
    final = session_cp("S", 95_000, status=Status.OK)
    _, doc = await post(http, collector, body_of([final]))
    assert doc["results"][0]["status"] == "accepted"
    assert await usage_totals(http, collector) == {"agent_session": Decimal(2)}
    _, doc = await get(http, collector, "/v1/sessions")
    [session] = doc["sessions"]
    assert (session["state"], session["billed_minutes"], session["records"]) == ("closed", "2", 1)


async def test_gzip_bodies_are_signed_as_sent(collector: str, http: aiohttp.ClientSession) -> None:
    body = body_of([rec("G", f"llm-{i}") for i in range(50)], gz=True)
    status, doc = await post(http, collector, body, gz=True)
    assert status == 200 and {r["status"] for r in doc["results"]} == {"accepted"}
    # Signing the uncompressed bytes instead is a bad signature.
    raw = gzip.decompress(body)
    status, doc = await post(http, collector, body, gz=True, auth=sign(raw))
    assert status == 401 and "sha256" in doc["error"]


async def test_bearer_prefix_is_accepted(collector: str, http: aiohttp.ClientSession) -> None:
    body = body_of([rec()])
    status, _ = await post(http, collector, body, auth="Bearer " + sign(body))
    assert status == 200


# -- bad input: only 4xx, clear messages, nothing stored -----------------------------------------


def _signature_cases(body: bytes) -> dict[str, str]:
    return {
        "missing Authorization": "",
        "not a JWT": "garbage.token.here",
        "tampered body": sign(body + b" "),
        "expired": sign(body, ttl=timedelta(minutes=-5)),
        "unknown key": sign(body, key="APIunknown", secret=TEST_SECRET),
        "wrong secret": sign(body, secret="not-the-right-secret-at-all-not-at-all"),
        "no sha256 claim": sign(None),
    }


async def test_bad_signatures_get_401_and_store_nothing(collector: str, http: aiohttp.ClientSession) -> None:
    body = body_of([rec("X")])
    for case, auth in _signature_cases(body).items():
        status, doc = await post(http, collector, body, auth=auth)
        assert status == 401, case
        assert doc["error"], case
    assert "expired" in (await post(http, collector, body, auth=sign(body, ttl=timedelta(minutes=-5))))[1]["error"]
    assert await stored_count(http, collector) == 0


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, '{"records"'),
        (b'{"records": {"id": 1}}', 400, "must be a JSON array"),
        (b'{"other": []}', 400, '{"records"'),
        (b"\xff\xfe\x00", 400, "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_400(
    collector: str, http: aiohttp.ClientSession, body: bytes, status: int, words: str
) -> None:
    got, doc = await post(http, collector, body)
    assert (got, words in doc["error"]) == (status, True), doc


async def test_limits_give_413_with_the_limit_named(collector: str, http: aiohttp.ClientSession) -> None:
    huge = b'{"records": [' + b" " * (LIMITS.max_body_bytes + 10) + b"]}"
    status, doc = await post(http, collector, huge)
    assert status == 413 and str(LIMITS.max_body_bytes) in doc["error"]
    too_many = body_of([rec("B", f"llm-{i}") for i in range(LIMITS.max_batch + 1)])
    status, doc = await post(http, collector, too_many)
    assert status == 413 and f"limit is {LIMITS.max_batch}" in doc["error"]
    bomb = gzip.compress(b'{"records": [' + b" " * (4 * 1024 * 1024) + b"]}")
    status, doc = await post(http, collector, bomb, gz=True)
    assert status == 413 and "inflates" in doc["error"]
    status, doc = await post(http, collector, b"not gzip at all", gz=True)
    assert status == 400 and "gzip" in doc["error"]
    assert await stored_count(http, collector) == 0


# -- projects -------------------------------------------------------------------------------------


async def test_a_key_neither_writes_nor_reads_another_projects_data(
    collector: str, http: aiohttp.ClientSession
) -> None:
    same_id = rec("S", "llm-1", raw=10)
    assert (await post(http, collector, body_of([same_id])))[0] == 200
    # The same id in another project is a different usage: accepted there, not a duplicate.
    _, doc = await post(http, collector, body_of([rec("S", "llm-1", raw=20)]), key=OTHER_KEY, secret=OTHER_SECRET)
    assert doc["results"][0]["status"] == "accepted"
    assert await usage_totals(http, collector) == {"llm_input": Decimal(10)}
    assert await usage_totals(http, collector, key=OTHER_KEY, secret=OTHER_SECRET) == {"llm_input": Decimal(20)}
    _, doc = await get(http, collector, "/v1/sessions/S/records", key=OTHER_KEY, secret=OTHER_SECRET)
    assert [r["raw"] for r in doc["records"]] == [20]


# -- queries --------------------------------------------------------------------------------------


async def test_query_api(collector: str, http: aiohttp.ClientSession) -> None:
    records = [
        session_cp("A", 61_000, status=Status.OK, customer="c1", agent_name="alice"),
        rec("A", "llm-1", Resource.LLM_INPUT, 1000, model="openai/gpt-4.1-mini", provider="livekit"),
        session_cp("B", 30_000, customer="c2", agent_name="bob"),
        rec("B", "llm-1", Resource.LLM_INPUT, 10, model="acme/unknown-model", provider="acme"),
    ]
    assert (await post(http, collector, body_of(records)))[0] == 200

    status, doc = await get(http, collector, "/v1/sessions")
    by_id = {s["session_id"]: s for s in doc["sessions"]}
    assert (by_id["A"]["state"], by_id["B"]["state"]) == ("closed", "open")
    assert by_id["A"]["billed_minutes"] == "2" and Decimal(by_id["A"]["cost"]) > 0
    assert by_id["B"]["cost"] is None  # an unpriced model makes the session's cost unknown, never $0
    _, doc = await get(http, collector, "/v1/sessions?customer=c2")
    assert [s["session_id"] for s in doc["sessions"]] == ["B"]
    _, doc = await get(http, collector, "/v1/sessions?agent=alice&limit=5")
    assert [s["session_id"] for s in doc["sessions"]] == ["A"]

    _, doc = await get(http, collector, "/v1/sessions/A/records")
    assert {r["resource"] for r in doc["records"]} == {"agent_session", "llm_input"}
    assert all(Decimal(r["cost"]) >= 0 for r in doc["records"])

    status, doc = await get(http, collector, "/v1/usage?group_by=model")
    assert status == 200 and doc["group_by"] == "model"
    assert doc["unpriced"] == ["acme/unknown-model"]
    rows = {(r["key"], r["resource"]): r for r in doc["rows"]}
    assert rows[("acme/unknown-model", "llm_input")]["cost"] is None
    assert rows[("openai/gpt-4.1-mini", "llm_input")]["quantity"] == "1000"
    assert Decimal(doc["total"]) == sum(Decimal(r["cost"]) for r in doc["rows"] if r["cost"] is not None)
    for group in ("day", "agent", "room", "customer", "resource"):
        status, doc = await get(http, collector, f"/v1/usage?group_by={group}")
        assert status == 200 and doc["rows"], group

    month = NOW.strftime("%Y-%m")
    status, doc = await get(http, collector, f"/v1/invoice?month={month}&plan=ship")
    assert status == 200 and (doc["plan"], doc["month"], doc["currency"]) == ("ship", month, "USD")

    for bad in ("/v1/usage?group_by=planet", "/v1/usage?since=yesterday", "/v1/invoice?month=2026-13",
                "/v1/invoice?plan=gold", "/v1/sessions?limit=0", "/v1/sessions?until=2026-01-01T00:00:00"):  # fmt: skip
        status, doc = await get(http, collector, bad)
        assert status == 400 and doc["error"], bad


async def test_queries_need_a_signed_header(collector: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{collector}/v1/sessions") as resp:
        assert resp.status == 401
    async with http.get(f"{collector}/v1/sessions", headers={"Authorization": sign()}) as resp:
        assert resp.status == 200
    async with http.get(f"{collector}/v1/usage", headers={"Authorization": sign(key="APIx", secret="x" * 40)}) as resp:
        assert resp.status == 401


# -- operations -----------------------------------------------------------------------------------


async def test_openapi_health_metrics_and_dashboard(collector: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{collector}/openapi.json") as resp:
        spec = await resp.json()
    assert {"/v1/records", "/v1/sessions", "/v1/usage", "/v1/invoice", "/v1/livekit/webhook"} <= set(spec["paths"])
    async with http.get(f"{collector}/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok", "pid": os.getpid()})  # in-process app
    body = body_of([rec("M", "llm-1"), rec("M", "llm-1"), {"id": "junk"}])
    await post(http, collector, body)
    async with http.get(f"{collector}/metrics") as resp:
        text = await resp.text()
    assert 'metering_records_total{status="accepted"} 1.0' in text
    assert 'metering_records_total{status="duplicate"} 1.0' in text
    assert 'metering_records_total{status="rejected"} 1.0' in text
    assert "metering_request_seconds_bucket" in text
    async with http.get(f"{collector}/dashboard/") as resp:
        assert resp.status == 200 and "<title>LiveKit metering</title>" in await resp.text()
    async with http.get(f"{collector}/dashboard/app.js") as resp:
        assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
    async with http.get(f"{collector}/dashboard/../../app.py") as resp:
        assert resp.status == 404


# -- configuration --------------------------------------------------------------------------------


def test_keys_file_maps_keys_to_projects_and_bad_files_say_what_to_fix(tmp_path: Path) -> None:
    from livekit_metering.collector.auth import AuthError, KeyRing, KeysFileError
    from livekit_metering.collector.serve import ServeError, build_config

    good = tmp_path / "keys.toml"
    good.write_text(
        f'[keys.{TEST_KEY}]\nsecret = "{TEST_SECRET}"\nproject = "acme"\n\n'
        f'[keys.{OTHER_KEY}]\nsecret = "{OTHER_SECRET}"\nproject = "globex"\n'
    )
    ring = KeyRing.load(good)
    assert ring.token(sign()).for_reading().name == "acme"
    assert ring.token(sign(key=OTHER_KEY, secret=OTHER_SECRET)).for_reading().name == "globex"
    with pytest.raises(AuthError, match="unknown API key"):
        ring.token(sign(key="APIelse", secret=TEST_SECRET))

    bad = tmp_path / "bad.toml"
    for text, words in (
        ("not toml [", "cannot read keys file"),
        ("[other]\n", "expected [keys.<API key>]"),
        ('[keys.K]\nsecret = "short"\n', "at least 32 characters"),
    ):
        bad.write_text(text)
        with pytest.raises(KeysFileError, match=re.escape(words)):
            KeyRing.load(bad)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_API_")}
    with mock.patch.dict(os.environ, env, clear=True):
        with pytest.raises(ServeError, match="no API keys"):
            build_config()
        config = build_config(keys=str(good), max_batch=10)
        assert (len(config.keys), config.limits.max_batch) == (2, 10)


async def test_sums_keep_the_language_apart_so_multilingual_stt_is_priced_as_such(
    collector: str, http: aiohttp.ClientSession
) -> None:
    # deepgram/nova-3 costs more with language "multi": summed usage must not price it as monolingual.
    from livekit_metering.pricing import PriceBook

    stt = dict(resource=Resource.STT, raw=600_000, seconds=600, model="deepgram/nova-3", provider="livekit")
    records = [rec("S1", "stt-1", **stt), rec("S2", "stt-1", language="multi", **stt)]
    status, _ = await post(http, collector, body_of(records))
    assert status == 200

    book = PriceBook.bundled()
    mono, multi = (book.price_of(r, plan="ship") for r in records)
    assert mono is not None and multi is not None and multi > mono
    status, usage = await get(http, collector, "/v1/usage?group_by=model")
    assert status == 200
    assert Decimal(usage["total"]) == mono + multi == book.cost(records, plan="ship").total
    month = NOW.strftime("%Y-%m")
    status, invoice = await get(http, collector, f"/v1/invoice?month={month}&plan=ship")
    assert invoice == book.invoice(records, plan="ship", month=month).to_json()
