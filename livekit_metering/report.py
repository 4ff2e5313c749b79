"""Reports: usage grouped and priced, or one row per session, from a records file, a store or a collector.

Every source answers in the collector's own terms, so the same records give the same figures from
each: usage summed per group key, price key and day, priced by ``pricing.usage`` (as the collector's
``/v1/usage`` prices it); sessions with the cost of their summed usage (as ``/v1/sessions``). A
cost is the priced part plus the names of any unpriced usage, never null and never $0 for what
is unknown.

A records file is streamed: each line checked as the collector checks a record (bad lines skipped
and counted, or fatal with ``strict``), the latest form of each usage kept, sums and sessions built
with memory bounded by spilling to temporary files (``scan``). A store is asked for its daily
roll-ups and sessions; a collector for ``/v1/usage`` and ``/v1/sessions``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TextIO
from urllib.parse import urlencode

from .money import usd
from .records import UNIT_SIZE, InvalidRecord, Unit, parse_utc, rfc3339
from .scan import (
    AGENT,
    BILLABLE,
    CUSTOMER,
    END_MS,
    KEY,
    ROOM,
    SESSION,
    SESSION_TIME,
    SPILL_LIMIT,
    START_MS,
    RecordsFile,
    Skipped,
    StrKey,
    Usage,
    gc_paused,
    latest,
    merged,
    partitioned,
    progress_bar,
    spill_partitions,
)
from .table import SECTION, Column, render_table

if TYPE_CHECKING:
    from .pricing import Costing, PriceBook, PriceKey, UsageLine

__all__ = [
    "GROUPS",
    "CollectorSource",
    "FileSource",
    "ReportError",
    "SessionLine",
    "Source",
    "StoreSource",
    "Summary",
    "Window",
    "open_source",
    "parse_time",
    "run_report",
    "write_report",
]

GROUPS: tuple[str, ...] = ("day", "agent", "room", "model", "customer", "resource")
FORMATS = ("table", "json", "csv")
NONE_KEY = "(none)"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MINUTE_MS = UNIT_SIZE[Unit.MINUTE]
_TABLE_ROWS = 2_000  # rows per rendered table: a long report is several tables, never one held whole
_SUMS_LIMIT = 20_000  # group sums held in memory before spilling

# Progress callback: (done, total or None when unknown).
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


@dataclass(frozen=True)
class Window:
    """Usage whose start is in [since, until); a session belongs to the window its start falls in."""

    since: datetime | None = None
    until: datetime | None = None

    def days(self) -> tuple[date, date]:
        """[first, after) as UTC days, for sources that sum per day; a time of day cannot be honoured."""
        for name, moment in (("--since", self.since), ("--until", self.until)):
            if moment is not None and moment != datetime.combine(moment.date(), datetime.min.time(), timezone.utc):
                raise ReportError(
                    f"{name} {rfc3339(moment)} is not a whole UTC day: a collector sums usage per day, "
                    "so give --since and --until as dates (YYYY-MM-DD)"
                )
        first = self.since.date() if self.since is not None else date(1970, 1, 1)
        after = self.until.date() if self.until is not None else date(9999, 12, 31)
        return first, after


# -- what a report is made of ----------------------------------------------------------------------------


class SessionLine(NamedTuple):
    """One session: where, when, billed agent minutes, and its cost (priced part, unpriced names)."""

    session_id: str
    room: str
    agent_name: str
    customer: str
    start_ms: int
    end_ms: int
    billed_minutes: Decimal
    cost: Decimal
    unpriced: tuple[str, ...]
    records: int

    @property
    def start(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self.start_ms)

    @property
    def end(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self.end_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "room": self.room,
            "agent_name": self.agent_name,
            "customer": self.customer,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "billed_minutes": _dec(self.billed_minutes),
            "cost": format(self.cost, "f"),
            "unpriced": list(self.unpriced),
            "records": self.records,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionLine:
        return cls(
            str(data["session_id"]),
            str(data.get("room") or ""),
            str(data.get("agent_name") or ""),
            str(data.get("customer") or ""),
            _ms(data["start"]),
            _ms(data["end"]),
            Decimal(str(data["billed_minutes"])),
            Decimal(str(data["cost"])),
            tuple(str(u) for u in data.get("unpriced") or ()),
            int(data["records"]),
        )


def _ms(text: str) -> int:
    return (parse_utc(text) - _EPOCH) // timedelta(milliseconds=1)


def _dec(value: Decimal) -> str:
    # Drop the trailing zeros a sum picks up (12.50 -> 12.5), never exponent notation.
    return format(value.normalize(), "f") if value else "0"


def _session_order(line: SessionLine) -> tuple[int, str]:
    return line.start_ms, line.session_id


def _usage_order(line: UsageLine) -> tuple[str, str, str]:
    return line.key, line.resource, line.unit


class Source(Protocol):
    """Where a report comes from. Both methods stream their lines in report order."""

    @property
    def skipped(self) -> Skipped | None:
        """Bad lines of a records file (None for other sources)."""
        ...

    def usage(self, group_by: str, window: Window, costing: Costing, progress: Progress | None) -> Iterator[UsageLine]:
        """Usage lines per (group key, resource, unit), sorted by them."""
        ...

    def sessions(self, window: Window, costing: Costing, progress: Progress | None) -> Iterator[SessionLine]:
        """One line per session, by start time."""
        ...


# -- a records file ---------------------------------------------------------------------------------------


class FileSource:
    """A JSON-lines file of records (as ``FileExporter`` writes it), streamed."""

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = False, limit: int | None = None) -> None:
        self.file = RecordsFile(path, strict=strict)
        self.limit = limit  # items held in memory before spilling (tests make it small)

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def skipped(self) -> Skipped | None:
        return self.file.skipped

    def _spill(self) -> dict[str, int]:
        if not self.path.is_file():
            raise ReportError(f"no records file at {self.path}: pass the path of a JSON-lines file of meter records")
        limit = self.limit or SPILL_LIMIT
        return {"limit": limit, "partitions": spill_partitions(self.file.size, limit)}

    def _latest(self, window: Window, progress: Progress | None, *, detail: bool) -> Iterator[Usage]:
        try:
            usages = self.file.usages(window.since, window.until, progress, detail=detail)
            yield from latest(usages, **self._spill())
        except InvalidRecord as exc:
            raise ReportError(f"{exc} (fix or remove that line; without --strict it is skipped and counted)") from None
        except OSError as exc:
            raise ReportError(f"cannot read {self.path}: {exc}") from None

    def usage(self, group_by: str, window: Window, costing: Costing, progress: Progress | None) -> Iterator[UsageLine]:
        from .pricing import price_usage

        group = _GROUP_OF[group_by]
        # Sums are few per day, agent or model, but one room per call makes many: fewer held at once,
        # so that each partition's priced lines stay small.
        spill = self._spill()
        spill["limit"] = min(spill["limit"], _SUMS_LIMIT)

        def partial_sums() -> Iterator[tuple[tuple[str, StrKey], int]]:
            # Summed in memory; a very long list of keys (e.g. one room per call) is handed on in parts.
            sums: dict[tuple[str, StrKey], int] = {}
            for u in self._latest(window, progress, detail=group_by in ("agent", "room", "customer")):
                key = (group(u), u[KEY])
                sums[key] = sums.get(key, 0) + u[BILLABLE]
                if len(sums) >= spill["limit"]:
                    yield from sums.items()
                    sums.clear()
            yield from sums.items()

        def priced(part: list[tuple[tuple[str, StrKey], int]]) -> list[UsageLine]:
            sums: dict[tuple[str, StrKey], int] = {}
            for key, billable in part:
                sums[key] = sums.get(key, 0) + billable
            return price_usage(((g, k, b) for (g, k), b in sums.items()), costing, group_by).lines

        parts = partitioned(partial_sums(), lambda item: item[0][0], **spill)
        return merged((priced(part) for part in parts), _usage_order)

    def sessions(self, window: Window, costing: Costing, progress: Progress | None) -> Iterator[SessionLine]:
        def lines(part: list[Usage]) -> list[SessionLine]:
            by_session: dict[str, list[Usage]] = {}
            for u in part:
                by_session.setdefault(u[SESSION], []).append(u)
            out = [_session_line(items, costing) for items in by_session.values()]
            out.sort(key=_session_order)
            return out

        # The second spill holds at most half as much: the first one's partition is in memory meanwhile.
        spill = self._spill()
        spill["limit"] //= 2
        parts = partitioned(self._latest(window, progress, detail=True), lambda u: u[SESSION], **spill)
        return merged((lines(part) for part in parts), _session_order)


# Each group's key in a Usage tuple: a field, or a part of the price key.
_GROUP_OF: dict[str, Callable[[Usage], str]] = {
    "day": lambda u: u[KEY][5],
    "agent": lambda u: u[AGENT],
    "room": lambda u: u[ROOM],
    "model": lambda u: u[KEY][3],
    "customer": lambda u: u[CUSTOMER],
    "resource": lambda u: u[KEY][0],
}


def _session_line(items: list[Usage], costing: Costing) -> SessionLine:
    """One session from its usages (in file order): the first room, agent and customer it names."""
    sums: dict[StrKey, int] = {}
    billed = 0
    for u in items:
        sums[u[KEY]] = sums.get(u[KEY], 0) + u[BILLABLE]
        if u[SESSION_TIME]:
            billed += u[BILLABLE]
    cost = costing.cost(sums.items())
    return SessionLine(
        session_id=items[0][SESSION],
        room=next((u[ROOM] for u in items if u[ROOM]), ""),
        agent_name=next((u[AGENT] for u in items if u[AGENT]), ""),
        customer=next((u[CUSTOMER] for u in items if u[CUSTOMER]), ""),
        start_ms=min(u[START_MS] for u in items),
        end_ms=max(u[END_MS] for u in items),
        billed_minutes=Decimal(billed) / _MINUTE_MS,
        cost=cost.priced,
        unpriced=tuple(sorted(cost.unpriced)),
        records=len(items),
    )


# -- a collector's store ------------------------------------------------------------------------------


@dataclass
class StoreSource:
    """A collector's database, read with the collector's own store classes and its daily roll-ups.

    The store keeps each project's records apart; ``project`` is the collector's project name
    (``default`` for the key pair given by LIVEKIT_API_KEY/LIVEKIT_API_SECRET).
    """

    database: str
    project: str = "default"
    chunk: int = 200
    skipped: Skipped | None = None

    def _check(self) -> None:
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

    def _run(self, work: Callable[[Any], Any]) -> Any:
        self._check()

        async def go() -> Any:
            from .collector.store.base import open_store, redacted

            try:
                store = open_store(self.database)
                await store.open()
            except Exception as exc:
                raise ReportError(f"cannot open the store {self.database!r}: {exc}") from None
            try:
                if not await store.count(self.project):
                    raise ReportError(
                        f"the store {redacted(self.database)} has no records for project {self.project!r}: "
                        "check --project (the collector's project for LIVEKIT_API_KEY is 'default'; others "
                        "are named in its keys file)"
                    )
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def usage(self, group_by: str, window: Window, costing: Costing, progress: Progress | None) -> Iterator[UsageLine]:
        from .collector.pricing import usage_price_key
        from .pricing import price_usage

        first, after = window.days()

        async def work(store: Any) -> list[UsageLine]:
            rows = await store.usage(self.project, first, after, group_by)
            if progress is not None:
                progress(len(rows), len(rows))
            return price_usage(((r.key, usage_price_key(r), r.billable) for r in rows), costing, group_by).lines

        return iter(self._run(work))

    def sessions(self, window: Window, costing: Costing, progress: Progress | None) -> Iterator[SessionLine]:
        from .collector.store.base import SessionFilter, billable_of
        from .pricing import price_key

        async def work(store: Any) -> list[SessionLine]:
            flt = SessionFilter(since=window.since, until=window.until, limit=1_000_000_000)
            rows = [r for r in await store.sessions(self.project, flt) if _starts_in(r.start, window)]
            out: list[SessionLine] = []
            for offset in range(0, len(rows), self.chunk):
                part = rows[offset : offset + self.chunk]
                sums: dict[str, dict[PriceKey, int]] = {row.session_id: {} for row in part}
                for r in await store.session_records(self.project, [row.session_id for row in part]):
                    mine = sums[r.session_id]
                    key = price_key(r)
                    mine[key] = mine.get(key, 0) + billable_of(r)
                for row in part:
                    cost = costing.cost(sums[row.session_id].items())
                    out.append(
                        SessionLine(
                            row.session_id,
                            row.room,
                            row.agent_name,
                            row.customer,
                            (row.start - _EPOCH) // timedelta(milliseconds=1),
                            (row.end - _EPOCH) // timedelta(milliseconds=1),
                            row.billed_minutes,
                            cost.priced,
                            tuple(sorted(cost.unpriced)),
                            row.records,
                        )
                    )
                if progress is not None:
                    progress(offset + len(part), len(rows))
            out.sort(key=_session_order)
            return out

        return iter(self._run(work))


def _starts_in(start: datetime, window: Window) -> bool:
    return (window.since is None or start >= window.since) and (window.until is None or start < window.until)


# -- a running collector ------------------------------------------------------------------------------------


@dataclass
class CollectorSource:
    """A running collector's aggregate endpoints (``/v1/usage``, ``/v1/sessions``), signed with the
    LiveKit API key and secret. The collector prices with its own price book and the plan asked for."""

    url: str
    api_key: str
    api_secret: str
    page_size: int = 1000
    timeout: float = 30.0
    skipped: Skipped | None = None

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

    def usage(self, group_by: str, window: Window, costing: Costing, progress: Progress | None) -> Iterator[UsageLine]:
        from .pricing import PricedUsage

        first, after = window.days()
        query = {"group_by": group_by, "plan": costing.plan, "since": first.isoformat()}
        if window.until is not None:
            query["until"] = after.isoformat()  # the API's until is a day bound: usage before that day
        body = asyncio.run(self._get_all([f"/v1/usage?{urlencode(query)}"]))[0]
        if progress is not None:
            progress(1, 1)
        try:
            return iter(PricedUsage.from_json(body).lines)
        except (KeyError, TypeError, ValueError, ArithmeticError):
            raise ReportError(f"{self.url}/v1/usage did not answer usage rows: is this a collector?") from None

    def sessions(self, window: Window, costing: Costing, progress: Progress | None) -> Iterator[SessionLine]:
        return iter(asyncio.run(self._sessions(window, costing.plan, progress)))

    async def _sessions(self, window: Window, plan: str, progress: Progress | None) -> list[SessionLine]:
        import aiohttp

        # The API answers at most page_size sessions, newest first: page backwards by start time.
        # A page's oldest start is asked for again (ids deduplicated) so a tie at the boundary is not lost.
        seen: dict[str, SessionLine] = {}
        upper = window.until
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
            for _ in range(100_000):
                query: dict[str, str] = {"limit": str(self.page_size), "plan": plan}
                if window.since is not None:
                    query["since"] = rfc3339(window.since)
                if upper is not None:
                    query["until"] = rfc3339(upper)
                page = (await self._get(http, f"/v1/sessions?{urlencode(query)}")).get("sessions")
                if not isinstance(page, list):
                    raise ReportError(f"{self.url}/v1/sessions did not answer a session list: is this a collector?")
                try:
                    lines = [SessionLine.from_json(s) for s in page]
                except (KeyError, TypeError, ValueError, ArithmeticError):
                    raise ReportError(f"{self.url}/v1/sessions answered a session without its figures") from None
                fresh = [line for line in lines if line.session_id not in seen]
                seen.update((line.session_id, line) for line in fresh)
                if progress is not None:
                    progress(len(seen), None)
                if len(page) < self.page_size or not fresh:
                    break
                upper = min(line.start for line in lines) + timedelta(milliseconds=1)
        return sorted((s for s in seen.values() if _starts_in(s.start, window)), key=_session_order)

    async def _get_all(self, paths: list[str]) -> list[dict[str, Any]]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
            return [await self._get(http, path) for path in paths]

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
        except ValueError:
            raise ReportError(f"GET {self.url}{path} did not answer JSON: is this a collector?") from None


def open_source(
    path: str | None, *, url: str | None, database: str | None, project: str = "default", strict: bool = False
) -> Source:
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
        return _source_from_env(strict)
    if url:
        return CollectorSource.from_env(url)
    if database:
        return StoreSource(database, project=project)
    assert path is not None
    return FileSource(path, strict=strict)


def _source_from_env(strict: bool) -> Source:
    from .export.config import default_records_file

    env_url = os.environ.get("LIVEKIT_METERING_URL")
    if env_url:
        return CollectorSource.from_env(env_url)
    env_file = os.environ.get("LIVEKIT_METERING_FILE")
    if env_file:
        return FileSource(env_file, strict=strict)
    default = default_records_file()
    if default.is_file():
        return FileSource(default, strict=strict)
    raise ReportError(
        "no source: give a JSON-lines records file, --url of a collector or --database of a store "
        f"(or set LIVEKIT_METERING_URL or LIVEKIT_METERING_FILE; the default records file {default} does not exist)"
    )


# -- output -----------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a written report added up to: the priced total, unpriced names, lines, skipped input."""

    total: Decimal = Decimal(0)
    unpriced: set[str] = field(default_factory=set)
    lines: int = 0
    skipped: Skipped | None = None


def quantity_text(quantity: Decimal) -> str:
    text = _dec(quantity)
    whole, _, frac = text.partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


def _cost_text(cost: Decimal, unpriced: Iterable[str]) -> str:
    return usd(cost) + (" +unpriced" if any(True for _ in unpriced) else "")


def _shown(key: str) -> str:
    return key or NONE_KEY


def write_report(
    source: Source,
    out: TextIO,
    *,
    group_by: str | None,
    window: Window,
    fmt: str,
    book: PriceBook,
    plan: str,
    progress: Progress | None = None,
) -> Summary:
    """Read, price and render ``source`` into ``out`` as it streams; return what it added up to."""
    from .pricing import Costing

    costing = Costing(book, plan)
    summary = Summary()
    # The first line is read before anything is written: a source's errors come before any output.
    if group_by is None:
        sessions = _counted(_primed(source.sessions(window, costing, progress)), summary)
        {"json": _json_sessions, "csv": _csv_sessions, "table": _table_sessions}[fmt](sessions, out, plan, summary)
    else:
        rows = _counted(_primed(source.usage(group_by, window, costing, progress)), summary)
        {"json": _json_usage, "csv": _csv_usage, "table": _table_usage}[fmt](rows, out, plan, group_by, summary)
    summary.skipped = source.skipped
    return summary


def _primed(lines: Iterator[Any]) -> Iterator[Any]:
    first = next(lines, None)
    return lines if first is None else itertools.chain((first,), lines)


def _counted(lines: Iterator[Any], summary: Summary) -> Iterator[Any]:
    for line in lines:  # a SessionLine or a UsageLine: both have a cost and its unpriced names
        summary.lines += 1
        summary.total += line.cost
        summary.unpriced.update(line.unpriced)
        yield line


def _json_list(name: str, items: Iterator[dict[str, Any]], out: TextIO, head: dict[str, Any], summary: Summary) -> None:
    out.write(json.dumps(head)[:-1] + f', "{name}": [')
    for n, item in enumerate(items):
        out.write(("\n  " if n == 0 else ",\n  ") + json.dumps(item))
    tail = {"total": format(summary.total, "f"), "unpriced": sorted(summary.unpriced)}
    out.write("\n], " + json.dumps(tail)[1:] + "\n")


def _json_sessions(lines: Iterator[SessionLine], out: TextIO, plan: str, summary: Summary) -> None:
    _json_list("sessions", (s.to_json() for s in lines), out, {"plan": plan, "group_by": None}, summary)


def _json_usage(lines: Iterator[UsageLine], out: TextIO, plan: str, group_by: str, summary: Summary) -> None:
    rows = ({**line.to_json(), "key": _shown(line.key)} for line in lines)
    _json_list("rows", rows, out, {"plan": plan, "group_by": group_by}, summary)


def _csv_sessions(lines: Iterator[SessionLine], out: TextIO, plan: str, summary: Summary) -> None:
    columns = ["session_id", "room", "agent_name", "customer", "start", "end", "billed_minutes", "cost"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "unpriced"])
    for s in lines:
        j = s.to_json()
        writer.writerow([j[c] for c in columns] + [" ".join(s.unpriced)])


def _csv_usage(lines: Iterator[UsageLine], out: TextIO, plan: str, group_by: str, summary: Summary) -> None:
    writer = csv.writer(out, lineterminator="\n")
    columns = ["resource", "unit", "quantity", "cost", "unpriced"]
    writer.writerow(columns if group_by == "resource" else [group_by, *columns])
    for line in lines:
        j = line.to_json()
        row = [j["resource"], j["unit"], j["quantity"], j["cost"], " ".join(j["unpriced"])]
        writer.writerow(row if group_by == "resource" else [_shown(line.key), *row])


def _chunks(items: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == _TABLE_ROWS:
            yield chunk
            chunk = []
    yield chunk  # the last one, maybe empty: it carries the total


def _print_tables(
    out: TextIO,
    title: str,
    columns: list[Column],
    chunks: Iterator[list[list[str]]],
    footer: Callable[[], list[str]],
    summary: Summary,
) -> None:
    for n, rows in enumerate(chunks):
        last = len(rows) < _TABLE_ROWS
        out.write(render_table(title if n == 0 else "", columns, [*rows, SECTION, footer()] if last else rows))
    if summary.unpriced:
        out.write(f"Unpriced (not in the total; add them to a price book): {', '.join(sorted(summary.unpriced))}\n")


def _table_sessions(lines: Iterator[SessionLine], out: TextIO, plan: str, summary: Summary) -> None:
    columns = [Column(n) for n in ("session", "started (UTC)", "room", "agent", "customer")]
    columns += [Column("minutes", right=True), Column("cost", right=True)]

    def rows(chunk: list[SessionLine]) -> list[list[str]]:
        return [
            [
                s.session_id,
                s.start.strftime("%Y-%m-%d %H:%M:%S"),
                s.room,
                s.agent_name,
                s.customer,
                quantity_text(s.billed_minutes),
                _cost_text(s.cost, s.unpriced),
            ]
            for s in chunk
        ]

    def footer() -> list[str]:
        count = f"{summary.lines} session" + ("" if summary.lines == 1 else "s")
        return [count, "", "", "", "", "", _cost_text(summary.total, summary.unpriced)]

    title = f"Sessions (list prices, {plan} plan)"
    _print_tables(out, title, columns, (rows(c) for c in _chunks(lines)), footer, summary)


def _table_usage(lines: Iterator[UsageLine], out: TextIO, plan: str, group_by: str, summary: Summary) -> None:
    by_resource = group_by == "resource"  # the key is the resource: one column, not two alike
    columns = [] if by_resource else [Column(group_by)]
    columns += [Column("resource"), Column("quantity", right=True), Column("unit"), Column("cost", right=True)]
    previous: list[str | None] = [None]

    def rows(chunk: list[UsageLine]) -> list[list[str]]:
        out_rows = []
        for line in chunk:
            cost = _cost_text(line.cost, line.unpriced)
            cells = [line.resource, quantity_text(line.quantity), line.unit, cost]
            if not by_resource:
                cells.insert(0, "" if line.key == previous[0] else _shown(line.key))
                previous[0] = line.key
            out_rows.append(cells)
        return out_rows

    def footer() -> list[str]:
        return ["total", *([""] * (len(columns) - 2)), _cost_text(summary.total, summary.unpriced)]

    title = f"Usage by {group_by} (list prices, {plan} plan)"
    _print_tables(out, title, columns, (rows(c) for c in _chunks(lines)), footer, summary)


# -- the command --------------------------------------------------------------------------------------------


def write_command(
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
    strict: bool = False,
    stdout: TextIO | None = None,
) -> Summary:
    """The ``report`` command: check the options, then stream the report to ``output`` (written to a
    temporary file and renamed when complete) or ``stdout``."""
    from .pricing import InvalidPriceBook, PriceBook, UnknownPlan

    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: use table, json or csv")
    if group_by is not None and group_by not in GROUPS:
        raise ReportError(f"cannot group by {group_by!r}: use one of {', '.join(GROUPS)}")
    window = Window(parse_time(since) if since else None, parse_time(until, end_of_day=True) if until else None)
    if window.since is not None and window.until is not None and window.until <= window.since:
        raise ReportError(f"--until ({until}) must be after --since ({since})")
    try:
        book = PriceBook.load(prices) if prices else PriceBook.bundled()
        book.plan(plan)
    except (InvalidPriceBook, UnknownPlan) as exc:
        raise ReportError(str(exc)) from None
    source = open_source(path, url=url, database=database, project=project, strict=strict)
    if prices and isinstance(source, CollectorSource):
        raise ReportError("--prices applies to a records file or --database; a collector prices with its own book")
    target = Path(output) if output is not None else None
    if target is not None and not target.parent.is_dir():
        raise ReportError(f"cannot write {output}: there is no directory {target.parent}")
    options = {"group_by": group_by, "window": window, "fmt": fmt, "book": book, "plan": plan}
    advance, stop = progress_bar() if progress else (None, None)
    try:
        with gc_paused():
            if target is None:
                return write_report(source, stdout or _stdout(), progress=advance, **options)  # type: ignore[arg-type]
            fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with open(fd, "w", encoding="utf-8", newline="") as handle:
                    summary = write_report(source, handle, progress=advance, **options)  # type: ignore[arg-type]
                os.replace(temp, target)
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)
            return summary
    finally:
        if stop is not None:
            stop()


def _stdout() -> TextIO:
    import sys

    return sys.stdout


def run_report(**options: Any) -> str:
    """``write_command`` into a string (for tests, benchmarks and small reports)."""
    buffer = io.StringIO()
    write_command(**options, stdout=buffer)
    return buffer.getvalue()
