"""`livekit-metering report`: the same figures from a records file, a store and a live collector."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner
from usage_samples import UNPRICED_MODEL, month_of_sessions, session_records

from livekit_metering import MeterRecord, Resource
from livekit_metering.cli import app
from livekit_metering.collector.store.base import Stored, open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, batch_body, run_collector, sign, signed_headers
from livekit_metering.export import FileExporter
from livekit_metering.pricing import PriceBook
from livekit_metering.report import ReportError, build_report, parse_time, run_report

runner = CliRunner()


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.bundled()


@pytest.fixture(scope="module")
def records() -> list[MeterRecord]:
    # Recent enough for the collector to accept (it refuses usage older than 35 days).
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return month_of_sessions(now - timedelta(days=30))


@pytest.fixture
def records_file(tmp_path: Path, records: list[MeterRecord]) -> Path:
    """A JSON-lines file as an agent writes it: each session's running checkpoint, then the final forms."""
    path = tmp_path / "records.jsonl"
    exporter = FileExporter(path)
    for session_id in sorted({r.session_id for r in records}):
        first = next(r for r in records if r.session_id == session_id)
        with_checkpoint = session_records(
            session_id,
            first.start,
            (first.end - first.start).total_seconds(),
            room=first.room,
            agent=first.agent_name,
            customer=first.customer,
            checkpoint=True,
        )
        exporter.export([with_checkpoint[0]])  # the checkpoint only; the finals come from `records`
    exporter.export(records)
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["report", *args])
    return result.exit_code, result.stdout, result.stderr


def expected_rows(
    records: list[MeterRecord], book: PriceBook, key: str
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Independent sums: (group key, resource) -> (quantity, cost), unpriced rows as None."""
    quantity: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    cost: dict[tuple[str, str], Decimal | None] = defaultdict(Decimal)
    for r in records:
        k = {
            "customer": r.customer,
            "agent": r.agent_name,
            "day": r.start.date().isoformat(),
            "resource": r.resource.value,
        }[key]
        quantity[(k, r.resource.value)] += r.quantity
        price = book.price_of(r, plan="ship")
        so_far = cost[(k, r.resource.value)]
        cost[(k, r.resource.value)] = None if price is None or so_far is None else so_far + price
    return {
        k: (format(q.normalize(), "f"), None if cost[k] is None else format(cost[k].normalize(), "f"))  # type: ignore[union-attr]
        for k, q in quantity.items()
    }


def rows_of(body: dict[str, object]) -> dict[tuple[str, str], tuple[str, str | None]]:
    rows = body["rows"]
    assert isinstance(rows, list)
    return {(r["key"], r["resource"]): (r["quantity"], r["cost"]) for r in rows}


# -- from a records file ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["customer", "agent", "day", "resource"])
def test_file_report_groups_and_prices_every_usage(
    records_file: Path, records: list[MeterRecord], book: PriceBook, group_by: str
) -> None:
    code, out, err = invoke(str(records_file), "--group-by", group_by, "--format", "json")
    assert code == 0, err
    body = json.loads(out)
    assert body["group_by"] == group_by
    assert rows_of(body) == expected_rows(records, book, group_by)
    assert Decimal(body["total"]) == book.cost(records, plan="ship").total
    assert body["unpriced"] == [UNPRICED_MODEL]


def test_checkpoints_count_once_in_their_final_form(records_file: Path, records: list[MeterRecord]) -> None:
    code, out, _ = invoke(str(records_file), "--format", "json")
    assert code == 0
    sessions = json.loads(out)["sessions"]
    assert len(sessions) == 12
    finals = {r.session_id: r for r in records if r.resource is Resource.AGENT_SESSION}
    for s in sessions:
        assert Decimal(s["billed_minutes"]) == finals[s["session_id"]].quantity
    assert sessions == sorted(sessions, key=lambda s: s["start"])


def test_model_grouping_keeps_platform_usage_apart(records_file: Path) -> None:
    code, out, _ = invoke(str(records_file), "--group-by", "model", "--format", "json")
    assert code == 0
    body = json.loads(out)
    keys = {r["key"] for r in body["rows"]}
    assert keys == {"(none)", "deepgram/nova-3", "openai/gpt-4.1-mini", "cartesia/sonic-3", UNPRICED_MODEL}
    unpriced = [r for r in body["rows"] if r["key"] == UNPRICED_MODEL]
    assert unpriced and all(r["cost"] is None for r in unpriced)  # unpriced, never $0


def test_since_and_until_select_by_usage_start(records_file: Path, records: list[MeterRecord], book: PriceBook) -> None:
    days = sorted({r.start.date() for r in records})
    first, last = days[2], days[5]
    code, out, _ = invoke(
        str(records_file), "--group-by", "day", "--since", str(first), "--until", str(last), "--format", "json"
    )
    assert code == 0
    body = json.loads(out)
    chosen = [r for r in records if first <= r.start.date() <= last]
    assert {r["key"] for r in body["rows"]} == {d.isoformat() for d in days if first <= d <= last}
    assert Decimal(body["total"]) == book.cost(chosen, plan="ship").total


def test_csv_has_one_line_per_row(records_file: Path, records: list[MeterRecord], book: PriceBook) -> None:
    code, out, _ = invoke(str(records_file), "--group-by", "customer", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["customer", "resource", "unit", "quantity", "cost"]
    got = {(r["customer"], r["resource"]): (r["quantity"], r["cost"] or None) for r in table}
    assert got == expected_rows(records, book, "customer")


def test_table_output_to_a_file(
    records_file: Path, tmp_path: Path, records: list[MeterRecord], book: PriceBook
) -> None:
    target = tmp_path / "out" / "report.txt"
    target.parent.mkdir()
    code, out, err = invoke(str(records_file), "--group-by", "customer", "--output", str(target))
    assert code == 0 and out == ""
    assert "wrote" in err
    text = target.read_text()
    total = book.cost(records, plan="ship").total
    assert f"${total.quantize(Decimal('0.0001')):,}" in text
    for customer in ("acme", "globex", "initech"):
        assert customer in text
    assert UNPRICED_MODEL in text  # named under the table, not silently $0


def test_the_plan_changes_the_prices(records_file: Path, records: list[MeterRecord], book: PriceBook) -> None:
    totals = {}
    for plan in ("build", "scale"):
        code, out, _ = invoke(str(records_file), "--plan", plan, "--format", "json")
        assert code == 0
        totals[plan] = Decimal(json.loads(out)["total"])
        assert totals[plan] == book.cost(records, plan=plan).total
    assert totals["build"] != totals["scale"]


# -- bad input: a clear message, exit code 2, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "no records file"),
        ([], "no source"),
        (["{file}", "--url", "http://127.0.0.1:9"], "give exactly one source"),
        (["{file}", "--group-by", "week"], "cannot group by 'week'"),
        (["{file}", "--since", "yesterday"], "cannot read the time 'yesterday'"),
        (["{file}", "--since", "2026-11-05T10:00:00"], "has no UTC offset"),
        (["{file}", "--since", "2026-11-05", "--until", "2026-11-01"], "must be after --since"),
        (["{file}", "--format", "xml"], "unknown format 'xml'"),
        (["--database", "mysql://x"], "unsupported database URL"),
        (["--database", "sqlite:///nowhere/at/all.db"], "no SQLite store"),
    ],
)
def test_bad_options_are_named(
    records_file: Path, tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LIVEKIT_METERING_URL", "LIVEKIT_METERING_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "should-not-exist.txt"
    code, _, err = invoke(*[a.replace("{file}", str(records_file)) for a in args], "--output", str(target))
    assert code == 2
    assert message in err
    assert not target.exists()


def test_a_corrupt_line_is_named(tmp_path: Path, records: list[MeterRecord]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(records[0].canonical() + "\n" + '{"id": "x", "raw": 1.5}\n')
    code, _, err = invoke(str(path))
    assert code == 2
    assert "bad.jsonl:2" in err


def test_collector_needs_the_signing_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    code, _, err = invoke("--url", "http://127.0.0.1:9")
    assert code == 2
    assert "LIVEKIT_API_KEY" in err


def test_parse_time_accepts_dates_and_rfc3339() -> None:
    assert parse_time("2026-11-05") == datetime(2026, 11, 5, tzinfo=timezone.utc)
    assert parse_time("2026-11-05", end_of_day=True) == datetime(2026, 11, 6, tzinfo=timezone.utc)
    assert parse_time("2026-11-05T10:00:00+02:00") == datetime(2026, 11, 5, 8, tzinfo=timezone.utc)
    with pytest.raises(ReportError):
        parse_time("05/11/2026")


# -- from a store and from a running collector -------------------------------------------------------------


async def _fill_sqlite(path: Path, records: list[MeterRecord]) -> None:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.ingest("default", [Stored(r) for r in records])
    finally:
        await store.close()


def test_store_report_matches_the_file_report(tmp_path: Path, records_file: Path, records: list[MeterRecord]) -> None:
    db = tmp_path / "collector.db"
    asyncio.run(_fill_sqlite(db, records))
    for group in ("customer", "model", "day"):
        code, from_store, err = invoke("--database", f"sqlite:///{db}", "--group-by", group, "--format", "json")
        assert code == 0, err
        _, from_file, _ = invoke(str(records_file), "--group-by", group, "--format", "json")
        assert json.loads(from_store) == json.loads(from_file)
    code, out, _ = invoke("--database", f"sqlite:///{db}", "--project", "someone-else", "--format", "json")
    assert code == 0 and json.loads(out)["sessions"] == []  # projects are kept apart


@pytest.mark.postgres
def test_postgres_store_report(pg_url: str, records: list[MeterRecord], records_file: Path) -> None:
    import uuid

    import asyncpg

    name = f"lkm_report_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        store = open_store(pg_url.rsplit("/", 1)[0] + "/" + name)
        await store.open()
        try:
            await store.ingest("default", [Stored(r) for r in records])
        finally:
            await store.close()

    async def drop() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        url = pg_url.rsplit("/", 1)[0] + "/" + name
        code, from_store, err = invoke("--database", url, "--group-by", "customer", "--format", "json")
        assert code == 0, err
        _, from_file, _ = invoke(str(records_file), "--group-by", "customer", "--format", "json")
        assert json.loads(from_store) == json.loads(from_file)
    finally:
        asyncio.run(drop())


async def test_collector_report_matches_the_collector_and_the_file(
    tmp_path: Path, records_file: Path, records: list[MeterRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    async with run_collector(tmp_path / "c.db") as url, aiohttp.ClientSession() as http:
        body = batch_body(records)
        async with http.post(f"{url}/v1/records", data=body, headers=signed_headers(body)) as resp:
            assert resp.status == 200
            results = (await resp.json())["results"]
            assert {r["status"] for r in results} == {"accepted"}

        def report(**kw: object) -> dict[str, object]:
            args = {
                "path": None,
                "url": url,
                "database": None,
                "group_by": None,
                "since": None,
                "until": None,
                "fmt": "json",
                "plan": "ship",
                "prices": None,
                "output": None,
                "progress": False,
            }
            args.update(kw)
            return json.loads(run_report(**args))  # type: ignore[arg-type]

        loop = asyncio.get_running_loop()
        by_customer = await loop.run_in_executor(None, lambda: report(group_by="customer"))
        expected = json.loads(invoke(str(records_file), "--group-by", "customer", "--format", "json")[1])
        assert by_customer == expected

        # The collector's own roll-up agrees with the report, row by row.
        since = min(r.start for r in records).date().isoformat()
        query = f"group_by=customer&since={since}"
        async with http.get(f"{url}/v1/usage?{query}", headers={"Authorization": sign()}) as resp:
            api = await resp.json()
        assert Decimal(api["total"]) == Decimal(by_customer["total"])  # type: ignore[arg-type]
        api_rows = {
            (r["key"], r["resource"]): (Decimal(r["quantity"]), r["cost"] and Decimal(r["cost"])) for r in api["rows"]
        }
        ours = {k: (Decimal(q), c and Decimal(c)) for k, (q, c) in rows_of(by_customer).items()}
        assert api_rows == ours

        # Paging: a page size smaller than the number of sessions still finds every session.
        from livekit_metering.report import CollectorSource

        source = CollectorSource.from_env(url)
        source.page_size = 5
        paged = await loop.run_in_executor(None, lambda: list(source.records(None, None)))
        assert sorted(r.id for r in paged) == sorted(r.id for r in records)

        sessions = await loop.run_in_executor(None, lambda: report())
        assert len(sessions["sessions"]) == 12  # type: ignore[arg-type]

    monkeypatch.setenv("LIVEKIT_API_SECRET", "wrong-secret-wrong-secret-wrong-secret")
    async with run_collector(tmp_path / "c.db") as url:
        with pytest.raises(ReportError, match="refused the signature"):
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: build_report(CollectorSource.from_env(url).records(None, None), PriceBook.bundled())
            )


def test_long_exports_report_progress(tmp_path: Path, records: list[MeterRecord]) -> None:
    from livekit_metering.report import StoreSource, with_progress

    db = tmp_path / "collector.db"
    asyncio.run(_fill_sqlite(db, records))
    seen: list[tuple[int, int | None]] = []
    source = StoreSource(f"sqlite:///{db}", chunk=5)
    got = list(source.records(None, None, lambda done, total: seen.append((done, total))))
    assert seen == [(5, 12), (10, 12), (12, 12)]  # sessions read so far, of all
    assert sorted(r.id for r in got) == sorted(r.id for r in records)
    shown = with_progress(source, None, None, show=True)  # the rich bar (on stderr) changes nothing read
    assert sorted(r.id for r in shown) == sorted(r.id for r in records)


def test_without_a_source_the_environment_decides(
    records_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIVEKIT_METERING_URL", raising=False)
    monkeypatch.setenv("LIVEKIT_METERING_FILE", str(records_file))
    code, out, _ = invoke("--format", "json")
    assert code == 0 and len(json.loads(out)["sessions"]) == 12
    # Nothing set: the default file agents write to when they have no configuration.
    monkeypatch.delenv("LIVEKIT_METERING_FILE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default = tmp_path / "cache" / "livekit-metering" / "records.jsonl"
    default.parent.mkdir(parents=True)
    default.write_bytes(records_file.read_bytes())
    code, out, _ = invoke("--format", "json")
    assert code == 0 and len(json.loads(out)["sessions"]) == 12
