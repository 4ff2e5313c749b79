"""Options through a real metered job: every LIVEKIT_METERING_* variable changes what the job records and
costs, and a record that cannot go where configured lands in the local JSON-lines file, never nowhere."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from harness.jobproc import JOB_ID, FakeRoom, ManualClock, run_job
from livekit.agents import JobContext

from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.export.config import default_records_file
from livekit_metering.meter import Meter, current_meter
from livekit_metering.records import Resource, Status, Unit

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)  # the manual clock's wall time

# A contract price book: the Scale plan's agent minute at $0.07 and a TTS voice the bundled book lacks.
CONTRACT = """
[[resource]]
plan = "scale"
resource = "agent_session"
price = "0.07"
per = "minute"
effective = 2026-10-01
source = "test contract"

[[tts]]
model = "acme/voice"
price = "30"
effective = 2026-01-01
source = "test contract"
"""


def _cost_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "livekit_metering" and r.getMessage().startswith("session ")]


async def test_every_environment_option_reaches_the_job(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prices = tmp_path / "contract.toml"
    prices.write_text(CONTRACT)
    out = tmp_path / "records.jsonl"
    monkeypatch.setenv("LIVEKIT_METERING_FILE", str(out))
    monkeypatch.setenv("LIVEKIT_METERING_PLAN", "scale")
    monkeypatch.setenv("LIVEKIT_METERING_PRICES", str(prices))
    monkeypatch.setenv("LIVEKIT_METERING_POLICY", "per-second-10s-minimum")
    monkeypatch.setenv("LIVEKIT_METERING_CHECKPOINT_INTERVAL", "0.02")
    monkeypatch.setenv("LIVEKIT_METERING_CUSTOMER", "account")
    monkeypatch.setenv("LIVEKIT_METERING_PREVIEW", "1")
    clock = ManualClock()

    async def entry(ctx: JobContext) -> None:
        import asyncio

        await ctx.connect()
        meter = current_meter()
        end = T0 + timedelta(seconds=1)
        meter.record(Resource.TTS, 1000, usage=meter.next_usage("tts"), start=T0, end=end, model="acme/voice")
        await asyncio.sleep(0.2)  # real time: several checkpoints at 0.02 s, none at the default 15 s
        clock.advance(126)
        ctx.shutdown("done")

    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        await run_job(metered(entry, clock=clock), room=FakeRoom(), metadata=json.dumps({"account": "acme"}))

    every = read_records(out, latest=False)  # LIVEKIT_METERING_FILE
    sessions = [r for r in every if r.resource is Resource.AGENT_SESSION]
    assert len([r for r in sessions if r.status is Status.CHECKPOINT]) >= 3  # ..._CHECKPOINT_INTERVAL
    (final,) = [r for r in sessions if r.is_final]
    # ..._POLICY: 126 s in seconds (the default policy would bill 3 minutes).
    assert (final.policy, final.unit, final.quantity) == ("per-second-10s-minimum", Unit.SECOND, 126)
    assert {r.customer for r in every} == {"acme"}  # ..._CUSTOMER: the key looked up in the job metadata

    # ..._PLAN and ..._PRICES, by hand: 126 s = 2.1 minutes at $0.07 = $0.147; 1,000 characters at
    # $30 per 1M = $0.03; $0.177 in all. (Bundled Ship prices: 2.1 x $0.01 and the voice unpriced.)
    (line,) = _cost_lines(caplog)
    text = line.getMessage()
    assert "cost=$0.177 " in text and "plan=scale" in text and "unpriced" not in text, text
    summary: dict[str, Any] = line.livekit_metering  # type: ignore[attr-defined]
    assert Decimal(summary["cost"]) == Decimal("0.177") and summary["unpriced"] == [] and summary["plan"] == "scale"

    printed = capsys.readouterr().err  # ..._PREVIEW: the running cost and the closing table
    assert "session so far" in printed and "$0.1770" in printed


async def test_a_session_cost_with_unpriced_usage_shows_the_priced_part_and_names_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        meter = current_meter()
        meter.record(Resource.TTS, 2000, usage="tts-1", start=T0, end=T0, model="cartesia/sonic-3")
        meter.record(Resource.TTS, 500, usage="tts-2", start=T0, end=T0, model="acme/unknown")
        clock.advance(61)
        ctx.shutdown("done")

    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        await run_job(metered(entry, file=tmp_path / "r.jsonl", clock=clock), room=FakeRoom())

    # Ship list prices by hand: 61 s bills 2 minutes at $0.01 = $0.02; 2,000 sonic-3 characters at
    # $50 per 1M = $0.10; $0.12 priced, and the unknown voice named, not counted as $0.
    (line,) = _cost_lines(caplog)
    text = line.getMessage()
    assert "cost=$0.12 unpriced=acme/unknown " in text, text
    summary: dict[str, Any] = line.livekit_metering  # type: ignore[attr-defined]
    assert (Decimal(summary["cost"]), summary["unpriced"]) == (Decimal("0.12"), ["acme/unknown"])


class BrokenExporter:
    def __init__(self) -> None:
        self.calls = 0

    def export(self, batch: Any) -> None:
        self.calls += 1
        raise OSError("disk full")

    def shutdown(self) -> None:
        pass

    def __repr__(self) -> str:
        return "BrokenExporter()"


async def test_records_the_exporter_refuses_go_to_the_local_file_and_it_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    broken = BrokenExporter()

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        meter = current_meter()
        for n in range(3):
            meter.record(Resource.LLM_OUTPUT, 10 + n, usage=meter.next_usage("llm"), start=T0, end=T0, model="x/y")
        clock.advance(30)
        ctx.shutdown("done")

    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        await run_job(metered(entry, exporter=broken, clock=clock), room=FakeRoom())

    kept = read_records(default_records_file())
    assert sorted(r.raw for r in kept if r.resource is Resource.LLM_OUTPUT) == [10, 11, 12]
    assert [r.session_id for r in kept if r.resource is Resource.AGENT_SESSION and r.is_final] == [JOB_ID]
    assert broken.calls >= 4  # each record was offered to the configured exporter first
    said = [r.getMessage() for r in caplog.records if "cannot go to BrokenExporter()" in r.getMessage()]
    assert len(said) == 1 and "OSError: disk full" in said[0] and str(default_records_file()) in said[0]
    assert not [r for r in caplog.records if "could not record" in r.getMessage()]  # nothing was lost


async def test_a_url_that_went_bad_after_start_keeps_the_records_in_the_local_file(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry_point = metered(_connect_and_end)  # decorated while the environment was right
    monkeypatch.setenv("LIVEKIT_METERING_URL", "metering.example.com")
    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        await run_job(entry_point, room=FakeRoom())
    (final,) = [r for r in read_records(default_records_file()) if r.resource is Resource.AGENT_SESSION]
    assert final.session_id == JOB_ID and final.is_final
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("LIVEKIT_METERING_URL='metering.example.com': has no scheme" in m for m in errors), errors
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)  # no tracebacks


async def _connect_and_end(ctx: JobContext) -> None:
    await ctx.connect()
    ctx.shutdown("done")


def test_a_script_with_a_bad_url_keeps_its_model_records_in_the_local_file(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIVEKIT_METERING_URL", "metering.example.com")
    meter = Meter()  # what Metered models record into outside a job
    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        for n in range(3):
            assert meter.record(Resource.TTS, 5 + n, usage=meter.next_usage("tts"), start=T0, end=T0) is not None
    assert sorted(r.raw for r in read_records(default_records_file())) == [5, 6, 7]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "has no scheme: write https://metering.example.com" in errors[0].getMessage()
    assert not errors[0].exc_info
    assert os.environ["XDG_CACHE_HOME"] in str(default_records_file())
