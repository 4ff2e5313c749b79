"""Plan quotas and the month-end forecast from a seeded month in a real collector (SQLite and
PostgreSQL): every figure from a hand calculation written here, the same figures in the Prometheus
gauges, warnings in the log once per level, and the run-rate window's edges."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, post
from typer.testing import CliRunner

from livekit_metering.cli import app
from livekit_metering.collector.forecast import forecast_json
from livekit_metering.collector.pricing import Pricer
from livekit_metering.collector.quotas import month_quotas
from livekit_metering.collector.runrate import month_usage, window_of
from livekit_metering.collector.store.base import UsageRow
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.forecast_report import run_forecast
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Unit

UTC = timezone.utc
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the window: Nov 13 00:00 to now, 7.5 days; 10.5 days left
LK = {"provider": "livekit"}
GB = 1_000_000_000
MIN = 60_000


def _rec(rid: str, resource: Resource, raw: int, start: datetime, span_ms: int = 0, **fields: Any) -> MeterRecord:
    return get_policy().record(
        id=rid,
        session_id=rid.split("/")[0],
        resource=resource,
        raw=raw,
        start=start,
        end=start + timedelta(milliseconds=span_ms),
        **fields,
    )


def seeded_month() -> list[MeterRecord]:
    """November 2026 up to the 20th at noon, one shape per resource:

    * agent session minutes: 300 a day on the 1st-12th, 400 a day on the 13th-19th, 200 on the 20th
      (the 1st-5th for customer acme);
    * WebRTC minutes: 5,000 a day on the 1st-12th, 6,000 on the 13th-19th, 3,000 on the 20th, in
      calls of 500 minutes; and 1,000 minutes on a self-hosted server on the 15th (LiveKit bills none);
    * downstream data: 11 GB a day on the 1st-19th, 5.5 GB on the 20th;
    * LiveKit Inference TTS (cartesia/sonic-3, $50 per 1M characters): 10,000 characters a day on
      the 1st-19th, 5,000 on the 20th;
    * two phone numbers for the month; and 1,000 agent minutes on 30 October (not this month).
    """
    out: list[MeterRecord] = []
    for day in range(1, 21):
        at = datetime(2026, 11, day, tzinfo=UTC)
        minutes = 300 if day <= 12 else 400 if day <= 19 else 200
        who = {"customer": "acme"} if day <= 5 else {}
        out.append(
            _rec(f"d{day}/session/agent_session", Resource.AGENT_SESSION, minutes * MIN, at, minutes * MIN, **who)
        )
        calls = 10 if day <= 12 else 12 if day <= 19 else 6
        for n in range(calls):
            out.append(_rec(f"d{day}-{n}/user/connection", Resource.CONNECTION, 500 * MIN, at, 500 * MIN))
        data = 11 * GB if day <= 19 else 5_500_000_000
        out.append(_rec(f"d{day}/data/data_transfer", Resource.DATA_TRANSFER, data, at))
        chars = 10_000 if day <= 19 else 5_000
        out.append(_rec(f"d{day}/tts-1/tts", Resource.TTS, chars, at, model="cartesia/sonic-3", **LK))
    at15 = datetime(2026, 11, 15, tzinfo=UTC)
    out += [
        _rec(f"own-{n}/user/connection", Resource.CONNECTION, 500 * MIN, at15, 500 * MIN, provider="self-hosted")
        for n in range(2)
    ]
    out.append(_rec("numbers/phone_number", Resource.PHONE_NUMBER, 2, datetime(2026, 11, 1, tzinfo=UTC)))
    october = datetime(2026, 10, 30, tzinfo=UTC)
    out.append(_rec("oct/session/agent_session", Resource.AGENT_SESSION, 1_000 * MIN, october, 1_000 * MIN))
    return out


# ---- the hand calculation (Ship) ----------------------------------------------------------------------
# agent_session: 12 x 300 + 7 x 400 + 200 = 6,600 of 5,000 minutes: exhausted on the 16th (3,600 after
#   the 12th, then 4,000 / 4,400 / 4,800 / 5,200); run-rate (7 x 400 + 200) / 7.5 = 400 a day.
# connection: 12 x 5,000 + 7 x 6,000 + 3,000 = 105,000 of 150,000 (70 %); run-rate 45,000 / 7.5 =
#   6,000 a day; 45,000 left last 7.5 days: 20 Nov 12:00 + 7.5 days = 28 Nov 00:00.
# data_transfer: 19 x 11 + 5.5 = 214.5 of 250 GB (85.8 %: a warning); run-rate 82.5 / 7.5 = 11 GB a day;
#   35.5 GB left last 35.5 / 11 days = 278,836,363.6 ms: 23 Nov 17:27:16.363.
# credits: 195,000 characters x $50 / 1M = $9.75 of $5.00, $0.50 a day: $5.00 reached on the 10th;
#   run-rate 75,000 characters / 7.5 x $50 / 1M = $0.50 a day.
# phone_number: 2 of 1 number-month (rented per month: no run-rate).
SHIP_QUOTAS = {
    "agent_session": ("minute", "5000", "6600", "0", "132.00", "exhausted", "400", "2026-11-16", None),
    "connection": ("minute", "150000", "105000", "45000", "70.00", "ok", "6000", None, "2026-11-28T00:00:00.000Z"),
    "data_transfer": ("gb", "250", "214.5", "35.5", "85.80", "warning", "11", None, "2026-11-23T17:27:16.363Z"),
    "inference_credits": ("usd", "5", "9.75", "0", "195.00", "exhausted", "0.5", "2026-11-10", None),
    "phone_number": ("number_month", "1", "2", "0", "200.00", "exhausted", None, "2026-11-01", None),
}
# Month to date: $50 fee + (6,600 - 5,000) x $0.01 + (2 - 1) x $1.00 + $9.75 TTS - $5.00 credits.
MTD_TOTAL = Decimal(50) + Decimal("16.00") + Decimal("1.00") + Decimal("9.75") - Decimal("5.00")
# Month end (10.5 days more at the run-rate): agent 6,600 + 400 x 10.5 = 10,800 minutes (5,800 past the
# quota: $58.00); WebRTC 105,000 + 6,000 x 10.5 = 168,000 (18,000 past: $9.00); data 214.5 + 11 x 10.5 =
# 330 GB (80 past: $9.60); TTS 195,000 + 10,000 x 10.5 = 300,000 characters ($15.00, less $5.00
# credits); phone numbers $1.00; the plan fee.
FORECAST_TOTAL = Decimal(50) + Decimal("58.00") + Decimal("9.00") + Decimal("9.60") + Decimal("15.00") - 5 + 1
assert MTD_TOTAL == Decimal("71.75") and FORECAST_TOTAL == Decimal("137.60")


async def _get(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(f"{url}{path}", headers={"Authorization": sign()}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _seed(http: aiohttp.ClientSession, url: str) -> None:
    status, doc = await post(http, url, body_of(seeded_month()))
    assert status == 200, doc
    assert {r["status"] for r in doc["results"]} == {"accepted"}, [r for r in doc["results"] if r["reason"]]


def _gauges(text: str) -> dict[tuple[str, str], float]:
    """(metric, quota or "") -> value, for the default project's figures."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"(metering_(?:quota|invoice)_\w+)\{([^}]*)\} (\S+)$", line)
        if m and 'project="default"' in m[2]:
            quota = re.search(r'quota="([^"]*)"', m[2])
            out[(m[1], quota[1] if quota else "")] = float(m[3])
    return out


def test_quotas_forecast_and_gauges_from_a_seeded_month(database: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        opts: dict[str, Any] = {"clock": lambda: NOW, "sweep_every": timedelta(seconds=0.05)}
        async with run_collector(database, **opts) as url, aiohttp.ClientSession() as http:
            await _seed(http, url)
            quotas = await _get(http, url, "/v1/quotas")
            assert quotas["month"] == "2026-11" and quotas["plan"] == "ship" and not quotas["hard_caps"]
            assert quotas["run_rate"] == {
                "since": "2026-11-13T00:00:00.000Z",
                "until": "2026-11-20T12:00:00.000Z",
                "days": "7.5",
            }
            found = {q["quota"]: q for q in quotas["quotas"]}
            for name, (unit, included, used, left, percent, level, per_day, exhausted, exhausts) in SHIP_QUOTAS.items():
                q = found[name]
                assert (q["unit"], q["included"], q["used"], q["remaining"], q["percent"], q["level"]) == (
                    unit,
                    included,
                    used,
                    left,
                    percent,
                    level,
                ), q
                assert (q["per_day"], q["exhausted_on"], q["exhausts_at"]) == (per_day, exhausted, exhausts), q
            # Every other Ship quota is listed, unused.
            assert {"sip_inbound", "transcode", "observability_event"} <= set(found)
            assert found["transcode"]["resources"] == ["transcode", "transcode_audio", "stream_import"]
            assert found["transcode"]["used"] == "0" and found["transcode"]["exhausts_at"] is None

            forecast = await _get(http, url, "/v1/forecast")
            assert forecast["method"] == "run-rate" and "7.5 days" in forecast["method_text"]
            assert forecast["days_left"] == "10.5"
            assert Decimal(forecast["month_to_date"]["total"]) == MTD_TOTAL
            assert Decimal(forecast["total"]) == FORECAST_TOTAL
            invoice = await _get(http, url, "/v1/invoice?month=2026-11&plan=ship")
            assert Decimal(invoice["total"]) == MTD_TOTAL  # the month so far is the invoice preview
            ends = {(u["resource"], u["provider"]): u["month_end"] for u in forecast["usage"]}
            assert ends[("agent_session", "")] == "10800"
            assert ends[("connection", "")] == "168000"
            assert ends[("connection", "self-hosted")] == "2400"  # 1,000 + 1,000 / 7.5 x 10.5; off the invoice
            assert ends[("data_transfer", "")] == "330"
            assert ends[("tts", "livekit")] == "300000"
            assert ends[("phone_number", "")] == "2"

            # Build: the same usage against hard caps; LiveKit would have refused service, so nothing is due.
            build = {q["quota"]: q for q in (await _get(http, url, "/v1/quotas?plan=build"))["quotas"]}
            assert build["agent_session"]["hard_cap"] is True
            assert build["agent_session"]["exhausted_on"] == "2026-11-04"  # 300, 600, 900, 1,200 of 1,000
            assert build["connection"]["exhausted_on"] == "2026-11-01"  # 5,000 of 5,000 on the 1st
            assert build["inference_credits"]["exhausted_on"] == "2026-11-05"  # $2.50 at $0.50 a day
            assert (await _get(http, url, "/v1/forecast?plan=build"))["nothing_due"] is True

            # The gauges carry the same figures.
            async with http.get(f"{url}/metrics") as resp:
                gauges = _gauges(await resp.text())
            for name, (_, included, used, left, _, _, _, _, exhausts) in SHIP_QUOTAS.items():
                assert gauges[("metering_quota_used", name)] == float(used)
                assert gauges[("metering_quota_included", name)] == float(included)
                assert gauges[("metering_quota_remaining", name)] == float(left)
                assert gauges[("metering_quota_used_ratio", name)] == pytest.approx(float(used) / float(included))
                if exhausts:
                    stamp = datetime.fromisoformat(exhausts.replace("Z", "+00:00")).timestamp()
                    assert gauges[("metering_quota_exhausts_timestamp_seconds", name)] == pytest.approx(stamp)
                else:
                    assert ("metering_quota_exhausts_timestamp_seconds", name) not in gauges
            assert gauges[("metering_invoice_month_to_date_usd", "")] == float(MTD_TOTAL)
            assert gauges[("metering_invoice_forecast_usd", "")] == float(FORECAST_TOTAL)

            # The customer's month to date at list prices: 5 x 300 minutes x $0.01.
            assert (await _get(http, url, "/v1/spend?customer=acme"))["cost"] == "15.00"
            assert (await _get(http, url, "/v1/spend?customer=nobody"))["cost"] == "0"
            # Without one running session's own records (its agent adds its running total): $15 - 300 x $0.01.
            assert (await _get(http, url, "/v1/spend?customer=acme&exclude_session=d1"))["cost"] == "12.00"
            assert (await _get(http, url, "/v1/spend?customer=acme&exclude_session=d9"))["cost"] == "15.00"

            # The sweeper (every 50 ms here) logs each level once.
            await asyncio.sleep(0.5)

        warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quota ")]
        assert sorted(w.split(":")[1].split(" of ")[0].strip() for w in warned) == sorted(
            ["agent_session", "data_transfer", "inference_credits", "phone_number"]
        ), warned
        assert any(w.startswith("quota at 80 %: data_transfer") for w in warned)
        assert any(w.startswith("quota exhausted: agent_session") for w in warned)

    with caplog.at_level(logging.WARNING, logger="livekit_metering.collector"):
        asyncio.run(main())


def test_bad_quota_and_forecast_queries_are_refused() -> None:
    async def main() -> None:
        async with run_collector(clock=lambda: NOW) as url, aiohttp.ClientSession() as http:
            for query, words in [
                ("/v1/quotas?month=2026-13", "must look like 2026-11"),
                ("/v1/forecast?month=2027-01", "has not begun"),
                ("/v1/forecast?plan=gold", "is not one of"),
                ("/v1/forecast?days=0", "from 1 to 31"),
                ("/v1/quotas?days=311", "from 1 to 31"),
                ("/v1/spend?customer=" + "x" * 300, "at most 256"),
            ]:
                async with http.get(f"{url}{query}", headers={"Authorization": sign()}) as resp:
                    assert resp.status == 400, query
                    assert words in (await resp.json())["error"], query
            async with http.get(f"{url}/v1/quotas") as resp:
                assert resp.status == 401

    asyncio.run(main())


# ---- the run-rate window's edges, on plain rows ------------------------------------------------------


def _row(day: str, resource: Resource, unit: Unit, billable: int, **kw: Any) -> UsageRow:
    return UsageRow(
        key=resource.value,
        resource=resource,
        unit=unit,
        model="",
        provider="",
        billable=billable,
        raw=billable,
        records=1,
        day=day,
        **kw,
    )


def test_early_in_the_month_the_window_reaches_into_the_last_one() -> None:
    # 2 December, 06:00: the window is 25 November 00:00 to now (7.25 days); November's usage counts
    # for the rate only, December's for the month too.
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    rows = [_row(f"2026-11-{d}", Resource.AGENT_SESSION, Unit.MINUTE, 290 * MIN) for d in range(25, 31)]
    rows += [_row("2026-12-01", Resource.AGENT_SESSION, Unit.MINUTE, 290 * MIN)]
    rows += [_row("2026-12-02", Resource.AGENT_SESSION, Unit.MINUTE, 725 * MIN)]
    rows += [_row("2026-12-01", Resource.PHONE_NUMBER, Unit.NUMBER_MONTH, 2)]  # rented per month: no rate
    usage = month_usage(rows, window_of("2026-12", now))
    assert usage.window.since == datetime(2026, 11, 25, tzinfo=UTC)
    (agent,) = [q for q in month_quotas(Pricer.bundled().book, "ship", usage) if q.name == "agent_session"]
    assert agent.used == Decimal(290 + 725)
    # (7 x 290 + 725) / 7.25 = 380 a day.
    assert agent.per_day == Decimal(380)
    # 29.75 days left x 380 = 11,305 more: 12,320 at month end, 7,320 past Ship's 5,000: $73.20; one
    # phone number past the one included: $1.00; the fee $50.
    doc = forecast_json(Pricer.bundled().book, "ship", usage)
    assert doc["days_left"] == "29.75" and Decimal(doc["total"]) == Decimal("124.20")


def test_a_new_project_has_a_rate_over_its_own_days_and_a_past_month_none_left() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    window = window_of("2026-11", now, first_day=date(2026, 11, 19))
    assert window.since == datetime(2026, 11, 19, tzinfo=UTC) and window.rate_days == Decimal("1.5")
    assert window.per_day(Decimal(30_000)) == Decimal(20_000)
    past = window_of("2026-10", now)
    assert past.now == datetime(2026, 11, 1, tzinfo=UTC) and past.left_ms == 0
    assert past.since == datetime(2026, 10, 25, tzinfo=UTC)
    october = month_usage([_row("2026-10-31", Resource.AGENT_SESSION, Unit.MINUTE, 6_000 * MIN)], past)
    doc = forecast_json(Pricer.bundled().book, "ship", october)
    assert doc["total"] == doc["month_to_date"]["total"] == "60.00"  # $50 + 1,000 minutes past the quota


def test_report_forecast_from_a_collector_a_store_and_a_records_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``report --forecast``: the same hand-calculated figures whichever source it reads."""
    file = tmp_path / "records.jsonl"
    file.write_text("".join(json.dumps(r.to_json()) + "\n" for r in seeded_month()), encoding="utf-8")
    database = f"sqlite:///{tmp_path}/metering.db"
    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    runner = CliRunner()

    async def from_collector() -> tuple[Any, Any]:
        async with run_collector(database, clock=lambda: NOW) as url, aiohttp.ClientSession() as http:
            await _seed(http, url)
            as_json = await asyncio.to_thread(
                runner.invoke, app, ["report", "--forecast", "--url", url, "--format", "json"]
            )
            as_table = await asyncio.to_thread(runner.invoke, app, ["report", "--forecast", "--url", url])
            return as_json, as_table

    as_json, as_table = asyncio.run(from_collector())
    assert as_json.exit_code == 0, as_json.output
    docs = {
        "collector": json.loads(as_json.output),
        "store": json.loads(run_forecast(path=None, url=None, database=database, now=NOW, fmt="json")),
        "file": json.loads(run_forecast(path=str(file), url=None, database=None, now=NOW, fmt="json")),
    }
    for source, doc in docs.items():
        assert (doc["month"], doc["plan"], doc["method"]) == ("2026-11", "ship", "run-rate"), source
        assert Decimal(doc["month_to_date"]["total"]) == MTD_TOTAL, source
        assert Decimal(doc["total"]) == FORECAST_TOTAL, source
        ends = {(u["resource"], u["provider"]): u["month_end"] for u in doc["usage"]}
        assert ends[("agent_session", "")] == "10800" and ends[("data_transfer", "")] == "330", source

    assert as_table.exit_code == 0, as_table.output
    assert "month to date: $71.75    month end: $137.60" in as_table.output
    assert re.search(r"agent_session\s+-\s+minute\s+6600\s+4200\s+10800", as_table.output), as_table.output
    assert "7.5 days" in as_table.output  # the method is stated

    for args, words in [
        (["--forecast", str(file), "--group-by", "day"], "takes no --group-by"),
        (["--forecast", str(file), "--format", "csv"], "use table or json"),
        (["--forecast", str(tmp_path / "missing.jsonl")], "no records file"),
        (["--forecast", "--database", f"sqlite:///{tmp_path}/none.db"], "no SQLite store"),
    ]:
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
