"""The outbox file: what it keeps, what it replaces, what it refuses, and what it counts."""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from livekit_metering.export import Backoff, Outbox
from livekit_metering.export.backoff import Backoff as _Backoff
from livekit_metering.export.client import parse_retry_after
from livekit_metering.export.store import OutboxStore, Settlement
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def usage(n: int, *, raw: int = 1000, status: Status = Status.OK, session: str = "job-1") -> MeterRecord:
    return get_policy(None).record(
        id=f"{session}/tts-{n}/tts",
        session_id=session,
        resource=Resource.TTS,
        raw=raw,
        start=T0,
        end=T0 + timedelta(seconds=1),
        status=status,
    )


def session_time(raw: int, status: Status) -> MeterRecord:
    return get_policy(None).record(
        id="job-1/session/agent_session",
        session_id="job-1",
        resource=Resource.AGENT_SESSION,
        raw=raw,
        start=T0,
        end=T0 + timedelta(milliseconds=raw),
        status=status,
    )


def pending_bodies(path: Path) -> dict[str, MeterRecord]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT id, body FROM pending").fetchall()
    return {rid: MeterRecord.model_validate_json(body) for rid, body in rows}


def test_a_record_is_in_the_file_when_export_returns(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    record = usage(1)
    outbox.export([record])
    # A second connection (another process would do the same) sees it already committed.
    assert pending_bodies(tmp_path / "o.sqlite3") == {record.id: record}
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    outbox.close()


def test_the_newest_running_figure_replaces_older_ones_and_the_final_form_is_never_replaced(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite3")
    final = session_time(125_000, Status.OK)
    store.put([session_time(60_000, Status.CHECKPOINT)])
    store.put([session_time(30_000, Status.CHECKPOINT)])  # older figure, arriving late: ignored
    assert pending_bodies(store.path)[final.id].raw == 60_000
    store.put([final])
    store.put([session_time(180_000, Status.CHECKPOINT)])  # a checkpoint after the final form is stale
    assert pending_bodies(store.path) == {final.id: final}
    assert store.health().pending == 1
    store.close()


def test_an_answer_about_an_older_form_never_deletes_the_newer_one(tmp_path: Path) -> None:
    # The sender posts a checkpoint; while it is in flight the final form replaces it in the file;
    # the collector's "accepted" for the checkpoint must not delete the final form.
    store = OutboxStore(tmp_path / "o.sqlite3")
    store.put([session_time(60_000, Status.CHECKPOINT)])
    (in_flight,) = store.claim(10, 1 << 20)
    final = session_time(125_000, Status.OK)
    store.put([final])
    store.settle([Settlement(in_flight.id, in_flight.version)])
    assert pending_bodies(store.path) == {final.id: final}
    store.settle([Settlement(in_flight.id, in_flight.version, dead=True, status="rejected", reason="x")])
    assert store.health().dead_letters == 0 and store.health().pending == 1
    (again,) = store.claim(10, 1 << 20)
    store.settle([Settlement(again.id, again.version)])
    assert store.health().pending == 0
    store.close()


def test_past_the_record_cap_new_records_are_dropped_counted_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_records=10)
    with caplog.at_level(logging.WARNING, logger="livekit_metering"):
        outbox.export([usage(i) for i in range(15)])
        outbox.export([usage(i) for i in range(15, 18)])
    health = outbox.health()
    assert (health.pending, health.dropped) == (10, 8)
    assert "is full" in caplog.text
    assert caplog.text.count("is full") == 1, "one warning per episode, not one per record"
    outbox.close()
    reopened = Outbox(tmp_path / "o.sqlite3", max_records=10)
    assert reopened.health().dropped == 8, "the loss counter is persisted"
    reopened.close()


def test_at_the_cap_the_final_form_of_a_pending_usage_still_replaces_its_checkpoint(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite3", max_records=2)
    store.put([session_time(60_000, Status.CHECKPOINT), usage(1)])
    final = session_time(125_000, Status.OK)
    assert store.put([usage(2), final]) == 1
    assert pending_bodies(store.path)[final.id] == final
    store.close()


def test_past_the_byte_cap_new_records_are_dropped(tmp_path: Path) -> None:
    size = len(usage(0).model_dump_json())
    store = OutboxStore(tmp_path / "o.sqlite3", max_bytes=size * 5 + 10)
    assert store.put([usage(i) for i in range(8)]) == 3
    health = store.health()
    assert health.pending == 5 and health.pending_bytes <= store.max_bytes
    store.settle([Settlement(p.id, p.version) for p in store.claim(2, 1 << 20)])
    assert store.put([usage(100)]) == 0, "space freed by delivery is usable again"
    assert store.health().pending_bytes == sum(len(b) for b in _bodies(store.path))
    store.close()


def _bodies(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM pending")]


def test_claim_batches_by_count_and_by_bytes_in_arrival_order(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite3")
    store.put([usage(i) for i in range(10)])
    assert [p.id for p in store.claim(3, 1 << 20)] == [usage(i).id for i in range(3)]
    size = len(usage(0).model_dump_json())
    assert len(store.claim(100, size * 4 + 1)) == 4
    assert len(store.claim(100, 1)) == 1, "a record bigger than the byte budget still goes, alone"
    store.close()


def test_after_a_complete_checkpoint_the_sender_restarts_the_wal_not_the_next_export(tmp_path: Path) -> None:
    # The commit that restarts the WAL fsyncs its header (1-2 ms): it must not be an export's.
    store = OutboxStore(tmp_path / "o.sqlite3")
    wal = tmp_path / "o.sqlite3-wal"

    def salt() -> bytes:
        return wal.read_bytes()[16:20]  # changes each time the WAL restarts from its start

    store.put([usage(1)])
    store.put([usage(2)])
    before = salt()
    store.checkpoint()
    restarted = salt()
    assert restarted != before
    store.put([usage(3)])
    assert salt() == restarted
    assert [p.id for p in store.claim(10, 1 << 20)] == [usage(n).id for n in (1, 2, 3)]
    store.close()


def test_health_reports_the_age_of_the_oldest_pending_record(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite3")
    assert store.health().oldest_pending_age_s is None
    store.put([usage(1)])
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE pending SET created = created - 90")
    age = store.health().oldest_pending_age_s
    assert age is not None and 90 <= age < 200
    store.close()


def test_a_file_from_a_newer_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="newer livekit-metering"):
        OutboxStore(tmp_path / "o.sqlite3")


def test_bad_caps_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_records"):
        OutboxStore(tmp_path / "o.sqlite3", max_records=0)


def test_backoff_is_full_jitter_doubling_to_a_cap_and_honours_retry_after() -> None:
    highest = _Backoff(0.5, 8.0, rng=lambda: 1.0)
    assert [highest.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    lowest = Backoff(0.5, 8.0, rng=lambda: 0.0)
    assert lowest.next() == 0.0, "full jitter: any delay from zero up"
    assert lowest.next(retry_after=3.0) == 3.0
    assert lowest.next(retry_after=10_000) == 300.0, "an absurd Retry-After is capped"
    lowest.reset()
    assert lowest.attempt == 0


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = (datetime.now(timezone.utc) + timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = parse_retry_after(later)
    assert seconds is not None and 100 < seconds <= 121


def test_dead_letters_keep_the_latest_refusals_and_count_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livekit_metering.export import store as store_module

    monkeypatch.setattr(store_module, "DEAD_LETTER_KEEP", 3)
    store = OutboxStore(tmp_path / "o.sqlite3")
    store.put([usage(i) for i in range(5)])
    claimed = store.claim(10, 1 << 20)
    store.settle(
        [Settlement(p.id, p.version, dead=True, status="rejected", reason=f"r{i}") for i, p in enumerate(claimed)]
    )
    assert [d[2] for d in store.dead_letters()] == ["r2", "r3", "r4"]
    health = store.health()
    assert (health.dead_letters, health.pending) == (5, 0)
    store.close()


WRITER = """
import sys
from datetime import datetime, timedelta, timezone
from livekit_metering.export import Outbox
from livekit_metering.rates import get_policy
from livekit_metering.records import Resource
t0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
outbox = Outbox(sys.argv[1])
template = get_policy(None).record(id="x", session_id=sys.argv[2], resource=Resource.TTS, raw=1, start=t0, end=t0)
for i in range(int(sys.argv[3])):
    outbox.export([template.model_copy(update={"id": f"{sys.argv[2]}/tts-{i}/tts"})])
"""


def test_job_processes_of_one_host_write_the_same_file_at_once_without_losing_a_record(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    path = tmp_path / "o.sqlite3"
    OutboxStore(path).close()  # created up front, as the first job of the host would
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"job-{n}", "3000"], env=env) for n in range(3)
    ]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    store = OutboxStore(path)
    assert store.health().pending == 9000
    assert len(pending_bodies(path)) == 9000
    store.close()
