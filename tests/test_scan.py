"""Reading records files: one validation wherever records are read, bad lines skipped and counted (or
fatal with --strict), exit codes that say so, and the same figures when a large file spills to disk."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from usage_samples import hand_cost, month_of_sessions, session_records

from livekit_metering.cli import app
from livekit_metering.collector.config import Limits
from livekit_metering.collector.ingest import check_batch
from livekit_metering.export import FileExporter
from livekit_metering.pricing import Costing, PriceBook
from livekit_metering.records import MeterRecord, Resource
from livekit_metering.report import FileSource, Window
from livekit_metering.scan import RecordsFile, latest, merged, partitioned

runner = CliRunner()
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def records() -> list[MeterRecord]:
    return month_of_sessions(NOW - timedelta(days=30), unpriced=False)


def good(records: list[MeterRecord]) -> dict[str, Any]:
    return records[0].to_json()


PER_SECOND = "per-second-10s-minimum"

# What the collector refuses and a file reader used to take: each one a record a collector would reject.
BAD_RECORDS = [
    (
        "quantity 1 for raw 47,000 ms per second",
        {"resource": "agent_session", "raw": 47_000, "unit": "second", "quantity": "1", "policy": PER_SECOND},
    ),
    ("1.5 minutes for 47,000 ms", {"resource": "agent_session", "raw": 47_000, "unit": "minute", "quantity": "1.5"}),
    ("an unknown policy", {"policy": "nope"}),
    ("a unit that does not fit", {"unit": "token"}),
    ("a float quantity", {"quantity": 1.0}),
    ("a negative raw", {"raw": -5}),
    ("an extra field", {"price": "0.01"}),
]


@pytest.mark.parametrize(("what", "change"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_a_file_reader_refuses_what_the_collector_refuses(
    tmp_path: Path, records: list[MeterRecord], what: str, change: dict[str, Any]
) -> None:
    bad = {**good(records), "id": "bad-1", **change}
    verdict = check_batch(json.dumps({"records": [bad]}).encode(), Limits())
    assert verdict[0].item is None and verdict[0].reason, what  # the collector's answer: rejected
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    file = RecordsFile(path)
    assert list(file.records()) == [] and file.skipped.count == 1, what
    code, _, err = run("invoice", str(path), "--month", NOW.strftime("%Y-%m"), "--strict")
    assert code == 2 and f"{path}:1" in err, what


def test_bad_lines_are_skipped_counted_and_the_first_named(tmp_path: Path, records: list[MeterRecord]) -> None:
    path = tmp_path / "records.jsonl"
    lines = [r.canonical() for r in records]
    lines.insert(3, "{not json")
    lines.insert(10, json.dumps({**good(records), "id": "z", "policy": "nope"}))
    for n in range(6):
        lines.insert(20 + n, f"garbage {n}")
    # A crash cut the last line short: no newline, half a record.
    path.write_text("\n".join(lines) + "\n" + records[0].canonical()[:57])
    code, out, err = run("report", str(path), "--group-by", "customer", "--format", "json")
    assert code == 3, err
    assert "skipped 9 bad lines" in err and "line 4:" in err and "line 11: unknown rate policy 'nope'" in err
    assert "and 4 more" in err and err.count("\n") == 1  # one line, the first five named
    total = sum(c for r in records if (c := hand_cost(r)) is not None)
    assert Decimal(json.loads(out)["total"]) == total  # every good line counted

    code, _, err = run("invoice", str(path), "--month", (NOW - timedelta(days=30)).strftime("%Y-%m"))
    assert code == 3 and "skipped 9 bad lines" in err and "Agent session" not in err
    code, out, err = run("report", str(path), "--strict")
    assert code == 2 and f"{path}:4:" in err and out == ""


def test_a_clean_file_exits_zero_and_says_nothing(tmp_path: Path, records: list[MeterRecord]) -> None:
    path = tmp_path / "records.jsonl"
    FileExporter(path).export(records)
    code, _, err = run("report", str(path))
    assert (code, err) == (0, "")
    code, _, err = run("invoice", str(path), "--month", NOW.strftime("%Y-%m"))
    assert (code, err) == (0, "")


def test_an_overlong_line_is_skipped_without_being_held(tmp_path: Path, records: list[MeterRecord]) -> None:
    path = tmp_path / "records.jsonl"
    with path.open("w") as handle:
        handle.write(records[0].canonical() + "\n")
        handle.write('{"id": "' + "x" * (3 << 20) + '"}\n')  # 3 MiB on one line
        handle.write(records[1].canonical() + "\n")
    file = RecordsFile(path)
    assert [r.id for r in file.records()] == [records[0].id, records[1].id]
    assert file.skipped.count == 1 and "longer than" in file.skipped.named[0][1] and file.skipped.named[0][0] == 2


def test_a_resent_final_record_counts_once_in_the_invoice(tmp_path: Path) -> None:
    at = datetime(2026, 11, 3, 10, tzinfo=timezone.utc)
    session = session_records("AJ_resend", at, 125, room="r", agent="a", customer="c")
    path = tmp_path / "records.jsonl"
    FileExporter(path).export(session + session)  # the same final records twice, byte for byte
    code, out, _ = run("invoice", str(path), "--month", "2026-11", "--format", "json")
    assert code == 0
    lines = {(ln["resource"], ln["model"]): ln for ln in json.loads(out)["lines"]}
    assert lines[("agent_session", "")]["quantity"] == "3"  # 125 s bills 3 minutes, once
    assert lines[("tts", "cartesia/sonic-3")]["quantity"] == str(350 * 12 + 13)


# -- the same figures when the file does not fit the memory budget ----------------------------------------


def test_partitioned_keeps_each_key_together_and_in_order() -> None:
    items = [(f"k{i % 37}", i) for i in range(5000)]
    for limit in (10_000, 100):  # in memory, then spilled
        parts = list(partitioned(items, lambda item: item[0], limit=limit, partitions=8))
        assert sorted(x for part in parts for x in part) == sorted(items)
        for part in parts:
            for key in {k for k, _ in part}:
                mine = [i for k, i in part if k == key]
                assert mine == sorted(mine) and len(mine) == len([1 for k, _ in items if k == key])
    runs = [sorted(random.Random(n).sample(range(10_000), 300)) for n in range(5)]
    assert list(merged(runs, lambda x: x)) == sorted(x for run in runs for x in run)


def test_latest_spilled_agrees_with_latest_in_memory() -> None:
    facts = []
    rng = random.Random(7)
    for i in range(3000):
        key = f"id-{rng.randrange(800)}"
        facts.append((key, rng.random() < 0.3, rng.randrange(100), rng.randrange(50), i))
    small = sorted(latest(facts, limit=10**6))
    assert sorted(latest(facts, limit=50, partitions=16)) == small
    # The rule itself: the first final form stands; else the checkpoint with the latest (end, raw).
    by_id: dict[str, list[tuple[Any, ...]]] = {}
    for fact in facts:
        by_id.setdefault(fact[0], []).append(fact)
    for fact in small:
        forms = by_id[fact[0]]
        finals = [f for f in forms if f[1]]
        if finals:
            assert fact == finals[0]
        else:
            assert (fact[2], fact[3]) == max((f[2], f[3]) for f in forms)


@pytest.mark.parametrize("group_by", [None, "customer", "room", "day"])
def test_a_report_that_spills_gives_the_same_figures(
    tmp_path: Path, records: list[MeterRecord], group_by: str | None
) -> None:
    path = tmp_path / "records.jsonl"
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    where = {r.session_id: {"room": r.room, "agent": r.agent_name, "customer": r.customer} for r in records}
    starts = {r.session_id: r.start for r in records if r.resource is Resource.AGENT_SESSION}
    checkpoints = [session_records(sid, at, 30, **where[sid], checkpoint=True)[0] for sid, at in starts.items()]
    FileExporter(path).export(checkpoints + shuffled + shuffled[:40])
    costing = Costing(PriceBook.bundled())
    whole = FileSource(path)
    spilled = FileSource(path, limit=7)  # a handful of lines in memory at a time
    if group_by is None:
        a = [s.to_json() for s in whole.sessions(Window(), costing, None)]
        b = [s.to_json() for s in spilled.sessions(Window(), costing, None)]
        assert len(a) == 12
    else:
        a = [line.to_json() for line in whole.usage(group_by, Window(), costing, None)]
        b = [line.to_json() for line in spilled.usage(group_by, Window(), costing, None)]
    assert a == b and a
    total = sum(Decimal(x["cost"]) for x in a)
    assert total == sum(c for r in records if (c := hand_cost(r)) is not None)
