"""``livekit-metering report --forecast``: the month-end forecast of a collector, a store or a records file.

The figures are always the collector's own (``collector/forecast.py``): a collector is asked
(``GET /v1/forecast``, priced with its price book), a store is read with the collector's store
classes, and a records file is loaded into a scratch SQLite store first, so the three agree.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .records import MeterRecord
from .report import CollectorSource, ReportError, StoreSource, open_source

__all__ = ["run_forecast"]


def run_forecast(
    *,
    path: str | None,
    url: str | None,
    database: str | None,
    project: str = "default",
    plan: str = "ship",
    prices: str | None = None,
    fmt: str = "table",
    now: datetime | None = None,
) -> str:
    """The forecast of this month (as of ``now``, the present by default) as a table or JSON."""
    if fmt not in ("table", "json"):
        raise ReportError(f"unknown format {fmt!r} for --forecast: use table or json")
    source = open_source(path, url=url, database=database, project=project)
    if isinstance(source, CollectorSource):
        if prices:
            raise ReportError("--prices does not apply to a collector: it forecasts with its own price book")
        doc = asyncio.run(_ask(source, plan))
    elif isinstance(source, StoreSource):
        from .collector.store.base import sqlite_path

        database = source.database
        if database.startswith("sqlite:") and not Path(sqlite_path(database)).is_file():
            raise ReportError(f"no SQLite store at {sqlite_path(database)}: check the path in {database!r}")
        doc = asyncio.run(_of_store(database, source.project, plan, prices, now))
    else:
        records = _read(Path(getattr(source, "path")))  # noqa: B009
        with tempfile.TemporaryDirectory(prefix="forecast-") as scratch:
            doc = asyncio.run(_of_file(records, f"sqlite:///{scratch}/metering.db", plan, prices, now))
    return json.dumps(doc, indent=2) + "\n" if fmt == "json" else _table(doc)


async def _ask(source: CollectorSource, plan: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=source.timeout)) as http:
        return await source._get(http, f"/v1/forecast?{urlencode({'plan': plan})}")


async def _of_store(database: str, project: str, plan: str, prices: str | None, now: datetime | None) -> dict[str, Any]:
    from .collector.outlook import Outlook
    from .collector.pricing import Pricer
    from .collector.queries import BadQuery
    from .collector.store.base import open_store

    at = now or datetime.now(timezone.utc)
    store = open_store(database)
    try:
        await store.open()
    except Exception as exc:
        raise ReportError(f"cannot open the store {database!r}: {exc}") from None
    try:
        outlook = Outlook(store, Pricer.bundled(prices), lambda _: plan, lambda: at)
        return await outlook.forecast(project, {"plan": plan})
    except BadQuery as exc:
        raise ReportError(str(exc)) from None
    finally:
        await store.close()


def _read(path: Path) -> list[MeterRecord]:
    from .export.file import read_records
    from .records import InvalidRecord

    if not path.is_file():
        raise ReportError(f"no records file at {path}: pass the path of a JSON-lines file of meter records")
    try:
        return read_records(path)
    except InvalidRecord as exc:
        raise ReportError(f"{exc} (fix or remove that line)") from None
    except (UnicodeDecodeError, ValueError):
        raise ReportError(f"{path} is not a UTF-8 JSON-lines file of meter records") from None


async def _of_file(
    records: list[MeterRecord], database: str, plan: str, prices: str | None, now: datetime | None
) -> dict[str, Any]:
    """The file's records in a scratch store, forecast as a collector would."""
    from .collector.store.base import Stored, open_store

    async with open_store(database) as store:
        await store.ingest("default", [Stored(record) for record in records])
    return await _of_store(database, "default", plan, prices, now)


def _table(doc: dict[str, Any]) -> str:
    mtd = doc["month_to_date"]["total"]
    lines = [
        f"Forecast for {doc['month']} on the {doc['plan']} plan, as of {doc['as_of']}",
        f"  month to date: ${mtd}    month end: ${doc['total']}" + ("  (nothing due)" if doc["nothing_due"] else ""),
        f"  method: {doc['method_text']}",
        "",
    ]
    head = ("resource", "model", "unit", "month to date", "rest of month", "month end")
    rows = [head] + [
        (
            u["resource"] + (f" ({u['provider']})" if u["provider"] else ""),
            u["model"] or "-",
            u["unit"],
            u["month_to_date"],
            u["rest_of_month"],
            u["month_end"],
        )
        for u in doc["usage"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        left = [cell.ljust(w) for cell, w in zip(row[:3], widths[:3], strict=True)]
        right = [cell.rjust(w) for cell, w in zip(row[3:], widths[3:], strict=True)]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines) + "\n"
