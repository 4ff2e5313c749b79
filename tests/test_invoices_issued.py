"""Monthly invoices, issued by a real collector: once per month after its end plus the grace period,
equal to the month's preview at that moment, none for a month with nothing due, immutable (late
records become adjustment lines on the next invoice), with per-customer statements, downloadable as
JSON, CSV and HTML."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, post

from livekit_metering.collector.app import Collector, CollectorConfig
from livekit_metering.collector.auth import KeyRing
from livekit_metering.collector.settings import parse_settings
from livekit_metering.collector.store.base import open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource

HOBBY_KEY, HOBBY_SECRET = "APIhobbykey", "hobby-secret-hobby-secret-hobby-secret"
KEYS = {TEST_KEY: (TEST_SECRET, "acme"), HOBBY_KEY: (HOBBY_SECRET, "hobby")}
SETTINGS = parse_settings(
    {
        "plan": "ship",
        "projects": {"hobby": {"plan": "build"}},
        "phone_numbers": [
            {"project": "acme", "number": "+14155550100", "since": date(2026, 9, 1)},
            {"project": "acme", "number": "+18885550199", "since": date(2026, 10, 10)},
        ],
    }
)
GRACE = timedelta(hours=24)
UTC = timezone.utc


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def usage(rid: str, resource: Resource, raw: int, start: datetime, **fields: Any) -> MeterRecord:
    span = timedelta(milliseconds=raw) if resource is Resource.AGENT_SESSION else timedelta(seconds=1)
    return get_policy().record(
        id=rid, session_id=rid.split("/")[0], resource=resource, raw=raw, start=start, end=start + span, **fields
    )


OCTOBER = [
    # 5,010 agent session minutes for acme-bikes: 10 past Ship's 5,000 included, at $0.01.
    usage(
        "AJ_1/session/agent_session",
        Resource.AGENT_SESSION,
        5_010 * 60_000,
        datetime(2026, 10, 3, tzinfo=UTC),
        customer="acme-bikes",
    ),
    # 1M characters of LiveKit Inference TTS for globex-labs: $50.00, less Ship's $5.00 of credits.
    usage(
        "AJ_2/tts-1/tts",
        Resource.TTS,
        1_000_000,
        datetime(2026, 10, 14, tzinfo=UTC),
        customer="globex-labs",
        model="cartesia/sonic-3",
        provider="livekit",
    ),
]
# Ship, 2026-10: $50 fee + $0.10 session overage + $50.00 TTS - $5.00 credits + $2.00 toll-free number
# (the local number is Ship's one free number) = $97.10.
OCTOBER_TOTAL = Decimal("97.10")
LATE = usage(
    "AJ_3/session/agent_session",
    Resource.AGENT_SESSION,
    20 * 60_000,
    datetime(2026, 10, 28, tzinfo=UTC),
    customer="acme-bikes",
)
HOBBY = usage("AJ_9/session/agent_session", Resource.AGENT_SESSION, 100 * 60_000, datetime(2026, 10, 7, tzinfo=UTC))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, url: str, path: str, *, key: str = TEST_KEY, secret: str = TEST_SECRET, **query: str
) -> tuple[int, bytes]:
    async with http.get(f"{url}{path}", params=query, headers={"Authorization": sign(key=key, secret=secret)}) as resp:
        return resp.status, await resp.read()


async def api(http: aiohttp.ClientSession, url: str, path: str, **kw: Any) -> Any:
    status, body = await fetch(http, url, path, **kw)
    assert status == 200, body
    return json.loads(body)


async def settle(http: aiohttp.ClientSession, url: str, want: int, **kw: Any) -> dict[str, Any]:
    """The invoice list once it has ``want`` invoices and a few more sweeps ran (none may add one)."""
    for _ in range(200):
        doc = await api(http, url, "/v1/invoices", **kw)
        if len(doc["invoices"]) >= want:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # several more sweeps
    doc = await api(http, url, "/v1/invoices", **kw)
    assert len(doc["invoices"]) == want, doc
    return dict(doc)


async def downloads(http: aiohttp.ClientSession, url: str, number: str) -> dict[str, bytes]:
    out = {}
    for fmt in ("json", "csv", "html"):
        status, body = await fetch(http, url, f"/v1/invoices/{number}", format=fmt)
        assert status == 200
        out[fmt] = body
    return out


async def cli(*args: str, code: int = 0) -> str:
    """Run the ``livekit-metering`` command (typer's runner, in a thread: the collector answers on this
    loop); its output, stderr included."""
    from typer.testing import CliRunner

    from livekit_metering.cli import app

    env = {"LIVEKIT_API_KEY": TEST_KEY, "LIVEKIT_API_SECRET": TEST_SECRET}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    assert result.exit_code == code, (args, result.output)
    return str(result.output)


async def test_months_are_invoiced_once_after_the_grace_period_and_never_change(
    database: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clock = Clock(datetime(2026, 10, 15, 12, tzinfo=UTC))
    options = {"settings": SETTINGS, "clock": clock, "sweep_every": timedelta(milliseconds=50)}
    async with run_collector(database, KEYS, invoice_grace=GRACE, **options) as url:
        assert (await post(http, url, body_of(OCTOBER)))[0] == 200
        assert (await post(http, url, body_of([HOBBY]), key=HOBBY_KEY, secret=HOBBY_SECRET))[0] == 200

        # Month end plus 23 h 59 min: still within the grace period.
        clock.now = datetime(2026, 11, 1, 23, 59, tzinfo=UTC)
        await settle(http, url, 0)

        clock.now = datetime(2026, 11, 2, 0, 0, 1, tzinfo=UTC)
        listed = (await settle(http, url, 1))["invoices"]
        preview = await api(http, url, "/v1/invoice", month="2026-10", plan="ship")
        [october] = listed
        assert (october["number"], october["month"], october["plan"]) == ("INV-202610-0001", "2026-10", "ship")
        assert Decimal(october["total"]) == Decimal(preview["total"]) == OCTOBER_TOTAL
        issued = await downloads(http, url, october["number"])
        doc = json.loads(issued["json"])
        assert doc["lines"] == preview["lines"] and doc["adjustments"] == []
        assert doc["issued"] == "2026-11-02T00:00:01.000Z"
        amounts = {line["resource"]: line["amount"] for line in doc["lines"]}
        assert amounts["plan_fee"] == "50.00" and amounts["agent_session"] == "0.10"
        assert amounts["phone_number"] == "0.00" and amounts["phone_number_toll_free"] == "2.00"
        assert amounts["inference_credits"] == "-5.00"

        # The CSV and HTML say the same.
        rows = list(csv.DictReader(io.StringIO(issued["csv"].decode())))
        assert [r["amount"] for r in rows if r["section"] == "line"] == [line["amount"] for line in doc["lines"]]
        assert rows[-1]["section"] == "total" and rows[-1]["amount"] == "97.10"
        assert b"Invoice INV-202610-0001" in issued["html"] and b"$97.10" in issued["html"]

        # Per-customer statements from the same run, at Ship list prices.
        assert doc["statements"] == ["acme-bikes", "globex-labs"]
        acme = await api(http, url, "/v1/invoices/INV-202610-0001/statements/acme-bikes")
        globex = await api(http, url, "/v1/invoices/INV-202610-0001/statements/globex-labs")
        assert (acme["total"], acme["lines"][0]["quantity"], acme["lines"][0]["cost"]) == ("50.10", "5010", "50.10")
        assert (globex["total"], globex["lines"][0]["model"]) == ("50.00", "cartesia/sonic-3")

        # A $0 month (Build, within its caps) is closed without an invoice.
        hobby = await api(http, url, "/v1/invoices", key=HOBBY_KEY, secret=HOBBY_SECRET)
        assert hobby == {"invoices": [], "closed_without_invoice": [{"month": "2026-10", "plan": "build"}]}

        # A record for October arriving after its invoice: the preview moves, the invoice does not.
        clock.now = datetime(2026, 11, 10, tzinfo=UTC)
        assert (await post(http, url, body_of([LATE])))[0] == 200
        assert (await api(http, url, "/v1/invoice", month="2026-10", plan="ship"))["total"] == "97.30"
        assert await downloads(http, url, "INV-202610-0001") == issued

        # It is an adjustment line on November's invoice: $50 fee + $2.00 toll-free number, + 20 minutes
        # of October agent session past the quota ($0.20).
        clock.now = datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC)
        november = (await settle(http, url, 2))["invoices"][0]
        assert (november["number"], november["total"], november["adjustments"]) == ("INV-202611-0002", "52.20", 1)
        nov = json.loads((await downloads(http, url, november["number"]))["json"])
        assert (nov["subtotal"], nov["adjustments_total"]) == ("52.00", "0.20")
        [adjustment] = nov["adjustments"]
        assert {k: adjustment[k] for k in ("month", "resource", "unit", "quantity", "amount")} == {
            "month": "2026-10",
            "resource": "agent_session",
            "unit": "minute",
            "quantity": "20",
            "amount": "0.20",
        }
        statement = await api(http, url, "/v1/invoices/INV-202611-0002/statements/acme-bikes")
        assert (statement["lines"], statement["total"]) == ([], "0.20")
        assert statement["adjustments"][0]["quantity"] == "20"
        assert await downloads(http, url, "INV-202610-0001") == issued  # still byte for byte

        # A third month: October's late minutes were billed once, they do not come back.
        clock.now = datetime(2027, 1, 2, 0, 0, 1, tzinfo=UTC)
        december = (await settle(http, url, 3))["invoices"][0]
        assert (december["total"], december["adjustments"], december["statements"]) == ("52.00", 0, [])
        hobby = await api(http, url, "/v1/invoices", key=HOBBY_KEY, secret=HOBBY_SECRET)
        assert [m["month"] for m in hobby["closed_without_invoice"]] == ["2026-12", "2026-11", "2026-10"]

        # The command line lists, shows and downloads the same documents (from the collector, and
        # straight from its store).
        for source in (["--url", url], ["--database", database, "--project", "acme"]):
            listed_cli = json.loads(await cli("invoices", "list", "--format", "json", *source))
            assert listed_cli == await api(http, url, "/v1/invoices")
            shown = await cli("invoices", "show", "INV-202611-0002", *source)
            assert "adjustment for 2026-10" in shown and "$52.20" in shown
            for fmt in ("json", "csv", "html"):
                target = str(tmp_path / f"oct.{fmt}")
                await cli("invoices", "download", "INV-202610-0001", "--format", fmt, "-o", target, *source)
                assert (tmp_path / f"oct.{fmt}").read_bytes() == issued[fmt]
            saved_to = tmp_path / "statement.json"
            await cli(
                "invoices", "download", "INV-202611-0002", "--customer", "acme-bikes", "-o", str(saved_to), *source
            )
            saved = json.loads(saved_to.read_text())
            assert saved == statement
        failed = await cli("invoices", "show", "INV-000000-0000", "--url", url, code=2)
        assert "404" in failed

        # Errors say what is wrong.
        assert (await fetch(http, url, "/v1/invoices/INV-999999-0001"))[0] == 404
        assert (await fetch(http, url, "/v1/invoices/INV-202610-0001", format="pdf"))[0] == 400
        status, _ = await fetch(http, url, "/v1/invoices/INV-202610-0001", key=HOBBY_KEY, secret=HOBBY_SECRET)
        assert status == 404  # another project's invoice does not exist for this key


async def test_a_grace_period_of_zero_closes_the_month_as_it_ends(database: str, http: aiohttp.ClientSession) -> None:
    clock = Clock(datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    options = {"settings": SETTINGS, "clock": clock, "sweep_every": timedelta(milliseconds=50)}
    async with run_collector(database, KEYS, invoice_grace=timedelta(0), **options) as url:
        assert (await post(http, url, body_of(OCTOBER)))[0] == 200
        await settle(http, url, 0)
        clock.now = datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)  # a second after October ends
        [october] = (await settle(http, url, 1))["invoices"]
        assert october["month"] == "2026-10"


async def test_closing_a_month_from_two_collectors_at_once_issues_one_invoice(database: str) -> None:
    now = datetime(2026, 11, 2, 1, tzinfo=UTC)
    config = CollectorConfig(database=database, keys=KeyRing(KEYS), settings=SETTINGS, clock=lambda: now)
    async with open_store(database) as one, open_store(database) as two:
        from livekit_metering.collector.store.base import Stored

        await one.ingest("acme", [Stored(r) for r in OCTOBER])
        first, second = Collector(config, one), Collector(config, two)
        results = await asyncio.gather(
            first.billing.close("acme", "2026-10", now), second.billing.close("acme", "2026-10", now)
        )
        issued = [r for r in results if r is not None]
        assert len(issued) == 1 and issued[0].number == "INV-202610-0001"
        assert await first.billing.close("acme", "2026-10", now) is None  # and again: nothing
        months = await two.closed_months("acme")
        assert [(m.month, m.number, m.total) for m in months] == [("2026-10", "INV-202610-0001", "97.10")]


def test_every_api_route_is_in_the_openapi_description() -> None:
    from livekit_metering.collector.app import create_app
    from livekit_metering.collector.openapi import openapi_spec

    routes = {r.canonical for r in create_app().router.resources() if r.canonical.startswith("/v1/")}
    assert {"/v1/invoices", "/v1/invoices/{number}", "/v1/invoices/{number}/statements/{customer}"} <= routes
    assert routes <= set(openapi_spec()["paths"])
