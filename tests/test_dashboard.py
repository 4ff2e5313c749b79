"""The dashboard in a real headless Chromium against a real collector with data.

Every figure the page shows is checked against the query API's own answer, the drill-down into a
session is exercised, and a screenshot is saved to the temporary directory, or to the path in
``LIVEKIT_METERING_SCREENSHOT`` (``LIVEKIT_METERING_SCREENSHOT=docs/dashboard.png`` refreshes the
README's picture).
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from usage_samples import spread_sessions

from livekit_metering import MeterRecord
from livekit_metering.collector.testing import batch_body, run_collector, sign, signed_headers

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(
    os.environ.get("LIVEKIT_METERING_SCREENSHOT") or Path(tempfile.gettempdir()) / "livekit-metering-dashboard.png"
)


def usd(text: str | None) -> str:
    """What the page shows for a decimal string: every digit, at least cents (mirrors app.js)."""
    if text is None:
        return "unpriced"
    d = Decimal(text)
    whole, _, frac = format(abs(d), "f").partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{'−' if d < 0 else ''}${int(whole):,}.{frac}"


def total(values: list[str | None]) -> str:
    return format(sum((Decimal(v) for v in values if v is not None), Decimal(0)).normalize(), "f")


def data_month(now: datetime) -> tuple[str, datetime, datetime]:
    """The month to show and a window of it in the past that the collector accepts (35 days back)."""
    month = now if now.day > 3 else (now.replace(day=1) - timedelta(days=1))
    first = datetime(month.year, month.month, 1, tzinfo=timezone.utc)
    after = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=timezone.utc)
    lo = max(first, now - timedelta(days=34))
    hi = min(after, now - timedelta(hours=1))
    return f"{first.year:04d}-{first.month:02d}", lo, hi


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[tuple[str, str, list[MeterRecord]]]:
    month, lo, hi = data_month(datetime.now(timezone.utc))
    records = spread_sessions(lo, hi, 36)
    async with run_collector(tmp_path / "collector.db") as url, aiohttp.ClientSession() as http:
        body = batch_body(records)
        async with http.post(f"{url}/v1/records", data=body, headers=signed_headers(body)) as resp:
            assert resp.status == 200
            assert {r["status"] for r in (await resp.json())["results"]} == {"accepted"}
        yield url, month, records


async def api(url: str, path: str, **query: str) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}{path}", params=query, headers={"Authorization": sign()}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


def per_key(rows: list[dict[str, Any]]) -> dict[str, tuple[str, bool]]:
    """Usage rows summed per key, as the page shows them: (exact total, whether part is unpriced)."""
    costs: dict[str, list[str | None]] = defaultdict(list)
    for row in rows:
        costs[row["key"]].append(row["cost"])
    return {k: (total(v), any(c is None for c in v)) for k, v in costs.items()}


async def test_dashboard_shows_the_api_figures(
    collector: tuple[str, str, list[MeterRecord]], chromium_path: str
) -> None:
    from playwright.async_api import async_playwright

    url, month, records = collector
    first = f"{month}-01T00:00:00Z"
    year, mon = map(int, month.split("-"))
    after = f"{year + mon // 12:04d}-{mon % 12 + 1:02d}-01T00:00:00Z"
    by_day = await api(url, "/v1/usage", group_by="day", since=first, until=after)
    by_resource = await api(url, "/v1/usage", group_by="resource", since=first, until=after)
    by_model = await api(url, "/v1/usage", group_by="model", since=first, until=after)
    by_customer = await api(url, "/v1/usage", group_by="customer", since=first, until=after)
    by_agent = await api(url, "/v1/usage", group_by="agent", since=first, until=after)
    sessions = (await api(url, "/v1/sessions", since=first, until=after, limit="500"))["sessions"]
    invoices = {plan: await api(url, "/v1/invoice", month=month, plan=plan) for plan in ("ship", "build")}
    assert len(sessions) == len({r.session_id for r in records}) == 36
    assert Decimal(by_day["total"]) > 0

    token = sign(ttl=timedelta(minutes=5))
    requests: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
            page.on("request", lambda req: requests.append(req.url))
            # The link's token rides in the #fragment: no server, log or Referer ever sees it.
            await page.goto(f"{url}/dashboard/?month={month}&plan=ship#token={token}")
            await page.wait_for_selector("body[data-loaded]", timeout=15_000)
            text = page.locator

            # Signed in with an HttpOnly cookie; the token is gone from the address bar and no request carried it.
            assert "token" not in page.url
            assert await page.evaluate("document.cookie") == ""
            [cookie] = await page.context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "livekit_metering_session",
                True,
                "Strict",
            )
            assert not [r for r in requests if "token" in r]

            # Headline figures.
            assert await text("#kpi-usage").inner_text() == usd(by_day["total"])
            assert await text("#kpi-sessions").inner_text() == str(len(sessions))
            minutes = Decimal(total([s["billed_minutes"] for s in sessions]))
            assert await text("#kpi-minutes").inner_text() == f"{minutes:,}"
            assert await text("#kpi-invoice").inner_text() == usd(invoices["ship"].get("total"))
            assert "acme/house-llm" in await text("#unpriced").inner_text()

            # Cost by day: one bar group per day of the month, each carrying the API's exact day total.
            days = per_key(by_day["rows"])
            groups = text("#chart-day g.day")
            assert await groups.count() in (28, 29, 30, 31)
            for day, (cost, _) in days.items():
                shown = await text(f'#chart-day g.day[data-day="{day}"]').get_attribute("data-total")
                assert Decimal(shown or "x") == Decimal(cost), day

            # Cost by resource, model, customer and agent.
            bars = (
                ("#by-resource", by_resource),
                ("#by-model", by_model),
                ("#by-customer", by_customer),
                ("#by-agent", by_agent),
            )
            for selector, usage in bars:
                expected = per_key(usage["rows"])
                assert await text(f"{selector} .bar").count() == len(expected)
                for key, (cost, unpriced) in expected.items():
                    amount = await text(f'{selector} .bar[data-key="{key}"] .amount').inner_text()
                    costs = [r["cost"] for r in usage["rows"] if r["key"] == key and r["cost"] is not None]
                    want = usd(cost) if not unpriced else (f"{usd(cost)} + unpriced" if costs else "unpriced")
                    assert amount == want, (selector, key)

            # Sessions list: every session with its minutes and cost as the API gives them.
            rows = text("#sessions tbody tr")
            assert await rows.count() == len(sessions)
            for s in sessions:
                row = text(f'#sessions tbody tr[data-session="{s["session_id"]}"]')
                assert await row.locator('[data-field="cost"]').inner_text() == usd(s["cost"])
                assert await row.locator('[data-field="minutes"]').inner_text() == format(
                    Decimal(s["billed_minutes"]), ","
                )
            assert await text("#sessions .badge.open").count() == 1

            # The invoice preview, then another plan.
            amounts = await text('#invoice tbody [data-field="amount"]').all_inner_texts()
            assert amounts == [usd(line["amount"]) for line in invoices["ship"]["lines"]]
            assert "unpriced" in amounts  # the unknown model's lines, never $0
            await page.select_option("#plan", "build")
            await page.wait_for_selector('body[data-loaded$=":build"]', timeout=10_000)
            build = invoices["build"]
            due = "Nothing due" if build.get("nothing_due") else usd(build.get("total"))
            assert await text("#invoice-total").inner_text() == due
            assert await text('#invoice tbody [data-field="amount"]').all_inner_texts() == [
                usd(line["amount"]) for line in build["lines"]
            ]
            assert "plan=build" in page.url  # a reload keeps the chosen plan
            await page.select_option("#plan", "ship")
            await page.wait_for_selector('body[data-loaded$=":ship"]', timeout=10_000)

            # Drill down into the costliest of the newest sessions (the top of the list).
            priced = [s for s in sessions[:8] if s["cost"] is not None]
            top = max(priced, key=lambda s: Decimal(s["cost"]))
            detail = (await api(url, f"/v1/sessions/{top['session_id']}/records"))["records"]
            await text(f'#sessions tbody tr[data-session="{top["session_id"]}"]').click()
            await page.wait_for_selector("#session-records tbody tr[data-record]", timeout=10_000)
            assert await text("#detail-id").inner_text() == top["session_id"]
            shown = await text('#session-records tbody [data-field="cost"]').all_inner_texts()
            assert sorted(shown) == sorted(usd(r["cost"]) for r in detail)
            assert await text("#detail-total").inner_text() == usd(top["cost"])
            assert usd(total([r["cost"] for r in detail])) == usd(top["cost"])

            await page.evaluate("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert not errors, errors

            # A wrong token, or none (a new browser context, without the cookie): the page says what is
            # wrong instead of showing empty figures.
            for link in (f"{url}/dashboard/?month={month}#token=not-a-jwt", f"{url}/dashboard/?month={month}"):
                bad = await browser.new_page()
                await bad.goto(link)
                await bad.wait_for_selector(".status.error", timeout=10_000)
                status = await bad.locator("#status").inner_text()
                assert "401" in status and "dashboard link" in status, status
        finally:
            await browser.close()

    # Offline: the page loaded nothing but the collector's own files and API.
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), requests
