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
from usage_samples import SHIP_PRICES, UNPRICED_MODEL, hand_cost, month_of_sessions, session_records

from livekit_metering import MeterRecord, Resource
from livekit_metering.cli import app
from livekit_metering.collector.store.base import Stored, open_store
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, batch_body, run_collector, signed_headers
from livekit_metering.export import FileExporter
from livekit_metering.report import ReportError, parse_time, run_report

runner = CliRunner()


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


def expected_rows(records: list[MeterRecord], key: str) -> dict[tuple[str, str], tuple[str, str, list[str]]]:
    """Independent sums: (group key, resource) -> (quantity, priced cost, unpriced models)."""
    quantity: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    cost: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    unpriced: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        k = (
            {"customer": r.customer, "agent": r.agent_name, "day": r.start.date().isoformat(), "room": r.room}.get(key)
            or r.resource.value,
            r.resource.value,
        )
        quantity[k] += r.quantity
        price = hand_cost(r)
        if price is None:
            unpriced[k].add(r.model)
        else:
            cost[k] += price
    return {k: (format(q.normalize(), "f"), format(cost[k], "f"), sorted(unpriced[k])) for k, q in quantity.items()}


def rows_of(body: dict[str, object]) -> dict[tuple[str, str], tuple[str, str, list[str]]]:
    rows = body["rows"]
    assert isinstance(rows, list)
    return {(r["key"], r["resource"]): (r["quantity"], r["cost"], r["unpriced"]) for r in rows}


def same_money(a: str, b: str) -> bool:
    return Decimal(a) == Decimal(b)


Rows = dict[tuple[str, str], tuple[str, str, list[str]]]


def assert_rows(got: Rows, want: Rows) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0] and same_money(got[k][1], want[k][1]) and got[k][2] == want[k][2], k


# -- from a records file ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["customer", "agent", "day", "resource", "room"])
def test_file_report_groups_and_prices_every_usage(
    records_file: Path, records: list[MeterRecord], group_by: str
) -> None:
    code, out, err = invoke(str(records_file), "--group-by", group_by, "--format", "json")
    assert code == 0, err
    body = json.loads(out)
    assert body["group_by"] == group_by
    assert_rows(rows_of(body), expected_rows(records, group_by))
    assert Decimal(body["total"]) == sum(c for r in records if (c := hand_cost(r)) is not None)
    assert body["unpriced"] == [UNPRICED_MODEL]
    # Every visible row adds up to the stated total: a partly unpriced group keeps its priced part.
    assert sum(Decimal(r["cost"]) for r in body["rows"]) == Decimal(body["total"])


def test_a_group_with_an_unpriced_model_shows_its_priced_part_and_says_unpriced(
    records_file: Path, records: list[MeterRecord]
) -> None:
    session = next(r for r in records if r.model == UNPRICED_MODEL)
    code, out, _ = invoke(str(records_file), "--group-by", "customer", "--format", "json")
    assert code == 0
    rows = {(r["key"], r["resource"]): r for r in json.loads(out)["rows"]}
    mixed = rows[(session.customer, "llm_input")]  # gpt-4.1-mini sessions and the unpriced one
    priced = sum(
        (r.quantity * SHIP_PRICES[("llm_input", r.model)])
        for r in records
        if r.customer == session.customer and r.resource is Resource.LLM_INPUT and r.model != UNPRICED_MODEL
    )
    assert priced > 0 and Decimal(mixed["cost"]) == priced and mixed["unpriced"] == [UNPRICED_MODEL]
    # Table and CSV say the same: the priced sum and an explicit unpriced marker.
    _, table, _ = invoke(str(records_file), "--group-by", "customer")
    assert f"${priced.quantize(Decimal('0.0001'))} +unpriced" in table
    _, text, _ = invoke(str(records_file), "--group-by", "customer", "--format", "csv")
    line = next(
        r
        for r in csv.DictReader(io.StringIO(text))
        if (r["customer"], r["resource"]) == (session.customer, "llm_input")
    )
    assert Decimal(line["cost"]) == priced and line["unpriced"] == UNPRICED_MODEL


def test_room_grouping_is_by_room_not_by_agent(records_file: Path, records: list[MeterRecord]) -> None:
    code, out, _ = invoke(str(records_file), "--group-by", "room", "--format", "json")
    assert code == 0
    keys = {r["key"] for r in json.loads(out)["rows"]}
    assert keys == {r.room for r in records} and len(keys) == 12  # two agents, twelve rooms


def test_resource_grouping_has_one_resource_column(records_file: Path) -> None:
    _, table, _ = invoke(str(records_file), "--group-by", "resource")
    header = next(line for line in table.splitlines() if "quantity" in line)
    assert header.count("resource") == 1
    _, text, _ = invoke(str(records_file), "--group-by", "resource", "--format", "csv")
    assert text.splitlines()[0] == "resource,unit,quantity,cost,unpriced"


def test_checkpoints_count_once_in_their_final_form(records_file: Path, records: list[MeterRecord]) -> None:
    code, out, _ = invoke(str(records_file), "--format", "json")
    assert code == 0
    sessions = json.loads(out)["sessions"]
    assert len(sessions) == 12
    finals = {r.session_id: r for r in records if r.resource is Resource.AGENT_SESSION}
    for s in sessions:
        assert Decimal(s["billed_minutes"]) == finals[s["session_id"]].quantity
        mine = [r for r in records if r.session_id == s["session_id"]]
        assert Decimal(s["cost"]) == sum(c for r in mine if (c := hand_cost(r)) is not None)
        assert s["unpriced"] == sorted({r.model for r in mine if hand_cost(r) is None})
    assert sessions == sorted(sessions, key=lambda s: s["start"])


def test_a_resent_identical_final_record_counts_once(tmp_path: Path, records: list[MeterRecord]) -> None:
    once = tmp_path / "once.jsonl"
    FileExporter(once).export(records)
    twice = tmp_path / "twice.jsonl"
    FileExporter(twice).export(records)
    FileExporter(twice).export(records)  # every final record sent again, byte for byte
    for args in ([], ["--group-by", "customer"]):
        _, a, _ = invoke(str(once), *args, "--format", "json")
        _, b, _ = invoke(str(twice), *args, "--format", "json")
        assert json.loads(a) == json.loads(b)
    total = sum(c for r in records if (c := hand_cost(r)) is not None)
    assert Decimal(json.loads(b)["total"]) == total


def test_model_grouping_keeps_platform_usage_apart(records_file: Path) -> None:
    code, out, _ = invoke(str(records_file), "--group-by", "model", "--format", "json")
    assert code == 0
    body = json.loads(out)
    keys = {r["key"] for r in body["rows"]}
    assert keys == {"(none)", "deepgram/nova-3", "openai/gpt-4.1-mini", "cartesia/sonic-3", UNPRICED_MODEL}
    unpriced = [r for r in body["rows"] if r["key"] == UNPRICED_MODEL]
    assert unpriced and all(r["cost"] == "0" and r["unpriced"] == [UNPRICED_MODEL] for r in unpriced)


def test_since_and_until_select_by_usage_start(records_file: Path, records: list[MeterRecord]) -> None:
    days = sorted({r.start.date() for r in records})
    first, last = days[2], days[5]
    code, out, _ = invoke(
        str(records_file), "--group-by", "day", "--since", str(first), "--until", str(last), "--format", "json"
    )
    assert code == 0
    body = json.loads(out)
    chosen = [r for r in records if first <= r.start.date() <= last]
    assert {r["key"] for r in body["rows"]} == {d.isoformat() for d in days if first <= d <= last}
    assert Decimal(body["total"]) == sum(c for r in chosen if (c := hand_cost(r)) is not None)


def test_csv_has_one_line_per_row(records_file: Path, records: list[MeterRecord]) -> None:
    code, out, _ = invoke(str(records_file), "--group-by", "customer", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["customer", "resource", "unit", "quantity", "cost", "unpriced"]
    got = {(r["customer"], r["resource"]): (r["quantity"], r["cost"], r["unpriced"].split()) for r in table}
    assert_rows(got, expected_rows(records, "customer"))


def test_sessions_csv_keeps_the_unpriced_marker(records_file: Path, records: list[MeterRecord]) -> None:
    code, out, _ = invoke(str(records_file), "--format", "csv")
    assert code == 0
    rows = {r["session_id"]: r for r in csv.DictReader(io.StringIO(out))}
    odd = next(r.session_id for r in records if r.model == UNPRICED_MODEL)
    assert rows[odd]["unpriced"] == UNPRICED_MODEL and Decimal(rows[odd]["cost"]) > 0
    assert all(row["unpriced"] == "" for sid, row in rows.items() if sid != odd)


def test_table_output_to_a_file(tmp_path: Path, records_file: Path, records: list[MeterRecord]) -> None:
    target = tmp_path / "out" / "report.txt"
    target.parent.mkdir()
    code, out, err = invoke(str(records_file), "--group-by", "customer", "--output", str(target))
    assert code == 0 and out == ""
    assert "wrote" in err
    text = target.read_text()
    total = sum(c for r in records if (c := hand_cost(r)) is not None)
    assert f"${total.quantize(Decimal('0.0001')):,} +unpriced" in text
    for customer in ("acme", "globex", "initech"):
        assert customer in text
    assert UNPRICED_MODEL in text  # named under the table, not silently $0
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]  # no temporary file left


@pytest.mark.parametrize("plan", ["build", "scale"])
def test_the_plan_changes_the_prices(records_file: Path, records: list[MeterRecord], plan: str) -> None:
    code, out, _ = invoke(str(records_file), "--plan", plan, "--format", "json")
    assert code == 0
    assert Decimal(json.loads(out)["total"]) == sum(c for r in records if (c := hand_cost(r, plan)) is not None)


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
        (["--database", "sqlite:///{db}", "--project", "nope"], "has no records for project 'nope'"),
        (
            ["--database", "sqlite:///{db}", "--group-by", "day", "--since", "2026-11-01T10:00:00Z"],
            "not a whole UTC day",
        ),
        (["{file}", "--plan", "gold"], "unknown plan 'gold'"),
        (["{file}", "--output", "{tmp}/no/such/dir/out.txt"], "there is no directory"),
    ],
)
def test_bad_options_are_named(
    records_file: Path,
    records: list[MeterRecord],
    tmp_path: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LIVEKIT_METERING_URL", "LIVEKIT_METERING_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "collector.db"
    asyncio.run(_fill_sqlite(db, records))
    target = tmp_path / "should-not-exist.txt"
    given = [
        a.replace("{file}", str(records_file)).replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) for a in args
    ]
    code, out, err = invoke(*given, *([] if "--output" in given else ["--output", str(target)]))
    assert code == 2, err
    assert message in err and err.count("\n") == 1  # one line
    assert not target.exists() and out == ""


def test_a_corrupt_line_fails_only_with_strict(tmp_path: Path, records: list[MeterRecord]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(records[0].canonical() + "\n" + '{"id": "x", "raw": 1.5}\n')
    code, _, err = invoke(str(path), "--strict")
    assert code == 2
    assert f"{path}:2" in err
    code, out, err = invoke(str(path), "--format", "json")
    assert code == 3 and "skipped 1 bad line" in err and "line 2:" in err
    assert len(json.loads(out)["sessions"]) == 1  # the good line is reported


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
    for args in (
        ["--group-by", "customer"],
        ["--group-by", "model"],
        ["--group-by", "day"],
        ["--group-by", "room"],
        [],
    ):
        code, from_store, err = invoke("--database", f"sqlite:///{db}", *args, "--format", "json")
        assert code == 0, err
        _, from_file, _ = invoke(str(records_file), *args, "--format", "json")
        assert json.loads(from_store) == json.loads(from_file), args


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


async def test_collector_report_uses_the_aggregate_endpoints_and_matches_the_file(
    tmp_path: Path, records_file: Path, records: list[MeterRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    asked: list[str] = []
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

        from livekit_metering.report import CollectorSource

        original = CollectorSource._get

        async def spy(self: CollectorSource, client: object, path: str) -> dict[str, object]:
            asked.append(path.split("?")[0])
            return await original(self, client, path)

        monkeypatch.setattr(CollectorSource, "_get", spy)
        loop = asyncio.get_running_loop()
        for args in (["--group-by", "customer"], ["--group-by", "room"], ["--plan", "scale"], []):
            group = args[1] if args and args[0] == "--group-by" else None
            plan = args[1] if args and args[0] == "--plan" else "ship"
            got = await loop.run_in_executor(None, lambda g=group, p=plan: report(group_by=g, plan=p))  # type: ignore[misc]
            expected = json.loads(invoke(str(records_file), *args, "--format", "json")[1])
            assert got == expected, args
        assert set(asked) == {"/v1/usage", "/v1/sessions"}  # aggregates only, never a session's records

        # Paging: a page size smaller than the number of sessions still finds every session.
        source = CollectorSource.from_env(url)
        source.page_size = 5
        from livekit_metering.pricing import Costing, PriceBook
        from livekit_metering.report import Window

        costing = Costing(PriceBook.bundled())
        paged = await loop.run_in_executor(None, lambda: list(source.sessions(Window(), costing, None)))
        assert sorted(s.session_id for s in paged) == sorted({r.session_id for r in records})

    monkeypatch.setenv("LIVEKIT_API_SECRET", "wrong-secret-wrong-secret-wrong-secret")
    async with run_collector(tmp_path / "c.db") as url:
        code, _, err = await asyncio.get_running_loop().run_in_executor(None, lambda: invoke("--url", url))
        assert code == 2 and "refused the signature" in err


def test_long_reports_show_progress(tmp_path: Path, records: list[MeterRecord]) -> None:
    from livekit_metering.pricing import Costing, PriceBook
    from livekit_metering.report import FileSource, StoreSource, Window

    db = tmp_path / "collector.db"
    asyncio.run(_fill_sqlite(db, records))
    costing = Costing(PriceBook.bundled())
    seen: list[tuple[int, int | None]] = []
    got = list(StoreSource(f"sqlite:///{db}", chunk=5).sessions(Window(), costing, lambda d, t: seen.append((d, t))))
    assert seen == [(5, 12), (10, 12), (12, 12)]  # sessions read so far, of all
    assert len(got) == 12
    path = tmp_path / "records.jsonl"
    FileExporter(path).export(records * 40)  # 4,320 lines: more than the 4,096 between two updates
    seen.clear()
    assert len(list(FileSource(path).sessions(Window(), costing, lambda d, t: seen.append((d, t))))) == 12
    size = path.stat().st_size
    assert seen[-1] == (size, size) and 0 < seen[0][0] < size  # bytes read, of the file's size


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
