"""Reports: sessions and costs read from a collector, a store or a JSON-lines file.

Every source yields the same thing, the latest form of each meter record, so grouping and pricing
are one pure function over records (``build_report``) whatever the records came from. The price
book prices each record at list price for the chosen plan; the monthly invoice (plan fees and
included quotas) is the ``invoice`` command's job, not this one's.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote, urlencode

from .money import usd
from .records import UNIT_SIZE, InvalidRecord, MeterRecord, Resource, Unit, parse_utc, rfc3339

if TYPE_CHECKING:
    from .pricing import PriceBook

__all__ = [
    "GROUPS",
    "CollectorSource",
    "FileSource",
    "Report",
    "ReportError",
    "SessionRow",
    "StoreSource",
    "UsageRow",
    "build_report",
    "format_report",
    "parse_time",
]

GroupBy = Literal["day", "agent", "room", "model", "customer", "resource"]
GROUPS: tuple[str, ...] = ("day", "agent", "room", "model", "customer", "resource")
OutputFormat = Literal["table", "json", "csv"]
NONE_KEY = "(none)"

# Progress callback: (records or sessions done, total or None when unknown).
Progress = Callable[[int, "int | None"], None]


class ReportError(Exception):
    """The report cannot be made; the message says what is wrong and what to do."""


# -- time window ----------------------------------------------------------------------------------


def parse_time(value: str, *, end_of_day: bool = False) -> datetime:
    """Parse ``--since``/``--until``: a date (``2026-11-01``) or an RFC 3339 time with an offset.

    A bare date as an upper bound means the end of that day, so ``--until 2026-11-30`` includes the 30th.
    """
    try:
        moment = parse_utc(value)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if end_of_day and _is_date(value):
        return moment + timedelta(days=1)
    return moment


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def _in_window(record: MeterRecord, since: datetime | None, until: datetime | None) -> bool:
    # A usage belongs to the window its start falls in, like a session belongs to the day it started.
    return (since is None or record.start >= since) and (until is None or record.start < until)


# -- sources ----------------------------------------------------------------------------------------


class Source(Protocol):
    """Where records come from. ``records`` yields the latest form of each record in the window."""

    def records(
        self, since: datetime | None, until: datetime | None, progress: Progress | None = None
    ) -> Iterator[MeterRecord]: ...


@dataclass
class FileSource:
    """A JSON-lines file of records, as written by ``FileExporter`` (checkpoints replaced by later figures)."""

    path: Path

    def records(
        self, since: datetime | None, until: datetime | None, progress: Progress | None = None
    ) -> Iterator[MeterRecord]:
        from .export.file import read_records

        if not self.path.is_file():
            raise ReportError(f"no records file at {self.path}: pass the path of a JSON-lines file of meter records")
        try:
            done = 0
            for record in read_records(self.path):
                done += 1
                if progress is not None and done % 500 == 0:
                    progress(done, None)
                if _in_window(record, since, until):
                    yield record
        except InvalidRecord as exc:
            raise ReportError(f"{exc} (fix or remove that line)") from None
        except UnicodeDecodeError:
            raise ReportError(f"{self.path} is not a UTF-8 JSON-lines file of meter records") from None


@dataclass
class CollectorSource:
    """A running collector's query API, signed with the LiveKit API key and secret."""

    url: str
    api_key: str
    api_secret: str
    page_size: int = 1000
    timeout: float = 30.0

    @classmethod
    def from_env(cls, url: str, api_key: str | None = None, api_secret: str | None = None) -> CollectorSource:
        key = api_key or os.environ.get("LIVEKIT_API_KEY", "")
        secret = api_secret or os.environ.get("LIVEKIT_API_SECRET", "")
        if not key or not secret:
            raise ReportError(
                "reading from a collector needs LIVEKIT_API_KEY and LIVEKIT_API_SECRET (the pair the collector "
                "was started with): set both in the environment"
            )
        if not url.startswith(("http://", "https://")):
            raise ReportError(f"the collector URL {url!r} must start with http:// or https://")
        return cls(url.rstrip("/"), key, secret)

    def token(self) -> str:
        from .export.client import sign_body

        return sign_body(None, self.api_key, self.api_secret)

    def records(
        self, since: datetime | None, until: datetime | None, progress: Progress | None = None
    ) -> Iterator[MeterRecord]:
        return iter(asyncio.run(self._fetch(since, until, progress)))

    async def _fetch(
        self, since: datetime | None, until: datetime | None, progress: Progress | None
    ) -> list[MeterRecord]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        out: list[MeterRecord] = []
        async with aiohttp.ClientSession(timeout=timeout) as http:
            sessions = await self._session_ids(http, since, until)
            for done, session_id in enumerate(sessions, 1):
                data = await self._get(http, f"/v1/sessions/{quote(session_id, safe='')}/records")
                for item in data.get("records", []):
                    item = {k: v for k, v in item.items() if k != "cost"}  # the API adds its price; we re-price
                    try:
                        record = MeterRecord.from_json(item)
                    except InvalidRecord as exc:
                        raise ReportError(f"the collector sent a bad record for session {session_id}: {exc}") from None
                    if _in_window(record, since, until):
                        out.append(record)
                if progress is not None:
                    progress(done, len(sessions))
        return out

    async def _session_ids(self, http: Any, since: datetime | None, until: datetime | None) -> list[str]:
        # The API answers at most page_size sessions, newest first: page backwards by start time.
        # A page's oldest start is asked for again (ids deduplicated) so a tie at the boundary is not lost.
        seen: dict[str, None] = {}
        upper = until
        for _ in range(100_000):
            query: dict[str, str] = {"limit": str(self.page_size)}
            if since is not None:
                query["since"] = rfc3339(since)
            if upper is not None:
                query["until"] = rfc3339(upper)
            body = await self._get(http, f"/v1/sessions?{urlencode(query)}")
            page = body.get("sessions")
            if not isinstance(page, list):
                raise ReportError(f"{self.url}/v1/sessions did not answer a session list: is this a collector?")
            fresh = [str(s["session_id"]) for s in page if str(s.get("session_id")) not in seen]
            seen.update(dict.fromkeys(fresh))
            if len(page) < self.page_size or not fresh:
                break
            oldest = min(datetime.fromisoformat(str(s["start"]).replace("Z", "+00:00")) for s in page)
            upper = oldest + timedelta(milliseconds=1)
        return list(seen)

    async def _get(self, http: Any, path: str) -> dict[str, Any]:
        import aiohttp

        try:
            async with http.get(self.url + path, headers={"Authorization": f"Bearer {self.token()}"}) as resp:
                if resp.status == 401:
                    raise ReportError(
                        f"the collector at {self.url} refused the signature: use the LIVEKIT_API_KEY and "
                        "LIVEKIT_API_SECRET it was started with"
                    )
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise ReportError(f"GET {self.url}{path} answered {resp.status}: {text}")
                data: dict[str, Any] = await resp.json()
                return data
        except aiohttp.ClientError as exc:
            raise ReportError(f"cannot reach the collector at {self.url}: {exc}") from None


@dataclass
class StoreSource:
    """A collector's database, read directly with the collector's own store classes.

    The store keeps each project's records apart; ``project`` is the collector's project name
    (``default`` for the key pair given by LIVEKIT_API_KEY/LIVEKIT_API_SECRET).
    """

    database: str
    project: str = "default"
    chunk: int = 200

    def records(
        self, since: datetime | None, until: datetime | None, progress: Progress | None = None
    ) -> Iterator[MeterRecord]:
        if not self.database.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ReportError(
                f"unsupported database URL {self.database!r}: use sqlite:///path/to/file.db or "
                "postgresql://user@host:port/dbname"
            )
        if self.database.startswith("sqlite:"):
            # Opening a missing SQLite file would create an empty store; say the path is wrong instead.
            from .collector.store.base import sqlite_path

            path = Path(sqlite_path(self.database))
            if not path.is_file():
                raise ReportError(f"no SQLite store at {path}: check the path in {self.database!r}")
        return iter(asyncio.run(self._fetch(since, until, progress)))

    async def _fetch(
        self, since: datetime | None, until: datetime | None, progress: Progress | None
    ) -> list[MeterRecord]:
        from .collector.store.base import SessionFilter, open_store

        store = open_store(self.database)
        try:
            await store.open()
        except Exception as exc:
            raise ReportError(f"cannot open the store {self.database!r}: {exc}") from None
        try:
            # Sessions overlapping the window; records are then filtered by their own start.
            flt = SessionFilter(since=since, until=until, limit=1_000_000_000)
            ids = [row.session_id for row in await store.sessions(self.project, flt)]
            records: list[MeterRecord] = []
            for offset in range(0, len(ids), self.chunk):
                part = ids[offset : offset + self.chunk]
                records.extend(
                    r for r in await store.session_records(self.project, part) if _in_window(r, since, until)
                )
                if progress is not None:
                    progress(offset + len(part), len(ids))
            return records
        finally:
            await store.close()


# -- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    key: str
    resource: str
    unit: str
    quantity: Decimal
    cost: Decimal | None  # None when any usage in the row has no price

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "resource": self.resource,
            "unit": self.unit,
            "quantity": _dec(self.quantity),
            "cost": None if self.cost is None else _dec(self.cost),
        }


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    room: str
    agent_name: str
    customer: str
    start: datetime
    end: datetime
    billed_minutes: Decimal
    cost: Decimal
    unpriced: bool
    records: int

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "room": self.room,
            "agent_name": self.agent_name,
            "customer": self.customer,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "billed_minutes": _dec(self.billed_minutes),
            "cost": _dec(self.cost),
            "unpriced": self.unpriced,
            "records": self.records,
        }


@dataclass
class Report:
    """Usage grouped one way (``rows``), or per session when ``group_by`` is None, with the total."""

    plan: str
    group_by: str | None
    rows: list[UsageRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    total: Decimal = Decimal(0)
    unpriced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"plan": self.plan, "group_by": self.group_by}
        if self.group_by is None:
            body["sessions"] = [s.to_json() for s in self.sessions]
        else:
            body["rows"] = [r.to_json() for r in self.rows]
        body["total"] = _dec(self.total)
        body["unpriced"] = self.unpriced
        return body


def _dec(value: Decimal) -> str:
    # Drop trailing zeros a sum of quantities picks up (12.50 -> 12.5) but never use exponent notation.
    text = format(value.normalize(), "f") if value else "0"
    return text


def group_key(record: MeterRecord, group_by: str) -> str:
    if group_by == "day":
        return record.start.date().isoformat()
    if group_by == "agent":
        return record.agent_name or NONE_KEY
    if group_by == "room":
        return record.room or NONE_KEY
    if group_by == "model":
        return record.model or NONE_KEY
    if group_by == "customer":
        return record.customer or NONE_KEY
    if group_by == "resource":
        return record.resource.value
    raise ReportError(f"cannot group by {group_by!r}: use one of {', '.join(GROUPS)}")


def _session_time(record: MeterRecord) -> bool:
    """The agent's own time in the room as LiveKit bills it: agent session minutes when deployed to
    LiveKit Cloud, its own connection minutes when self-hosted on LiveKit Cloud, nothing on your own server."""
    own = record.resource is Resource.AGENT_SESSION or record.meta.get("session_time") is True
    return own and record.provider.strip().lower() in ("", "livekit")


def _minutes(record: MeterRecord) -> Decimal:
    size = UNIT_SIZE[record.unit]
    return record.quantity * size / UNIT_SIZE[Unit.MINUTE]


def build_report(
    records: Iterable[MeterRecord], book: PriceBook, *, plan: str = "ship", group_by: str | None = None
) -> Report:
    """Price every record with ``book`` and group them: by ``group_by``, or per session when it is None."""
    if group_by is not None and group_by not in GROUPS:
        raise ReportError(f"cannot group by {group_by!r}: use one of {', '.join(GROUPS)}")
    report = Report(plan=plan, group_by=group_by)
    unpriced: set[str] = set()
    rows: dict[tuple[str, str, str], tuple[Decimal, Decimal | None]] = {}
    sessions: dict[str, list[tuple[MeterRecord, Decimal | None]]] = {}
    for record in records:
        price = book.price_of(record, plan=plan)
        if price is None:
            unpriced.add(record.model or record.resource.value)
        else:
            report.total += price
        sessions.setdefault(record.session_id, []).append((record, price))
        if group_by is not None:
            key = (group_key(record, group_by), record.resource.value, record.unit.value)
            quantity, cost = rows.get(key, (Decimal(0), Decimal(0)))
            rows[key] = (quantity + record.quantity, None if cost is None or price is None else cost + price)
    report.unpriced = sorted(unpriced)
    if group_by is not None:
        report.rows = [
            UsageRow(key=k, resource=r, unit=u, quantity=q, cost=c) for (k, r, u), (q, c) in sorted(rows.items())
        ]
        return report
    for session_id, items in sessions.items():
        first = items[0][0]
        report.sessions.append(
            SessionRow(
                session_id=session_id,
                room=first.room,
                agent_name=first.agent_name,
                customer=first.customer,
                start=min(r.start for r, _ in items),
                end=max(r.end for r, _ in items),
                billed_minutes=sum((_minutes(r) for r, _ in items if _session_time(r)), Decimal(0)),
                cost=sum((p for _, p in items if p is not None), Decimal(0)),
                unpriced=any(p is None for _, p in items),
                records=len(items),
            )
        )
    report.sessions.sort(key=lambda s: (s.start, s.session_id))
    return report


# -- output -------------------------------------------------------------------------------------------


def quantity_text(quantity: Decimal) -> str:
    text = _dec(quantity)
    whole, _, frac = text.partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


def format_report(report: Report, fmt: str) -> str:
    """Render ``report`` as ``table`` (for a terminal or a text file), ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2) + "\n"
    if fmt == "csv":
        return _csv(report)
    if fmt == "table":
        return _table(report)
    raise ReportError(f"unknown format {fmt!r}: use table, json or csv")


def _csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if report.group_by is None:
        writer.writerow(["session_id", "room", "agent_name", "customer", "start", "end", "billed_minutes", "cost"])
        for s in report.sessions:
            j = s.to_json()
            writer.writerow(
                [j[c] for c in ("session_id", "room", "agent_name", "customer", "start", "end")]
                + [j["billed_minutes"], "" if s.unpriced and not s.cost else j["cost"]]
            )
    else:
        writer.writerow([report.group_by, "resource", "unit", "quantity", "cost"])
        for r in report.rows:
            j = r.to_json()
            writer.writerow([j["key"], j["resource"], j["unit"], j["quantity"], "" if j["cost"] is None else j["cost"]])
    return out.getvalue()


def _table(report: Report) -> str:
    from rich.console import Console
    from rich.table import Table

    if report.group_by is None:
        table = Table(title=f"Sessions (list prices, {report.plan} plan)", title_justify="left")
        for name, justify in (
            ("session", "left"),
            ("started (UTC)", "left"),
            ("room", "left"),
            ("agent", "left"),
            ("customer", "left"),
            ("minutes", "right"),
            ("cost", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for s in report.sessions:
            table.add_row(
                s.session_id,
                s.start.strftime("%Y-%m-%d %H:%M:%S"),
                s.room,
                s.agent_name,
                s.customer,
                quantity_text(s.billed_minutes),
                usd(s.cost) + (" +unpriced" if s.unpriced else ""),
            )
        count = f"{len(report.sessions)} session" + ("" if len(report.sessions) == 1 else "s")
        table.add_section()
        table.add_row(f"[bold]{count}[/]", "", "", "", "", "", f"[bold]{usd(report.total)}[/]")
    else:
        table = Table(title=f"Usage by {report.group_by} (list prices, {report.plan} plan)", title_justify="left")
        table.add_column(report.group_by)
        table.add_column("resource")
        table.add_column("quantity", justify="right")
        table.add_column("unit")
        table.add_column("cost", justify="right")
        previous = None
        for r in report.rows:
            table.add_row(
                "" if r.key == previous else r.key, r.resource, quantity_text(r.quantity), r.unit, usd(r.cost)
            )
            previous = r.key
        table.add_section()
        table.add_row("[bold]total[/]", "", "", "", f"[bold]{usd(report.total)}[/]")
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, force_terminal=False, color_system=None)
    console.print(table)
    if report.unpriced:
        console.print(f"Unpriced (not in the total; add them to a price book): {', '.join(report.unpriced)}")
    return buffer.getvalue()


def with_progress(source: Source, since: datetime | None, until: datetime | None, *, show: bool) -> list[MeterRecord]:
    """Read every record from ``source``, with a progress bar on stderr when ``show`` (a terminal)."""
    if not show:
        return list(source.records(since, until))
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("reading records"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("read", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        return list(source.records(since, until, advance))


def open_source(path: str | None, *, url: str | None, database: str | None, project: str = "default") -> Source:
    """The one source the options name: a records file, ``--url`` or ``--database``.

    With none given, LiveKit's convention: LIVEKIT_METERING_URL (the collector agents ship to),
    else LIVEKIT_METERING_FILE, else the default records file agents write when nothing is set.
    """
    given = [name for name, value in (("RECORDS.jsonl", path), ("--url", url), ("--database", database)) if value]
    if len(given) > 1:
        raise ReportError(
            "give exactly one source: a JSON-lines records file, --url of a collector, or --database of a store"
            f" (got {', '.join(given)})"
        )
    if not given:
        return _source_from_env()
    if url:
        return CollectorSource.from_env(url)
    if database:
        return StoreSource(database, project=project)
    assert path is not None
    return FileSource(Path(path))


def _source_from_env() -> Source:
    from .export.config import default_records_file

    env_url = os.environ.get("LIVEKIT_METERING_URL")
    if env_url:
        return CollectorSource.from_env(env_url)
    env_file = os.environ.get("LIVEKIT_METERING_FILE")
    if env_file:
        return FileSource(Path(env_file))
    default = default_records_file()
    if default.is_file():
        return FileSource(default)
    raise ReportError(
        "no source: give a JSON-lines records file, --url of a collector or --database of a store "
        f"(or set LIVEKIT_METERING_URL or LIVEKIT_METERING_FILE; the default records file {default} does not exist)"
    )


def run_report(
    *,
    path: str | None,
    url: str | None,
    database: str | None,
    group_by: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    plan: str,
    prices: str | None,
    output: str | None,
    progress: bool,
    project: str = "default",
) -> str:
    """The ``report`` command: read, price, group and render; write to ``output`` or return the text."""
    from .pricing import PriceBook

    if fmt not in ("table", "json", "csv"):
        raise ReportError(f"unknown format {fmt!r}: use table, json or csv")
    if group_by is not None and group_by not in GROUPS:
        raise ReportError(f"cannot group by {group_by!r}: use one of {', '.join(GROUPS)}")
    start = parse_time(since) if since else None
    end = parse_time(until, end_of_day=True) if until else None
    if start is not None and end is not None and end <= start:
        raise ReportError(f"--until ({until}) must be after --since ({since})")
    source = open_source(path, url=url, database=database, project=project)
    book = PriceBook.load(prices) if prices else PriceBook.bundled()
    records = with_progress(source, start, end, show=progress)
    text = format_report(build_report(records, book, plan=plan, group_by=group_by), fmt)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    return text
