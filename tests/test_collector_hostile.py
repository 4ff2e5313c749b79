"""Hostile input to the collector, signed and not: every malformed, out-of-range or oversized input is a
per-record ``rejected`` with a short reason, or a 4xx for the whole request, answered in bounded time;
none of it is stored, a signed bad record is never answered as a store outage (503, which the outbox
would retry forever), and one project's bad batch never fails another's."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from collector_helpers import NOW, body_of, get, post, rec, usage_totals

from livekit_metering.collector.config import Limits
from livekit_metering.collector.store.base import Stored, open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.records import Resource

OTHER_KEY, OTHER_SECRET = "APIotherkey", "other-secret-other-secret-other-secret"
KEYS = {TEST_KEY: (TEST_SECRET, "acme"), OTHER_KEY: (OTHER_SECRET, "globex")}
INT64 = 2**63 - 1
MAX_REASON = 400  # characters: a reason says what is wrong, it does not echo the input


@pytest.fixture
async def collector(database: str) -> AsyncIterator[str]:
    async with run_collector(database, KEYS) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def tokens(usage: str, raw: int, **fields: Any) -> dict[str, Any]:
    """An llm_input record's JSON (1 token increments: quantity == raw), with fields replaced."""
    return {**rec("H", usage, raw=1).to_json(), "raw": raw, "quantity": str(raw), **fields}


async def stored_ids(http: aiohttp.ClientSession, url: str, **kw: Any) -> list[str]:
    """Every record id the project holds, read back from every session (not only the ones a test
    expects): what is stored is what the API can show."""
    status, doc = await get(http, url, "/v1/sessions?limit=1000", **kw)
    assert status == 200, doc
    ids: list[str] = []
    for session in doc["sessions"]:
        status, records = await get(http, url, f"/v1/sessions/{session['session_id']}/records", **kw)
        assert status == 200, records
        ids += [r["id"] for r in records["records"]]
    return ids


async def test_numbers_and_times_out_of_range_are_rejected_per_record(
    collector: str, http: aiohttp.ClientSession
) -> None:
    start = {"start": "0001-01-01T00:00:00+05:00", "end": "0001-01-01T00:00:00+05:00"}
    bad = {
        "raw 2**63": tokens("a", 2**63),
        "raw 10**400": tokens("b", 10**400, quantity="1"),
        "raw 10**30, rounded as the collector rounds": tokens("c", 10**30),
        "start before year 1 in UTC": tokens("d", 5, **start),
        "end after year 9999 in UTC": tokens("e", 5, end="9999-12-31T23:59:59-05:00"),
        "quantity 1E+10000000": tokens("f", 5, quantity="1E+10000000"),
        "quantity 1E-1000000": tokens("g", 0, quantity="1E-1000000"),
        "quantity 1E+999990": tokens("h", 5, quantity="1E+999990"),
        "three enums wrong (each error lists every choice)": tokens("i", 5, resource="x", unit="y", status="z"),
    }
    good = rec("H", "good", raw=7)
    began = time.monotonic()
    status, doc = await asyncio.wait_for(post(http, collector, body_of([good, *bad.values()])), 20)
    assert status == 200, doc
    results = doc["results"]
    assert results[0]["status"] == "accepted"
    for (case, record), result in zip(bad.items(), results[1:], strict=True):
        assert (result["id"], result["status"]) == (record["id"], "rejected"), case
        assert 0 < len(result["reason"]) <= MAX_REASON, case
    assert time.monotonic() - began < 10  # today's main spent 26 s on "1E+999990" alone
    assert await stored_ids(http, collector) == [good.id]


async def test_fifty_tiny_quantities_get_a_small_answer(collector: str, http: aiohttp.ClientSession) -> None:
    # Printing 1E-1000000 in full in each reason made a 50 MB answer.
    body = body_of([tokens(f"q{i}", 0, quantity="1E-1000000") for i in range(50)])
    async with http.post(f"{collector}/v1/records", data=body, headers={"Authorization": sign(body)}) as resp:
        text = await resp.read()
    assert resp.status == 200 and len(text) < 50 * MAX_REASON
    assert {r["status"] for r in json.loads(text)["results"]} == {"rejected"}


async def test_a_quantity_written_with_a_huge_exponent_or_length_is_refused_short(
    collector: str, http: aiohttp.ClientSession
) -> None:
    # "0E-1000000" equals 0, the quantity of raw 0, but prints as a megabyte of zeros; 41 characters is
    # longer than any exact quantity needs.
    odd = [tokens("z", 0, quantity="0E-1000000"), tokens("l", 1, quantity="1." + "0" * 39)]
    status, doc = await post(http, collector, body_of([*odd, tokens("ok", 1, quantity="1.000")]))
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["rejected", "rejected", "accepted"]
    assert all(len(r["reason"]) <= MAX_REASON for r in doc["results"])
    _, records = await get(http, collector, "/v1/sessions/H/records")
    assert [r["quantity"] for r in records["records"]] == ["1.000"]


async def test_a_body_nested_deep_or_made_of_empty_objects_gets_a_4xx_at_once(
    collector: str, http: aiohttp.ClientSession
) -> None:
    deep = b'{"records": [' + b"[" * 1000 + b"]" * 1000 + b"]}"
    status, doc = await post(http, collector, deep)
    assert status == 400 and "JSON" in doc["error"]
    nested_in_a_record = json.dumps({"records": [tokens("n", 1, meta={"x": 1})]}).replace(
        '{"x": 1}', '{"x": ' + "[" * 300 + "]" * 300 + "}"
    )
    status, doc = await post(http, collector, nested_in_a_record.encode())
    assert status == 400, doc
    # 1,000,000 "{}" (3 MB): 11 s and 4.3 GB before its 413 on today's main.
    empties = b'{"records": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    began = time.monotonic()
    async with run_collector(None, KEYS, limits=Limits(max_body_bytes=4 * 1024 * 1024)) as roomy:
        status, doc = await post(http, roomy, empties)
        assert status == 413 and "JSON values" in doc["error"], doc
        status, doc = await post(http, roomy, gzip.compress(empties), gz=True)
        assert status == 413 and "JSON values" in doc["error"], doc
    assert time.monotonic() - began < 10
    # Just past the batch limit: refused before a record is validated, naming the limit.
    status, doc = await post(http, collector, b'{"records": [' + b",".join([b"1"] * 5001) + b"]}")
    assert status == 413 and "limit is 5000" in doc["error"]
    assert await stored_ids(http, collector) == []


async def test_a_slow_record_does_not_stall_healthz(collector: str, http: aiohttp.ClientSession) -> None:
    # One 457-byte record with quantity 1E+999990 held the event loop for 26 s on today's main.
    body = body_of([tokens("slow", 5, quantity="1E+999990")])
    ingest = asyncio.create_task(post(http, collector, body))
    for _ in range(5):
        async with http.get(f"{collector}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            assert resp.status == 200
    status, doc = await asyncio.wait_for(ingest, 5)
    assert (status, doc["results"][0]["status"]) == (200, "rejected")


async def test_nul_characters_are_rejected_per_record(collector: str, http: aiohttp.ClientSession) -> None:
    # PostgreSQL text cannot hold NUL: the batch failed as a store outage (503) there.
    body = body_of([tokens("nul", 1, room="a\x00b"), tokens("nul2", 1, attributes={"k\x00": "v"}), rec("H", "ok")])
    status, doc = await post(http, collector, body)
    assert status == 200, doc
    assert [r["status"] for r in doc["results"]] == ["rejected", "rejected", "accepted"]
    assert "NUL" in doc["results"][0]["reason"]


async def test_rounding_is_exact_beyond_float_precision(collector: str, http: aiohttp.ClientSession) -> None:
    # 2**53 + 1 is the first integer a float cannot hold: rounding through one refused its exact quantity.
    raw = 2**53 + 1
    status, doc = await post(http, collector, body_of([tokens("exact", raw)]))
    assert (status, doc["results"][0]["status"]) == (200, "accepted"), doc
    _, records = await get(http, collector, "/v1/sessions/H/records")
    assert [(r["raw"], r["quantity"]) for r in records["records"]] == [(raw, "9007199254740993")]
    # Seconds, rounded up to whole seconds: 9007199254740993 ms is 9007199254741 s.
    stt = rec("H", "stt", Resource.STT, 1).to_json()
    status, doc = await post(http, collector, body_of([{**stt, "raw": raw, "quantity": "9007199254741"}]))
    assert doc["results"][0]["status"] == "accepted", doc


@pytest.mark.parametrize(
    "path",
    [
        "/v1/usage?until=9999-12-31T12:00:00Z",
        "/v1/usage?since=0001-01-01T00:00:00%2B05:00",
        "/v1/sessions?since=0001-01-01T00:00:00%2B05:00",
        "/v1/invoice?month=9999-12",
        "/v1/invoice?month=0000-01",
        "/v1/sessions?room=a%00b",
        "/v1/sessions?limit=99999999999999999999999",
        "/v1/sessions/a%00b/records",
    ],
)
async def test_queries_out_of_range_get_400(collector: str, http: aiohttp.ClientSession, path: str) -> None:
    status, doc = await get(http, collector, path)
    assert status == 400 and doc["error"], (path, doc)


async def test_a_dashboard_path_with_nul_is_404(collector: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{collector}/dashboard/a%00b") as resp:
        assert resp.status == 404


# -- one project's sums never fail another's -------------------------------------------------------

BIG = 10**18  # the largest raw a record may carry: ten of them overflow a 64-bit sum


def _big(project_tag: str, n: int) -> list[Stored]:
    return [Stored(rec(f"BIG-{project_tag}", f"llm-{i}", raw=BIG)) for i in range(n)]


async def test_a_sum_out_of_range_refuses_that_batch_only_in_a_shared_commit(database: str) -> None:
    from livekit_metering.collector.store.base import StoreLimit

    async with open_store(database) as store:
        # Both batches reach the store before its commit starts: SQLite writes them in one group commit.
        overflow, valid = await asyncio.gather(
            store.ingest("acme", _big("a", 10)),
            store.ingest("globex", [Stored(rec("V", f"llm-{i}")) for i in range(50)]),
            return_exceptions=True,
        )
        assert isinstance(overflow, StoreLimit), overflow
        assert valid == ["accepted"] * 50
        assert await store.count("acme") == 0 and await store.count("globex") == 50
        # The same project, one batch at a time: the sum stays exact until the batch that would overflow.
        for i in range(9):
            assert await store.ingest("acme", _big(f"s{i}", 1)) == ["accepted"]
        with pytest.raises(StoreLimit):
            await store.ingest("acme", _big("s9", 1))
        # A batch of the same project in the same commit as the overflowing one is still stored.
        overflow, fine = await asyncio.gather(
            store.ingest("acme", _big("t", 1)),
            store.ingest("acme", [Stored(rec("T", "small"))]),
            return_exceptions=True,
        )
        assert isinstance(overflow, StoreLimit) and fine == ["accepted"]
        rows = await store.usage("acme", NOW.date(), NOW.date().replace(year=NOW.year + 1), "resource")
        assert [(r.resource, r.billable) for r in rows] == [(Resource.LLM_INPUT, 9 * BIG + 100)]
    if database.startswith("sqlite:///"):
        with sqlite3.connect(database.removeprefix("sqlite:///")) as db:
            kinds = db.execute("SELECT DISTINCT typeof(billable), typeof(raw) FROM rollup").fetchall()
        assert kinds == [("integer", "integer")]  # never silently a float


async def test_over_http_an_overflowing_batch_is_rejected_and_other_projects_stored(
    collector: str, http: aiohttp.ClientSession
) -> None:
    others = [body_of([rec(f"G{b}", f"llm-{i}") for i in range(20)]) for b in range(20)]
    answers = await asyncio.gather(
        post(http, collector, body_of([tokens(f"big-{i}", BIG) for i in range(10)])),
        *(post(http, collector, body, key=OTHER_KEY, secret=OTHER_SECRET) for body in others),
    )
    (status, doc), *rest = answers
    assert status == 200 and {r["status"] for r in doc["results"]} == {"rejected"}
    assert "64-bit" in doc["results"][0]["reason"] or "cannot hold" in doc["results"][0]["reason"]
    assert [s for s, _ in rest] == [200] * 20
    assert {r["status"] for _, d in rest for r in d["results"]} == {"accepted"}
    assert len(await stored_ids(http, collector, key=OTHER_KEY, secret=OTHER_SECRET)) == 400
    assert await stored_ids(http, collector) == []
    # Sent one by one, the sum stays exact up to what a 64-bit integer holds, then refuses.
    for i in range(9):
        status, doc = await post(http, collector, body_of([tokens(f"one-{i}", BIG)]))
        assert doc["results"][0]["status"] == "accepted"
    status, doc = await post(http, collector, body_of([tokens("one-9", BIG)]))
    assert (status, doc["results"][0]["status"]) == (200, "rejected")
    assert await usage_totals(http, collector) == {"llm_input": 9 * BIG}


def test_a_record_is_bounded_where_the_store_holds_its_sums() -> None:
    from livekit_metering.records import MAX_RAW

    assert 2**53 + 1 <= MAX_RAW and 9 * MAX_RAW <= INT64 < 10 * MAX_RAW
