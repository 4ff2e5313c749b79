"""Seeded fuzzing of a real collector, on SQLite and PostgreSQL: batches of records made valid or
invalid on purpose (the test knows which, from its own reading of the policy file, not from the
collector's validation) mixed with arbitrary JSON, and query parameters of every shape.

Must hold: no answer is a 5xx; every record valid by construction is accepted once (a resend is a
duplicate); every other one is rejected; and reading back everything the project holds (every
session, every record, the summed usage, the store's own count) finds exactly the accepted records,
each once, as sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from collector_helpers import NOW, get, post
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from livekit_metering.collector.config import Limits
from livekit_metering.collector.store.base import open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.slow

SEED = 20261129
RECORD_EXAMPLES = 250
QUERY_EXAMPLES = 250
LIMITS = Limits(max_body_bytes=256 * 1024, max_inflated_bytes=1024 * 1024, max_batch=50)
SIZES = {"minute": 60_000, "second": 1_000, "gb": 10**9, "token": 1, "character": 1, "event": 1, "number_month": 1}
KEYS = {TEST_KEY: (TEST_SECRET, "fuzz")}
# The collector keeps what each example stored, so an example cannot be replayed (to shrink it or
# report it): failures are collected as drawn and reported at the end; the seed reproduces them.
NO_SHRINK = (Phase.explicit, Phase.generate)
ALL = list(HealthCheck)


def _rules() -> dict[str, dict[str, tuple[str, int, int]]]:
    """policy -> resource -> (unit, increment, minimum), read from the policy file itself."""
    doc = tomllib.loads(resources.files("livekit_metering").joinpath("data/policies.toml").read_text())
    out: dict[str, dict[str, tuple[str, int, int]]] = {}
    for policy in doc["policy"]:
        rules = dict(out.get(policy.get("extends", ""), {}))
        for name, rule in policy["rules"].items():
            rules[name] = (rule["unit"], rule["increment"], rule.get("minimum", 0))
        out[policy["id"]] = rules
    return out


RULES = _rules()


def quantity(policy: str, resource: str, raw: int) -> str:
    """Rounded up to whole increments, with integers only: the test's own arithmetic."""
    unit, increment, minimum = RULES[policy][resource]
    billable = 0 if raw == 0 else -(-max(raw, minimum) // increment) * increment
    return format(Decimal(billable) / SIZES[unit], "f")


_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)

# Each makes a record invalid, whatever else it holds.
INVALID = {
    "raw negative": lambda r: {**r, "raw": -1},
    "raw past 10**18": lambda r: {**r, "raw": 10**18 + 1},
    "raw 2**63": lambda r: {**r, "raw": 2**63},
    "raw a float": lambda r: {**r, "raw": 1.5},
    "raw a string": lambda r: {**r, "raw": "12"},
    "quantity wrong": lambda r: {**r, "quantity": "123456789.123"},  # no bundled rule rounds to thousandths
    "quantity huge": lambda r: {**r, "quantity": "1E+999990"},
    "quantity tiny": lambda r: {**r, "quantity": "1E-1000000"},
    "quantity a float": lambda r: {**r, "quantity": 1.5},
    "unit wrong": lambda r: {**r, "unit": "event" if r["unit"] != "event" else "minute"},
    "resource unknown": lambda r: {**r, "resource": "teleport"},
    "policy unknown": lambda r: {**r, "policy": "no-such-policy"},
    "status unknown": lambda r: {**r, "status": "maybe"},
    "start before year 1": lambda r: {**r, "start": "0001-01-01T00:00:00+05:00"},
    "end after 9999": lambda r: {**r, "end": "9999-12-31T23:59:59-05:00"},
    "start too old": lambda r: {**r, "start": (NOW - timedelta(days=40)).isoformat()},
    "end too far ahead": lambda r: {**r, "end": (NOW + timedelta(days=2)).isoformat()},
    "end before start": lambda r: {**r, "end": "2000-01-01T00:00:00Z"},  # before any start (and too old)
    "no offset": lambda r: {**r, "start": r["start"][:19]},
    "id empty": lambda r: {**r, "id": ""},
    "id too long": lambda r: {**r, "id": "x" * 300},
    "room with NUL": lambda r: {**r, "room": "a\x00b"},
    "attribute not text": lambda r: {**r, "attributes": {"k": 1}},
    "meta nested": lambda r: {**r, "meta": {"k": {"deep": [1, 2]}}},
    "unknown field": lambda r: {**r, "colour": "blue"},
    "missing session_id": lambda r: {k: v for k, v in r.items() if k != "session_id"},
    "missing end": lambda r: {k: v for k, v in r.items() if k != "end"},
}


@st.composite
def valid_record(draw: st.DrawFn, serial: int) -> dict[str, Any]:
    policy = draw(st.sampled_from(sorted(RULES)))
    resource = draw(st.sampled_from(sorted(RULES[policy])))
    raw = draw(st.sampled_from([0, 1, 999, 1_000, 1_001, 59_999, 60_000, 60_001, 2**53 + 1]) | st.integers(0, 10**9))
    start = NOW - timedelta(minutes=draw(st.integers(0, 60 * 24 * 30)))
    end = start + timedelta(milliseconds=draw(st.integers(0, 3_600_000)))
    amount = quantity(policy, resource, raw)
    record: dict[str, Any] = {
        "id": f"F{serial}",
        "session_id": f"S{draw(st.integers(0, 9))}",
        "resource": resource,
        "raw": raw,
        "unit": RULES[policy][resource][0],
        # An equal decimal written another way is the same quantity.
        "quantity": draw(
            st.sampled_from([amount, amount + ("000" if "." in amount else ".000"), format(Decimal(amount), "E")])
        ),
        "policy": policy,
        "start": start.astimezone(timezone(timedelta(hours=draw(st.integers(-12, 12))))).isoformat(),
        "end": end.isoformat(),
    }
    for field in ("room", "agent_name", "customer", "model", "provider", "language"):
        if draw(st.booleans()):
            record[field] = draw(_text)
    if draw(st.booleans()):
        record["status"] = draw(st.sampled_from(["ok", "cancelled", "error", "estimated"]))
    if draw(st.booleans()):
        record["attributes"] = draw(st.dictionaries(_text, _text, max_size=3))
    if draw(st.booleans()):
        record["meta"] = draw(st.dictionaries(_text, _text | st.integers(-(10**6), 10**6) | st.booleans(), max_size=3))
    return record


class Ledger:
    """What the test sent, as it knows it: valid records by id, and every answer."""

    def __init__(self) -> None:
        self.serial = 0
        self.valid: dict[str, dict[str, Any]] = {}  # id -> the record as sent
        self.answers: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def check(self, ok: bool, *context: Any) -> None:
        if not ok and len(self.failures) < 5:
            self.failures.append(repr(context)[:2000])

    def next_id(self) -> int:
        self.serial += 1
        return self.serial


def test_fuzzed_batches_and_queries(database: str) -> None:
    ledger = Ledger()
    asyncio.run(_fuzz(database, ledger))
    print(
        f"fuzz [{database.split(':')[0]}]: {sum(ledger.statuses.values())} requests {dict(ledger.statuses)}, "
        f"records {dict(ledger.answers)}, {len(ledger.valid)} valid stored"
    )


async def _fuzz(database: str, ledger: Ledger) -> None:
    loop = asyncio.get_running_loop()
    async with run_collector(database, KEYS, limits=LIMITS) as url, aiohttp.ClientSession() as http:

        def call(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        @seed(SEED)
        @settings(
            max_examples=RECORD_EXAMPLES, phases=NO_SHRINK, deadline=None, database=None, suppress_health_check=ALL
        )
        @given(data=st.data())
        def batches(data: st.DataObject) -> None:
            batch: list[Any] = []
            expected: list[str] = []
            for _ in range(data.draw(st.integers(1, 6))):
                kind = data.draw(st.sampled_from(["valid", "valid", "invalid", "resend", "junk"]))
                if kind == "junk":
                    batch.append(data.draw(_json))
                    expected.append("rejected")
                elif kind == "resend" and ledger.valid:
                    pick = data.draw(st.integers(0, 10**6))  # drawn the same way whatever was stored
                    batch.append(list(ledger.valid.values())[pick % len(ledger.valid)])
                    expected.append("duplicate")
                else:
                    record = data.draw(valid_record(ledger.next_id()))
                    if kind == "invalid":
                        for name in data.draw(
                            st.lists(st.sampled_from(sorted(INVALID)), min_size=1, max_size=3, unique=True)
                        ):
                            record = INVALID[name](record)
                    batch.append(record)
                    expected.append("accepted" if kind != "invalid" else "rejected")
            body = json.dumps({"records": batch}).encode()
            status, doc = call(post(http, url, body))
            ledger.statuses[status] += 1
            got = [r["status"] for r in doc.get("results", [])]
            ledger.answers.update(got)
            wrong = [
                (sent, want, answer)
                for sent, want, answer in zip(batch, expected, doc.get("results", [{}] * len(batch)), strict=True)
                if answer.get("status") != want
            ]
            ledger.check(status == 200 and not wrong, status, wrong or doc)
            for record, want in zip(batch, expected, strict=True):
                if want == "accepted":  # valid by construction, whatever the collector answered
                    ledger.valid[record["id"]] = record

        await asyncio.to_thread(batches)

        paths = st.sampled_from(["/v1/usage", "/v1/sessions", "/v1/invoice"]) | st.builds(
            lambda s, p: f"/{p}/{quote(s, safe='')}", _json.map(str), st.sampled_from(["dashboard", "v1/sessions"])
        )
        edge = st.sampled_from(
            ["9999-12-31T12:00:00Z", "0001-01-01T00:00:00+05:00", "2026-13", "9999-12", "0000-01", "1970-01-01",
             "-1", "0", "1e3", "9" * 40, "\x00", "a\x00b", " ", "2026-11-01T00:00:00 00:00", "room", "model"]
        )  # fmt: skip
        names = st.sampled_from(["since", "until", "group_by", "limit", "month", "plan", "room", "agent", "customer"])

        @seed(SEED)
        @settings(
            max_examples=QUERY_EXAMPLES, phases=NO_SHRINK, deadline=None, database=None, suppress_health_check=ALL
        )
        @given(path=paths, params=st.dictionaries(names | st.text(max_size=8), edge | st.text(max_size=40), max_size=5))
        def queries(path: str, params: dict[str, str]) -> None:
            query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
            if path.endswith("/"):
                path += "records"
            status, doc = call(get(http, url, f"{path}?{query}"))
            ledger.statuses[status] += 1
            ledger.check(status < 500, path, params, status, doc)

        await asyncio.to_thread(queries)
        assert not ledger.failures, "\n".join(ledger.failures)

        # Read back everything the project holds, not only what the test asked for.
        status, doc = await get(http, url, "/v1/sessions?limit=1000")
        assert status == 200 and len(doc["sessions"]) < 1000
        stored: dict[str, dict[str, Any]] = {}
        for session in doc["sessions"]:
            sid = quote(session["session_id"], safe="")
            status, records = await get(http, url, f"/v1/sessions/{sid}/records")
            for record in records["records"]:
                assert record["id"] not in stored, "an id stored twice"
                stored[record["id"]] = record
        assert set(stored) == set(ledger.valid)
        for rid, record in stored.items():
            sent = ledger.valid[rid]
            assert (record["raw"], Decimal(record["quantity"])) == (sent["raw"], Decimal(sent["quantity"]))
            assert (record["resource"], record["session_id"], record["policy"]) == (
                sent["resource"],
                sent["session_id"],
                sent["policy"],
            )
            assert datetime.fromisoformat(record["start"]) == datetime.fromisoformat(sent["start"])
        async with open_store(database) as store:
            assert await store.count("fuzz") == len(ledger.valid)
        since = (NOW - timedelta(days=34)).date().isoformat()
        until = (NOW + timedelta(days=2)).date().isoformat()
        status, usage = await get(http, url, f"/v1/usage?group_by=resource&since={since}&until={until}")
        summed: Counter[str] = Counter()
        for row in usage["rows"]:
            summed[row["resource"]] += Decimal(row["quantity"])  # type: ignore[assignment]
        expected: Counter[str] = Counter()
        for record in ledger.valid.values():
            expected[record["resource"]] += Decimal(record["quantity"])  # type: ignore[assignment]
        assert {k: v for k, v in summed.items() if v} == {k: v for k, v in expected.items() if v}
