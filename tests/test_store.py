"""The store's rules, the same on SQLite and PostgreSQL: each id once, checkpoints superseded,
duplicates and conflicts told apart, roll-ups exact, and nothing double counted when several
collectors share one PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from collector_helpers import (
    NOW,
    as_quantities,
    body_of,
    oracle,
    post,
    rec,
    reset_pg,
    session_cp,
    usage_totals,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livekit_metering.collector.pricing import aggregate_record
from livekit_metering.collector.store.base import Outcome, SessionFilter, Stored, fold, open_store
from livekit_metering.collector.testing import run_collector
from livekit_metering.records import MeterRecord, Resource, Status

# -- the pure rules (fold) ---------------------------------------------------------------------


def test_new_id_is_accepted_and_identical_resend_is_duplicate() -> None:
    r = rec()
    outcomes, end = fold(None, [Stored(r), Stored(r)])
    assert outcomes == [Outcome.ACCEPTED, Outcome.DUPLICATE]
    assert end == Stored(r)


def test_different_final_payload_is_a_conflict_and_keeps_the_stored_one() -> None:
    a, b = rec(raw=100), rec(raw=101)
    outcomes, end = fold(Stored(a), [Stored(b)])
    assert outcomes == [Outcome.CONFLICT]
    assert end is not None and end.record == a


def test_checkpoints_are_replaced_by_later_figures_and_the_final_form() -> None:
    cp1, cp2, final = session_cp("S", 60_000), session_cp("S", 120_000), session_cp("S", 130_000, status=Status.OK)
    outcomes, end = fold(None, [Stored(cp1), Stored(cp2), Stored(cp1), Stored(final), Stored(cp2)])
    assert outcomes == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.ACCEPTED, Outcome.DUPLICATE]
    assert end is not None and end.record == final


def test_agent_final_supersedes_a_webhook_close_and_earliest_webhook_close_wins() -> None:
    cp = session_cp("S", 60_000)
    late_close = Stored(session_cp("S", 300_000, status=Status.OK), by_webhook=True)
    early_close = Stored(session_cp("S", 200_000, status=Status.OK), by_webhook=True)
    agent_final = Stored(session_cp("S", 90_000, status=Status.OK))
    for order in ([late_close, early_close, agent_final], [agent_final, early_close, late_close]):
        _, end = fold(Stored(cp), order)
        assert end == agent_final
    for order in ([late_close, early_close], [early_close, late_close]):
        _, end = fold(Stored(cp), order)
        assert end == early_close


def test_a_webhook_figure_replacing_the_agents_checkpoint_keeps_the_agents_labels() -> None:
    # A self-hosted agent killed mid-session: the server's participant_left figure for its connection
    # replaces its last checkpoint. Only the agent knew its job, customer and that LiveKit bills none of
    # it (tests/test_e2e_livekit.py meets this against the real server).
    usage = "participant:PA_1"
    cp = rec("AJ_1", usage, Resource.CONNECTION, 30_000, seconds=30, status=Status.CHECKPOINT,
             customer="acme", agent_name="agent", worker_id="AW_1", provider="self-hosted")  # fmt: skip
    webhook = rec("room:RM_1", usage, Resource.CONNECTION, 95_000, seconds=95, agent_name="agent")
    webhook = webhook.model_copy(update={"id": cp.id})
    _, end = fold(Stored(cp), [Stored(webhook, by_webhook=True)])
    assert end is not None and end.by_webhook and (end.record.raw, end.record.quantity) == (95_000, 2)
    assert (end.record.session_id, end.record.customer, end.record.worker_id, end.record.provider) == (
        "AJ_1",
        "acme",
        "AW_1",
        "self-hosted",
    )


# -- stores --------------------------------------------------------------------------------------


async def test_store_outcomes_persist_across_reopen(database: str) -> None:
    a, b = rec("S1", "llm-1"), rec("S1", "llm-2", raw=7)
    async with open_store(database) as store:
        assert await store.ingest("p", [Stored(a), Stored(b), Stored(a)]) == [
            Outcome.ACCEPTED,
            Outcome.ACCEPTED,
            Outcome.DUPLICATE,
        ]
    async with open_store(database) as store:  # migrations run again, harmlessly
        assert await store.ingest("p", [Stored(a), Stored(rec("S1", "llm-2", raw=8))]) == [
            Outcome.DUPLICATE,
            Outcome.CONFLICT,
        ]
        assert await store.count("p") == 2
        assert await store.count("other") == 0
        records = await store.session_records("p", ["S1"])
        assert sorted(r.raw for r in records) == [7, 100]


async def test_batches_racing_into_one_commit_store_each_id_once(database: str) -> None:
    """Batches in flight together (on SQLite planned before their shared transaction, on PostgreSQL
    in concurrent ones): ids in two of them, and a checkpoint racing its final form, end up once."""
    first = [rec("R", f"llm-{i}", raw=i + 1) for i in range(50)] + [session_cp("R", 61_000)]
    second = [rec("R", f"llm-{i}", raw=i + 1) for i in range(25, 75)]
    second.append(session_cp("R", 130_000, status=Status.OK, meta={"end_cause": "shutdown"}))
    async with open_store(database) as store:
        # Both batches are planned against this checkpoint; whichever writes second finds it replaced.
        assert await store.ingest("p", [Stored(session_cp("R", 30_000))]) == [Outcome.ACCEPTED]
        a, b = await asyncio.gather(
            store.ingest("p", [Stored(r) for r in first]), store.ingest("p", [Stored(r) for r in second])
        )
        answered = [*zip(first, a, strict=True), *zip(second, b, strict=True)]
        llm = [o for r, o in answered if r.resource is Resource.LLM_INPUT]
        assert (llm.count(Outcome.ACCEPTED), llm.count(Outcome.DUPLICATE)) == (75, 25)
        assert b[-1] is Outcome.ACCEPTED  # the final form, whichever batch went first
        assert await store.count("p") == 76
        rows = await store.usage("p", NOW.date(), NOW.date() + timedelta(days=1), "resource")
        assert {r.key: r.billable for r in rows} == oracle(first + second)
        [session] = await store.sessions("p", SessionFilter())
        assert (session.closed, session.end_cause, session.records) == (True, "shutdown", 76)


async def test_rollups_follow_checkpoint_replacement_exactly(database: str) -> None:
    async with open_store(database) as store:
        await store.ingest("p", [Stored(session_cp("S", 61_000))])  # 2 minutes so far
        await store.ingest("p", [Stored(session_cp("S", 125_000))])  # 3 minutes
        rows = await store.usage("p", NOW.date(), NOW.date() + timedelta(days=1), "resource")
        assert [(r.key, r.quantity, r.records) for r in rows] == [("agent_session", 3, 1)]
        [session] = await store.sessions("p", SessionFilter())
        assert (session.closed, session.billed_minutes) == (False, 3)
        await store.ingest("p", [Stored(session_cp("S", 130_000, status=Status.OK, meta={"end_cause": "shutdown"}))])
        await store.ingest("p", [Stored(session_cp("S", 200_000))])  # a stale checkpoint changes nothing
        rows = await store.usage("p", NOW.date(), NOW.date() + timedelta(days=1), "resource")
        assert [(r.key, r.quantity, r.records) for r in rows] == [("agent_session", 3, 1)]
        [session] = await store.sessions("p", SessionFilter())
        assert (session.closed, session.end_cause, session.records) == (True, "shutdown", 1)


async def test_summed_usage_is_priced_as_on_each_day_so_a_price_change_mid_month_applies_from_its_date(
    database: str,
) -> None:
    from livekit_metering.collector.pricing import Pricer
    from livekit_metering.pricing import PriceBook

    yesterday, today = NOW - timedelta(days=1), NOW
    cheaper = f"""
[[stt]]
model = "deepgram/nova-3"
price = "0.0010"
effective = {today.date().isoformat()}
source = "a contract that starts today"
"""
    book = PriceBook.from_toml(cheaper, base=PriceBook.bundled())
    stt = dict(resource=Resource.STT, raw=600_000, seconds=600, model="deepgram/nova-3", provider="livekit")
    records = [rec("S1", "stt-1", start=yesterday, **stt), rec("S2", "stt-1", start=today, **stt)]
    old, new = (book.price_of(r, plan="ship") for r in records)
    assert old is not None and new is not None and new < old  # the same usage, priced as on its day

    async with open_store(database) as store:
        await store.ingest("p", [Stored(r) for r in records])
        rows = await store.usage("p", yesterday.date(), today.date() + timedelta(days=1), "resource")
    pricer = Pricer(book)
    assert sum(pricer.price_of(aggregate_record(row), "ship") or 0 for row in rows) == old + new
    if yesterday.month == today.month:
        month = today.strftime("%Y-%m")
        assert pricer.invoice(rows, "ship", month) == book.invoice(records, plan="ship", month=month).to_json()


async def test_usage_groups_and_session_filters(database: str) -> None:
    records = [
        rec("A", "llm-1", raw=10, model="m1", agent_name="alice", customer="c1", room="r1"),
        rec("A", "llm-2", raw=5, model="m2", agent_name="alice", customer="c1", room="r1"),
        rec("B", "llm-1", raw=1, model="m1", agent_name="bob", customer="c2", room="r2"),
    ]
    async with open_store(database) as store:
        await store.ingest("p", [Stored(r) for r in records])
        day, after = NOW.date(), NOW.date() + timedelta(days=1)
        by: dict[str, dict[str, int]] = {"agent": {}, "room": {}}
        for group, sums in by.items():
            for row in await store.usage("p", day, after, group):
                sums[row.key] = sums.get(row.key, 0) + int(row.quantity)
        assert by == {"agent": {"alice": 15, "bob": 1}, "room": {"r1": 15, "r2": 1}}
        models = {(r.key, int(r.quantity)) for r in await store.usage("p", day, after, "model")}
        assert models == {("m1", 11), ("m2", 5)}
        assert await store.usage("p", after, after + timedelta(days=1), "resource") == []
        assert [s.session_id for s in await store.sessions("p", SessionFilter(customer="c2"))] == ["B"]
        assert [s.session_id for s in await store.sessions("p", SessionFilter(agent="alice"))] == ["A"]
        assert await store.sessions("p", SessionFilter(since=NOW + timedelta(hours=1))) == []


# -- property: redelivery, shuffling, batching and restarts never change totals -----------------


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[MeterRecord], list[list[MeterRecord]], list[bool]]:
    universe: list[MeterRecord] = []
    for s in range(draw(st.integers(1, 3))):
        sid = f"S{s}-{uuid.uuid4().hex[:6]}"
        figures = sorted(set(draw(st.lists(st.integers(1, 600_000), min_size=1, max_size=3))))
        universe += [session_cp(sid, ms) for ms in figures]
        if draw(st.booleans()):
            universe.append(session_cp(sid, figures[-1] + draw(st.integers(0, 90_000)), status=Status.OK))
        for i in range(draw(st.integers(0, 3))):
            universe.append(rec(sid, f"llm-{i}", Resource.LLM_OUTPUT, draw(st.integers(0, 5000))))
            universe.append(rec(sid, f"stt-{i}", Resource.STT, draw(st.integers(0, 90_000)), seconds=1))
    sent = [r for r in universe for _ in range(draw(st.integers(1, 5)))]
    sent = draw(st.permutations(sent))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(sent) - 1)), max_size=5))))
    batches = [sent[a:b] for a, b in zip([0, *cuts], [*cuts, len(sent)], strict=True) if sent[a:b]]
    restarts = [draw(st.booleans()) for _ in batches]
    return universe, batches, restarts


def _property(database: str, case: tuple[list[MeterRecord], list[list[MeterRecord]], list[bool]]) -> None:
    universe, batches, restarts = case

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while i < len(batches):
                async with run_collector(database) as url:
                    while i < len(batches):
                        status, doc = await post(http, url, body_of(batches[i]))
                        assert status == 200, doc
                        assert {r["status"] for r in doc["results"]} <= {"accepted", "duplicate"}
                        i += 1
                        if restarts[i - 1]:
                            break  # restart the collector before the next batch
            async with run_collector(database) as url:
                assert await usage_totals(http, url) == as_quantities(oracle(universe))

    asyncio.run(run())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries())
def test_property_sqlite_totals_equal_the_oracle(tmp_path: Path, case: tuple) -> None:  # type: ignore[type-arg]
    _property(f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db", case)


@pytest.mark.postgres
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries())
def test_property_postgres_totals_equal_the_oracle(pg_database: str, case: tuple) -> None:  # type: ignore[type-arg]
    asyncio.run(reset_pg(pg_database))
    _property(pg_database, case)


# -- several collectors on one PostgreSQL ---------------------------------------------------------


@pytest.mark.postgres
async def test_two_collectors_on_one_postgres_receive_the_same_records_concurrently(pg_database: str) -> None:
    await reset_pg(pg_database)
    records = [
        rec(f"S{i % 40}", f"llm-{i}", Resource.LLM_INPUT, 1 + i % 97, model=f"m{i % 3}", agent_name=f"a{i % 4}")
        for i in range(2400)
    ]
    batches = [records[i : i + 300] for i in range(0, len(records), 300)]
    async with (
        run_collector(pg_database) as one,
        run_collector(pg_database) as two,
        aiohttp.ClientSession() as http,
    ):
        # Every batch goes to both collectors at once, several batches in flight on each.
        results = await asyncio.gather(
            *(post(http, url, body_of(batch)) for batch in batches for url in (one, two) for _ in range(2))
        )
        assert all(status == 200 for status, _ in results)
        accepted = sum(r["status"] == "accepted" for _, doc in results for r in doc["results"])
        assert accepted == len(records)  # each id accepted exactly once across both collectors
        assert await usage_totals(http, one) == as_quantities(oracle(records))
        assert await usage_totals(http, two) == await usage_totals(http, one)


# -- durability ------------------------------------------------------------------------------------


async def test_every_sqlite_connection_is_durable(tmp_path: Path) -> None:
    """The collector acknowledges only after a commit that survives a power cut: WAL with
    synchronous=FULL on every connection the store opens (a process kill cannot tell NORMAL or OFF apart)."""
    async with open_store(f"sqlite:///{tmp_path}/durable.db") as store:
        connections = {id(c): c for c in (store._writer, store._reader, store._planner)}  # type: ignore[attr-defined]
        assert len(connections) == 3
        for conn in connections.values():
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_every_postgres_connection_commits_synchronously_whatever_the_servers_default(pg_url: str) -> None:
    import asyncpg

    name = f"lm_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO off')  # as a tuned server might
        async with open_store(pg_url.rsplit("/", 1)[0] + "/" + name) as store:
            pool = store.pool  # type: ignore[attr-defined]
            connections = [await pool.acquire() for _ in range(3)]
            try:
                for conn in connections:
                    assert await conn.fetchval("SHOW synchronous_commit") == "on"
            finally:
                for conn in connections:
                    await pool.release(conn)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_fault_in_a_group_commit_fails_every_batch_in_it(tmp_path: Path) -> None:
    """Batches of three projects share one SQLite commit; a fault while the second project's sessions
    are written (a trigger stands in for a disk error) rolls it all back: each batch gets the error,
    none waits forever, nothing is stored."""
    import sqlite3

    path = tmp_path / "fault.db"
    async with open_store(f"sqlite:///{path}") as store:
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER fault BEFORE INSERT ON sessions WHEN NEW.project = 'q'"
                " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        ingests = [store.ingest(p, [Stored(rec("S", f"llm-{p}"))]) for p in ("p", "q", "r")]
        answers = await asyncio.wait_for(asyncio.gather(*ingests, return_exceptions=True), 10)
        assert [type(a) for a in answers] == [sqlite3.IntegrityError] * 3, answers
        assert [await store.count(p) for p in ("p", "q", "r")] == [0, 0, 0]
