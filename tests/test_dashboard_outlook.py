"""The dashboard's plan quotas and month-end forecast, in a real headless Chromium against a real
collector holding the seeded month of ``test_quotas_forecast``: the page shows the API's figures."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from collector_helpers import body_of, post
from test_dashboard import CHROMIUM_ARGS, usd
from test_quotas_forecast import FORECAST_TOTAL, NOW, seeded_month

from livekit_metering.collector.testing import run_collector, sign

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOT = Path(os.environ.get("LIVEKIT_METERING_OUTLOOK_SCREENSHOT") or Path(tempfile.gettempdir()) / "outlook.png")


def quantity(text: str, unit: str) -> str:
    """What the page shows for a quota amount (mirrors app.js)."""
    if unit == "usd":
        return usd(text)
    whole, _, frac = text.partition(".")
    shown = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return f"{shown} " + {"gb": "GB", "number_month": "number-months", "minute": "minutes", "event": "events"}[unit]


async def api(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(f"{url}{path}", headers={"Authorization": sign()}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_quotas_and_forecast_on_the_dashboard(chromium_path: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async with (
        run_collector(tmp_path / "c.db", clock=lambda: NOW) as url,
        aiohttp.ClientSession() as http,
    ):
        assert (await post(http, url, body_of(seeded_month())))[0] == 200
        quotas = await api(http, url, "/v1/quotas?month=2026-11&plan=ship")
        forecast = await api(http, url, "/v1/forecast?month=2026-11&plan=ship")
        assert Decimal(forecast["total"]) == FORECAST_TOTAL
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on(
                    "console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None
                )
                token = sign(ttl=timedelta(minutes=5))
                await page.goto(f"{url}/dashboard/?month=2026-11&plan=ship#token={token}")
                await page.wait_for_selector("body[data-loaded]", timeout=15_000)
                text = page.locator

                # The forecast, next to the invoice preview: its total, each line beside the preview's, the method.
                assert await text("#kpi-forecast").inner_text() == usd(forecast["total"]) == "$137.60"
                assert await text("#forecast-total").inner_text() == "$137.60"
                assert await text("#invoice-total").inner_text() == "$71.75"
                for line in forecast["invoice"]["lines"]:
                    model = line["model"]
                    cell = text(
                        f'#invoice tr[data-resource="{line["resource"]}"][data-model="{model}"] [data-field="forecast"]'
                    )
                    assert (await cell.inner_text()).split("\n")[0] == usd(line["amount"]), line
                agent = text('#invoice tr[data-resource="agent_session"] [data-field="forecast"] .sub')
                assert await agent.inner_text() == "10,800 minutes"
                method = await text("#forecast-method").inner_text()
                assert method == f"Month-end forecast, 10.5 days left: {forecast['method_text']}"

                # Each quota as the API gives it.
                assert await text("#quota-table tbody tr").count() == len(quotas["quotas"])
                for q in quotas["quotas"]:
                    row = text(f'#quota-table tr[data-quota="{q["quota"]}"]')
                    assert await row.get_attribute("data-level") == q["level"]
                    used = await row.locator('[data-field="used"]').inner_text()
                    assert used == f"{quantity(q['used'], q['unit'])} · {q['percent']} %"
                    assert await row.locator('[data-field="included"]').inner_text() == quantity(
                        q["included"], q["unit"]
                    )
                    assert await row.locator('[data-field="remaining"]').inner_text() == quantity(
                        q["remaining"], q["unit"]
                    )
                runs_out = {
                    q: await text(f'#quota-table tr[data-quota="{q}"] [data-field="runs-out"]').inner_text()
                    for q in ("agent_session", "connection", "data_transfer", "phone_number", "sip_inbound")
                }
                assert runs_out == {
                    "agent_session": "used up on 16 Nov",
                    "connection": "at this rate on 28 Nov",
                    "data_transfer": "at this rate on 23 Nov",
                    "phone_number": "used up on 1 Nov",
                    "sip_inbound": "not this month",
                }
                await page.screenshot(path=str(SCREENSHOT), full_page=True)

                # Build: hard caps, nothing due.
                await page.select_option("#plan", "build")
                await page.wait_for_selector('body[data-loaded$=":build"]', timeout=10_000)
                assert await text("#kpi-forecast").inner_text() == "Nothing due"
                assert await text('#quota-table tr[data-quota="agent_session"] .badge.hard-cap').count() == 1
                agent = text('#quota-table tr[data-quota="agent_session"] [data-field="runs-out"]')
                assert await agent.inner_text() == "used up on 4 Nov: LiveKit refuses more"

                # A month that has not begun: the page says so in the forecast card and still loads.
                await page.fill("#month", "2027-02")
                await page.wait_for_selector('body[data-loaded^="2027-02"]', timeout=10_000)
                assert "has not begun" in await text("#forecast-method").inner_text()
                assert await text("#kpi-forecast").inner_text() == "–"
                assert not errors, errors
            finally:
                await browser.close()
