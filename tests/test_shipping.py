"""Shipping under faults: every record written to the outbox reaches the collector exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_shipping_collector import API_KEY, API_SECRET, StandInCollector, collector, free_port

from livekit_metering.export import Backoff, FanoutExporter, LogExporter, Outbox, default_exporter
from livekit_metering.export.file import FileExporter
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

__all__ = ["collector"]  # the stand-in collector fixture, shared with the other shipping tests

MakeOutbox = Callable[..., Outbox]
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def records(n: int, session: str = "job-1", *, status: Status = Status.OK, raw: int = 1200) -> list[MeterRecord]:
    policy = get_policy(None)
    return [
        policy.record(
            id=f"{session}/llm-{i}/llm_output",
            session_id=session,
            resource=Resource.LLM_OUTPUT,
            raw=raw,
            start=T0,
            end=T0 + timedelta(seconds=1),
            status=status,
            model="openai/gpt-4.1-mini",
        )
        for i in range(n)
    ]


def session_record(raw: int, status: Status, session: str = "job-1") -> MeterRecord:
    return get_policy(None).record(
        id=f"{session}/session/agent_session",
        session_id=session,
        resource=Resource.AGENT_SESSION,
        raw=raw,
        start=T0,
        end=T0 + timedelta(milliseconds=raw),
        status=status,
    )


@pytest.fixture
def make_outbox(tmp_path: Path) -> Iterator[MakeOutbox]:
    made: list[Outbox] = []

    def make(url: str | None, path: Path | None = None, **options: Any) -> Outbox:
        options.setdefault("backoff", Backoff(0.02, 0.2))
        options.setdefault("interval", 0.05)
        options.setdefault("shutdown_timeout", 0.5)
        path = path or tmp_path / "outbox.sqlite3"
        outbox = Outbox(path, url=url, api_key=API_KEY, api_secret=API_SECRET, **options)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


def export_all(outbox: Outbox, batch: list[MeterRecord], size: int = 7) -> None:
    for start in range(0, len(batch), size):
        outbox.export(batch[start : start + size])


def assert_exactly_once(collector: StandInCollector, sent: list[MeterRecord]) -> None:
    store = collector.call(lambda: dict(collector.store))
    accepted = collector.call(lambda: dict(collector.accepted))
    assert set(store) == {r.id for r in sent}, "every record arrives"
    assert all(store[r.id] == r for r in sent), "each arrives intact"
    assert set(accepted.values()) == {1}, "none is stored twice"


def test_collector_down_for_the_whole_session_then_up_delivers_every_record_exactly_once(
    make_outbox: MakeOutbox,
) -> None:
    collector = StandInCollector(port=free_port())  # not listening yet
    outbox = make_outbox(collector.url)
    sent = records(500)
    export_all(outbox, sent)
    assert not outbox.flush(0.3), "nothing can be delivered while the collector is down"
    health = outbox.health()
    assert health.pending == 500 and health.oldest_pending_age_s is not None
    assert health.last_error and "cannot reach the collector" in health.last_error

    collector.start()
    try:
        assert outbox.flush(15)
        assert_exactly_once(collector, sent)
        health = outbox.health()
        assert (health.pending, health.pending_bytes, health.dropped, health.dead_letters) == (0, 0, 0, 0)
        assert health.sent == 500 and health.last_error is None
    finally:
        collector.stop()


def test_429_503_lost_responses_resets_and_slow_answers_lose_nothing_and_duplicate_nothing(
    make_outbox: MakeOutbox,
    collector: StandInCollector,
) -> None:
    collector.faults = ["429", "503", "commit-then-drop", "reset", "500", "slow", "commit-then-drop", "429", "reset"]
    collector.slow_s = 1.0
    outbox = make_outbox(collector.url, max_batch=40, request_timeout=0.3)
    sent = records(400)
    export_all(outbox, sent)
    assert outbox.flush(20)
    assert_exactly_once(collector, sent)
    assert collector.faults == [], "every fault was exercised"
    assert outbox.health().dead_letters == 0


def test_checkpoints_then_final_form_arrive_as_the_final_form(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    collector.faults = ["503"]
    outbox = make_outbox(collector.url)
    final = session_record(125_000, Status.OK)
    for raw in (30_000, 60_000, 90_000):
        outbox.export([session_record(raw, Status.CHECKPOINT)])
    outbox.export([final])
    outbox.export([session_record(120_000, Status.CHECKPOINT)])  # late, stale: must not replace the final form
    assert outbox.flush(10)
    assert collector.call(lambda: collector.store[final.id]) == final


def test_rejected_and_conflicting_records_go_to_dead_letters_with_the_reason(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    sent = records(20)
    collector.reject_ids = {sent[3].id}
    other = records(1, raw=999)[0]  # same id as sent[0], a different final payload
    collector.call(lambda: collector.ingest(other))
    outbox = make_outbox(collector.url)
    export_all(outbox, sent)
    assert outbox.flush(10)
    dead = {rid: (status, reason) for rid, status, reason, _ in outbox.dead_letters()}
    assert dead == {
        sent[3].id: ("rejected", "end: outside the accepted window"),
        sent[0].id: ("conflict", "a different final form is already stored"),
    }
    health = outbox.health()
    assert (health.pending, health.dead_letters) == (0, 2)
    assert not health.ok


def test_a_batch_refused_whole_is_split_until_the_bad_record_is_dead_lettered(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    sent = records(64)
    collector.poison_ids = {sent[37].id}
    outbox = make_outbox(collector.url)
    export_all(outbox, sent, size=64)
    assert outbox.flush(10)
    assert [d[:2] for d in outbox.dead_letters()] == [(sent[37].id, "refused")]
    assert "HTTP 400" in outbox.dead_letters()[0][2]
    assert collector.call(lambda: set(collector.store)) == {r.id for r in sent} - {sent[37].id}


def test_large_batches_are_gzipped_and_every_request_is_signed_over_the_bytes_sent(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    outbox = make_outbox(collector.url, gzip_min_bytes=2048)
    sent = records(300)
    export_all(outbox, sent, size=300)
    assert outbox.flush(10)
    assert_exactly_once(collector, sent)
    assert collector.gzipped_requests >= 1
    assert collector.bad_signatures == 0


def test_a_wrong_secret_keeps_records_on_disk_instead_of_dropping_them(
    tmp_path: Path, collector: StandInCollector
) -> None:
    outbox = Outbox(
        tmp_path / "o.sqlite3",
        url=collector.url,
        api_key=API_KEY,
        api_secret="a-wrong-secret-that-is-long-enough-000",
        backoff=Backoff(0.02, 0.1),
        interval=0.05,
        shutdown_timeout=0.3,
    )
    try:
        outbox.export(records(5))
        assert not outbox.flush(0.5)
        health = outbox.health()
        assert (health.pending, health.dead_letters) == (5, 0)
        assert health.last_error and "401" in health.last_error
    finally:
        outbox.close()


def test_shutdown_leaves_what_it_could_not_send_for_the_next_process_on_the_host(
    make_outbox: MakeOutbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = StandInCollector(port=free_port())
    first = make_outbox(collector.url)
    sent = records(100)
    export_all(first, sent)
    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        first.shutdown(timeout=0.3)
    assert "pending=100" in caplog.text, "health is logged at shutdown"
    assert first.health().pending == 100

    collector.start()
    try:
        second = make_outbox(collector.url)  # same file: a later job process on the same host
        assert second.flush(10)
        assert_exactly_once(collector, sent)
        assert first.health().pending == 0
    finally:
        collector.stop()


def test_only_one_process_sends_a_file_and_the_others_records_go_with_it(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    leader = make_outbox(collector.url)
    assert leader.flush(5)  # holds the sender lock from now on
    follower = make_outbox(collector.url)
    sent = records(50)
    export_all(follower, sent)
    assert not follower.flush(1.0), "the follower does not send: it reports the records left to the leader"
    assert leader.flush(10)
    assert_exactly_once(collector, sent)


def test_log_sink_writes_one_line_per_record(caplog: pytest.LogCaptureFixture) -> None:
    sent = records(3)
    with caplog.at_level(logging.INFO, logger="livekit_metering.records"):
        LogExporter().export(sent)
    lines = [r for r in caplog.records if r.name == "livekit_metering.records"]
    assert len(lines) == 3
    assert lines[1].getMessage().startswith(f"llm_output 1200 token {sent[1].id} {{")
    assert MeterRecord.model_validate_json(lines[1].getMessage().split(" ", 4)[4]) == sent[1]


def test_fanout_reaches_every_sink_even_when_one_fails(tmp_path: Path) -> None:
    class Broken:
        def export(self, batch: object) -> None:
            raise OSError("disk full")

        def shutdown(self) -> None:
            pass

    file = FileExporter(tmp_path / "r.jsonl")
    fanout = FanoutExporter(Broken(), file)
    with pytest.raises(OSError, match="disk full"):
        fanout.export(records(2))
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_default_exporter_ships_when_a_url_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_METERING_OUTBOX", str(tmp_path / "env-outbox.sqlite3"))
    monkeypatch.delenv("LIVEKIT_METERING_FILE", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LIVEKIT_METERING_URL", url)
    exporter = default_exporter()
    assert isinstance(exporter, Outbox) and exporter.path == tmp_path / "env-outbox.sqlite3"
    assert default_exporter() is exporter, "one outbox per process, shared by every session"
    both = default_exporter(file=tmp_path / "r.jsonl")
    assert isinstance(both, FanoutExporter) and both.exporters[0] is exporter
    monkeypatch.delenv("LIVEKIT_METERING_URL")
    assert isinstance(default_exporter(file=tmp_path / "r.jsonl"), FileExporter)
    exporter.close()


def test_a_bad_collector_url_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no scheme: write https://collector:8080"):
        Outbox(tmp_path / "o.sqlite3", url="collector:8080")
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        Outbox(tmp_path / "o.sqlite3", url="ftp://collector:8080")


async def test_ashutdown_fits_a_livekit_shutdown_callback_and_does_not_block_the_loop(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    outbox = make_outbox(collector.url)
    # livekit-agents passes the shutdown reason to callbacks taking a positional argument
    # (FINDINGS.md §5); the budget is keyword-only so the reason is never taken for it.
    assert outbox.ashutdown.__code__.co_argcount == 1
    sent = records(20)
    outbox.export(sent)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await outbox.ashutdown()
    ticker.cancel()
    assert_exactly_once(collector, sent)
    assert ticks > 1, "the loop kept running during the flush"


def test_the_outbox_command_shows_health_and_flushes(
    tmp_path: Path, collector: StandInCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from livekit_metering.cli import app

    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)
    path = tmp_path / "o.sqlite3"
    writer = Outbox(path)  # no URL: the records wait on disk
    writer.export(records(12))
    writer.close()
    runner = CliRunner()
    shown = runner.invoke(app, ["outbox", "--path", str(path)])
    assert shown.exit_code == 0 and "pending=12" in shown.output
    flushed = runner.invoke(app, ["outbox", "--path", str(path), "--flush", "--url", collector.url, "--timeout", "10"])
    assert flushed.exit_code == 0, flushed.output
    assert "sent 12, the outbox is empty" in flushed.output and "pending=0" in flushed.output
    assert "sent=12" in flushed.output  # what this flush delivered, not the fresh store's 0
    assert len(collector.call(lambda: collector.store)) == 12
    missing = runner.invoke(app, ["outbox", "--path", str(tmp_path / "nope.sqlite3")])
    assert missing.exit_code == 2 and "no outbox at" in missing.output
    assert not (tmp_path / "nope.sqlite3").exists()


def test_an_outbox_flush_that_fails_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livekit_metering.cli import app

    path = tmp_path / "o.sqlite3"
    writer = Outbox(path)
    writer.export(records(5))
    writer.close()
    dead_port = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(app, ["outbox", "--path", str(path), "--flush", "--url", dead_port, "--timeout", "1"])
    assert result.exit_code == 1
    assert "flush: sent 0, 5 still pending" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: the flush did not empty the outbox within 1s: 5 pending (last error:")


def test_the_outbox_command_refuses_a_file_that_is_not_an_outbox(tmp_path: Path) -> None:
    import sqlite3

    from typer.testing import CliRunner

    from livekit_metering.cli import app

    jsonl = tmp_path / "records.jsonl"
    FileExporter(jsonl).export(records(2))
    collector_db = tmp_path / "metering.db"
    sqlite3.connect(collector_db).execute("CREATE TABLE records (id TEXT)").connection.commit()
    for file in (jsonl, collector_db, tmp_path):
        before = file.read_bytes() if file.is_file() else None
        result = CliRunner().invoke(app, ["outbox", "--path", str(file)])
        assert result.exit_code == 2, result.output
        assert "not a livekit-metering outbox" in result.stderr or "is a directory" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
        assert before is None or file.read_bytes() == before  # nothing added to it


def test_dead_letters_can_be_retried_or_cleared_from_the_command_line(
    tmp_path: Path, collector: StandInCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from livekit_metering.cli import app

    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)
    path = tmp_path / "o.sqlite3"
    batch = records(6)
    collector.call(lambda: collector.reject_ids.update(r.id for r in batch[:4]))
    outbox = Outbox(path, url=collector.url)
    outbox.export(batch)
    assert outbox.flush(10)
    assert outbox.health().dead_letters == 4
    outbox.close()
    runner = CliRunner()
    shown = runner.invoke(app, ["outbox", "--path", str(path)])
    assert "dead_letters=4" in shown.stdout and shown.stdout.count("dead letter ") == 4

    # The cause fixed (the collector now takes them): put them back and send them.
    collector.call(lambda: collector.reject_ids.clear())
    args = ["outbox", "--path", str(path), "--retry-dead", "--flush", "--url", collector.url, "--timeout", "10"]
    retried = runner.invoke(app, args)
    assert retried.exit_code == 0, retried.output
    assert "dead letters put back to send again: 4" in retried.stdout
    assert "sent 4, the outbox is empty" in retried.stdout
    assert "dead_letters=0" in retried.stdout
    assert set(collector.call(lambda: list(collector.store))) == {r.id for r in batch}

    # Refused again, then given up.
    again = records(3, session="job-2")
    collector.call(lambda: collector.reject_ids.update(r.id for r in again))
    outbox = Outbox(path, url=collector.url)
    outbox.export(again)
    assert outbox.flush(10)
    outbox.close()
    cleared = runner.invoke(app, ["outbox", "--path", str(path), "--clear-dead"])
    assert cleared.exit_code == 0 and "dead letters cleared: 3" in cleared.stdout and "dead_letters=0" in cleared.stdout
    both = runner.invoke(app, ["outbox", "--path", str(path), "--clear-dead", "--retry-dead"])
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_a_wrong_collector_path_keeps_records_instead_of_dead_lettering_them(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    outbox = make_outbox(collector.url + "/not-the-collector")
    outbox.export(records(8))
    assert not outbox.flush(0.5)
    health = outbox.health()
    assert (health.pending, health.dead_letters) == (8, 0)
    assert health.last_error and "404" in health.last_error and "LIVEKIT_METERING_URL" in health.last_error


def test_retry_after_is_honoured(make_outbox: MakeOutbox, collector: StandInCollector) -> None:
    collector.faults = ["429"]
    collector.retry_after = "1"
    outbox = make_outbox(collector.url, backoff=Backoff(0.01, 0.02))  # our own backoff alone would retry at once
    sent = records(3)
    outbox.export(sent)
    assert outbox.flush(10)
    first, second = collector.request_times[:2]
    assert second - first >= 0.9, "the retry waited for the server's Retry-After"
    assert_exactly_once(collector, sent)


def test_shutdown_returns_within_its_budget_when_the_collector_hangs(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    collector.faults = ["slow"] * 5
    collector.slow_s = 6.0
    outbox = make_outbox(collector.url, request_timeout=30.0)
    outbox.export(records(5))
    began = time.monotonic()
    outbox.shutdown(timeout=1.0)
    # Generous bound: what matters is fitting livekit-agents' ~10 s shutdown window.
    assert time.monotonic() - began < 8.0
    assert outbox.health().pending == 5, "the unsent records stay on disk for the next process"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_record_exported_while_a_batch_is_in_flight_goes_next_not_at_the_next_poll(
    make_outbox: MakeOutbox, collector: StandInCollector
) -> None:
    collector.faults = ["slow"]  # the first answer takes 0.5 s: the second export lands meanwhile
    outbox = make_outbox(collector.url, interval=30.0, max_batch=2)  # wakes the sender on every record
    first, second = records(1, "job-a"), records(1, "job-b")
    outbox.export(first)
    assert wait_until(lambda: collector.requests == 1, 10), "the first record is on its way"
    outbox.export(second)
    began = time.monotonic()
    assert wait_until(lambda: len(collector.call(lambda: dict(collector.store))) == 2, 10), (
        "the second record waited for the 30 s poll: its wake-up arrived mid-send and was lost"
    )
    assert time.monotonic() - began < 10
    assert_exactly_once(collector, first + second)
