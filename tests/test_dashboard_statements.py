"""The dashboard's Statements section, in a real headless Chromium against a real collector that issued
invoices: it lists them as the API does, and its download links save the API's documents byte for byte."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from collector_helpers import body_of, post
from test_dashboard import CHROMIUM_ARGS, usd
from test_invoices_issued import KEYS, LATE, OCTOBER, SETTINGS, Clock, api, fetch, settle

from livekit_metering.collector.testing import run_collector, sign

pytestmark = [pytest.mark.browser, pytest.mark.slow]
UTC = timezone.utc


async def read(path: Path) -> bytes:
    return await asyncio.to_thread(Path(path).read_bytes)


async def test_statements_list_the_issued_invoices_and_download_them(chromium_path: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    clock = Clock(datetime(2026, 10, 20, tzinfo=UTC))
    options = {"settings": SETTINGS, "clock": clock, "sweep_every": timedelta(milliseconds=50)}
    async with (
        aiohttp.ClientSession() as http,
        run_collector(tmp_path / "c.db", KEYS, invoice_grace=timedelta(hours=24), **options) as url,
    ):
        assert (await post(http, url, body_of(OCTOBER)))[0] == 200
        clock.now = datetime(2026, 11, 2, 1, tzinfo=UTC)
        await settle(http, url, 1)
        clock.now = datetime(2026, 11, 5, tzinfo=UTC)
        assert (await post(http, url, body_of([LATE])))[0] == 200
        clock.now = datetime(2026, 12, 2, 1, tzinfo=UTC)
        listing = await settle(http, url, 2)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
                token = sign(ttl=timedelta(minutes=5))
                await page.goto(f"{url}/dashboard/?month=2026-10&plan=ship#token={token}")
                await page.wait_for_selector("body[data-loaded]", timeout=15_000)
                assert await page.locator("#statements h2").inner_text() != ""
                assert await page.locator("#invoices-list").is_hidden()
                await page.click("#view-invoices")
                await page.wait_for_selector("body[data-invoices]", timeout=10_000)

                rows = page.locator("#invoices tbody tr[data-number]")
                assert await rows.count() == len(listing["invoices"]) == 2
                for inv in listing["invoices"]:
                    row = page.locator(f'#invoices tr[data-number="{inv["number"]}"]')
                    assert await row.locator('[data-field="total"]').inner_text() == usd(inv["total"])
                    cells = await row.locator("td").all_inner_texts()
                    assert cells[:5] == [inv["number"], inv["month"], "ship", inv["issued"][:19].replace("T", " "),
                                         str(inv["adjustments"])]  # fmt: skip
                    shown = await row.locator(".statement").evaluate_all("els => els.map(e => e.dataset.customer)")
                    assert shown == inv["statements"]

                # Each download link saves the API's document, byte for byte.
                for number, fmt in (
                    ("INV-202610-0001", "json"),
                    ("INV-202610-0001", "csv"),
                    ("INV-202611-0002", "html"),
                ):
                    async with page.expect_download() as info:
                        await page.click(f'#invoices tr[data-number="{number}"] td.downloads [data-format="{fmt}"]')
                    saved = await info.value
                    assert saved.suggested_filename == f"invoice-{number}.{fmt}"
                    status, body = await fetch(http, url, f"/v1/invoices/{number}", format=fmt)
                    assert status == 200 and await read(await saved.path()) == body, (number, fmt)
                statement = page.locator(
                    '#invoices tr[data-number="INV-202611-0002"] .statement[data-customer="acme-bikes"]'
                )
                async with page.expect_download() as info:
                    await statement.locator('[data-format="json"]').click()
                saved = json.loads(await read(await (await info.value).path()))
                assert saved == await api(http, url, "/v1/invoices/INV-202611-0002/statements/acme-bikes")
                assert saved["adjustments"][0]["month"] == "2026-10"
                assert not errors, errors
            finally:
                await browser.close()
