"""The dev cost preview: a listener on a real Meter that prints the running cost and a summary table."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console
from usage_samples import LLM_MODEL, STT_MODEL, TTS_MODEL, UNPRICED_MODEL, hand_cost, session_records

from livekit_metering import Resource, Status
from livekit_metering.export import FileExporter
from livekit_metering.meter import Meter
from livekit_metering.preview import CostPreview, attach_preview, preview_enabled, render_summary, summary_lines
from livekit_metering.pricing import PriceBook

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.bundled()


def console() -> Console:
    return Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)


def text_of(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


# -- when it turns on -------------------------------------------------------------------------------


def test_an_explicit_option_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_DEV_MODE", "1")
    assert preview_enabled(False) is False
    monkeypatch.delenv("LIVEKIT_DEV_MODE")
    assert preview_enabled(True, argv=["start"]) is True


def test_livekit_dev_mode_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVEKIT_METERING_PREVIEW", raising=False)
    monkeypatch.setenv("LIVEKIT_DEV_MODE", "1")  # what livekit-agents' CLI sets for `dev` and `console`
    assert preview_enabled(argv=["start"]) is True
    from livekit.agents.utils import is_dev_mode

    assert is_dev_mode()  # the same signal livekit-agents itself reads


def test_dev_and_console_commands_turn_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVEKIT_METERING_PREVIEW", raising=False)
    monkeypatch.delenv("LIVEKIT_DEV_MODE", raising=False)
    assert preview_enabled(argv=["dev"]) is True
    assert preview_enabled(argv=["console", "--text"]) is True
    assert preview_enabled(argv=["start"]) is False
    assert preview_enabled(argv=[]) is False


def test_the_environment_variable_overrides_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_METERING_PREVIEW", "0")
    assert preview_enabled(argv=["dev"]) is False
    monkeypatch.setenv("LIVEKIT_METERING_PREVIEW", "1")
    assert preview_enabled(argv=["start"]) is True


# -- the running cost ---------------------------------------------------------------------------------


def test_running_cost_follows_every_record_of_a_real_meter(tmp_path: Path, book: PriceBook) -> None:
    meter = Meter(session_id="AJ_preview", exporter=FileExporter(tmp_path / "r.jsonl"), room="demo", agent_name="bot")
    out = console()
    preview = attach_preview(meter, book=book, plan="ship", console=out)

    # A running checkpoint of the session, then its final form: the total counts the session once.
    meter.record(
        Resource.AGENT_SESSION,
        30_000,
        usage="session",
        start=T0,
        end=T0 + timedelta(seconds=30),
        status=Status.CHECKPOINT,
    )
    after_checkpoint = preview.total
    meter.record(Resource.STT, 95_500, usage="stt-1", start=T0, end=T0 + timedelta(seconds=96), model=STT_MODEL)
    meter.record(Resource.LLM_INPUT, 4_000, usage="llm-1", start=T0, end=T0, model=LLM_MODEL)
    meter.record(Resource.LLM_OUTPUT, 250, usage="llm-1", start=T0, end=T0, model=LLM_MODEL)
    meter.record(Resource.TTS, 1_200, usage="tts-1", start=T0, end=T0, model=TTS_MODEL)
    meter.record(Resource.AGENT_SESSION, 95_500, usage="session", start=T0, end=T0 + timedelta(seconds=96))

    # By hand, Ship list prices: 95.5 s bills 2 minutes ($0.02) and 96 STT seconds at $0.00008 ($0.00768);
    # 4,000 input and 250 output tokens at $0.40 and $1.60 per million ($0.0016, $0.0004); 1,200 TTS
    # characters at $50 per million ($0.06).
    assert preview.total == Decimal("0.08968")
    session = next(r for r in meter.records if r.resource is Resource.AGENT_SESSION)
    assert session.is_final and session.quantity == 2
    assert after_checkpoint == Decimal("0.01")  # the 30 s checkpoint: one minute then, two minutes now
    lines = text_of(out).splitlines()
    assert len(lines) == 6  # one line per record, as it happens
    assert "(running)" in lines[0]
    assert "session so far" in lines[-1]


def test_a_stale_checkpoint_does_not_change_the_total(tmp_path: Path, book: PriceBook) -> None:
    records = session_records("AJ_stale", T0, 125, room="r", agent="a", customer="c", checkpoint=True)
    checkpoint, final = records[0], records[1]
    assert checkpoint.id == final.id and checkpoint.status is Status.CHECKPOINT
    preview = CostPreview(book=book, console=console())
    preview(final)
    total = preview.total
    preview(checkpoint)  # arrives late: the final figure stands
    assert preview.total == total
    assert len(preview.records) == 1 and preview.records[0].is_final


# -- the summary table -----------------------------------------------------------------------------------


def test_summary_lines_sum_billable_quantities_per_resource(book: PriceBook) -> None:
    records = session_records("AJ_sum", T0, 61, room="r", agent="a", customer="c", checkpoint=True)
    lines = {line.resource: line for line in summary_lines(records, book, "ship")}
    session = lines[Resource.AGENT_SESSION]
    assert session.raw == 61_000 and session.quantity == 2  # 61 s bills as two whole minutes
    assert session.usages == 1  # the checkpoint was replaced by the final form
    stt = lines[Resource.STT]
    assert stt.quantity == 63 and stt.unit.value == "second"
    assert lines[Resource.LLM_INPUT].quantity == 900 * 6 + 37 + 900 * 6 + 74
    assert lines[Resource.LLM_OUTPUT].quantity == (60 * 6 + 11) + (60 * 6 + 22)
    assert lines[Resource.TTS].quantity == 350 * 6 + 13
    for line in lines.values():
        assert line.cost is not None
        if line.quantity:
            assert line.unit_price == line.cost / line.quantity


def test_render_summary_shows_each_resource_and_the_total(book: PriceBook) -> None:
    records = session_records("AJ_table", T0, 61, room="r", agent="a", customer="c")
    out = console()
    out.print(render_summary(records, book, "ship"))
    text = text_of(out)
    for label in ("Agent session", "STT", "LLM input", "LLM cached input", "LLM output", "TTS", "Total"):
        assert label in text
    assert "2 minutes" in text and "61.0 s" in text and "63 seconds" in text
    total = sum(c for r in records if (c := hand_cost(r)) is not None)  # hand-written prices, not the book
    # By hand: 2 min x $0.01 + 63 s x $0.00008 + 10,911 input x $0.40/M + 4,800 cached x $0.10/M
    # + 753 output x $1.60/M + 2,113 characters x $50/M = 0.02 + 0.00504 + 0.0043644 + 0.00048 + 0.0012048 + 0.10565
    assert total == Decimal("0.1367392")
    assert f"${total.quantize(Decimal('0.0001')):,}" in text


def test_a_resent_identical_final_record_counts_once(book: PriceBook) -> None:
    from livekit_metering.costlog import summarize

    records = session_records("AJ_twice", T0, 61, room="r", agent="a", customer="c")
    once = {(line.resource, line.quantity, line.cost) for line in summary_lines(records, book, "ship")}
    twice = {(line.resource, line.quantity, line.cost) for line in summary_lines(records + records, book, "ship")}
    assert once == twice
    out = console()
    out.print(render_summary(records + records, book, "ship"))
    assert "$0.1367" in text_of(out) and "$0.2735" not in text_of(out)  # $0.1367392 by hand above, not twice it
    summary = summarize(records + records, session_id="AJ_twice")
    assert (summary.billed_minutes, summary.tts_characters, summary.cost) == (2, 350 * 6 + 13, Decimal("0.1367392"))


def test_unpriced_models_are_marked_never_zero(book: PriceBook) -> None:
    records = session_records("AJ_unpriced", T0, 30, room="r", agent="a", customer="c", llm_model=UNPRICED_MODEL)
    lines = {line.resource: line for line in summary_lines(records, book, "ship")}
    assert lines[Resource.LLM_INPUT].cost is None
    out = console()
    out.print(render_summary(records, book, "ship"))
    text = text_of(out)
    assert "unpriced" in text and "+unpriced" in text


def test_close_prints_the_summary_once(tmp_path: Path, book: PriceBook) -> None:
    meter = Meter(session_id="AJ_close", exporter=FileExporter(tmp_path / "r.jsonl"))
    out = console()
    preview = attach_preview(meter, book=book, console=out)
    meter.record(Resource.AGENT_SESSION, 10_000, usage="session", start=T0, end=T0 + timedelta(seconds=10))
    preview.close()
    preview.close()
    assert text_of(out).count("Session cost preview") == 1
    meter.record(Resource.TTS, 10, usage="tts-1", start=T0, end=T0, model=TTS_MODEL)
    assert "TTS" not in text_of(out)  # nothing printed after close


def test_maybe_attach_preview_follows_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from livekit_metering.preview import maybe_attach_preview

    monkeypatch.delenv("LIVEKIT_METERING_PREVIEW", raising=False)
    monkeypatch.delenv("LIVEKIT_DEV_MODE", raising=False)
    monkeypatch.setattr("sys.argv", ["agent.py", "start"])
    meter = Meter(session_id="AJ_mode", exporter=FileExporter(tmp_path / "r.jsonl"))
    assert maybe_attach_preview(meter) is None  # production: no preview
    monkeypatch.setenv("LIVEKIT_DEV_MODE", "1")
    out = console()
    preview = maybe_attach_preview(meter, plan="scale", console=out)
    assert preview is not None and preview.plan == "scale"
    meter.record(Resource.TTS, 1_000, usage="tts-1", start=T0, end=T0, model=TTS_MODEL)
    assert "TTS 1,000 characters" in text_of(out)


def test_maybe_attach_preview_with_a_user_price_book(tmp_path: Path) -> None:
    from livekit_metering.preview import maybe_attach_preview

    meter = Meter(session_id="AJ_prices", exporter=FileExporter(tmp_path / "r.jsonl"))
    assert maybe_attach_preview(meter, option=True, prices=str(tmp_path / "missing.toml"), console=console()) is None
    assert meter.record(Resource.TTS, 5, usage="tts-1", start=T0, end=T0, model=TTS_MODEL) is not None  # unharmed


def test_an_older_checkpoint_does_not_replace_a_newer_one(book: PriceBook) -> None:
    preview = CostPreview(book=book, console=console())
    records = session_records("AJ_order", T0, 250, room="r", agent="a", customer="c", checkpoint=True)
    newer = records[0]  # 125 s: three minutes so far
    older = newer.model_copy(update={"raw": 30_000, "quantity": Decimal(1), "end": T0 + timedelta(seconds=30)})
    preview(newer)
    preview(older)
    assert preview.records == [newer]
