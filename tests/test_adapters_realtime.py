"""Realtime and duplex models metered in place: tokens per response by modality, session seconds.

The realtime model is scripted at the provider boundary (tests/fake_realtime.py, modelled on
livekit-agents' own fake realtime model): each response's usage is known, so every figure below is
compared with it exactly. Everything around it is real: AgentSession, the job runner, ``metered``.
"""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_realtime import FakeDuplexModel, FakeRealtimeModel, Response, Usage
from fakes import MemoryExporter
from harness.jobproc import ManualClock, run_job
from livekit.agents import Agent, AgentSession, JobContext, llm
from livekit.agents.testing import fake_job_context
from rich.console import Console

from livekit_metering.adapters import MeteredLLM, is_metered, meter_session_models, metered_models
from livekit_metering.costlog import cost_line, summarize
from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.meter import Meter
from livekit_metering.preview import CostPreview, render_summary
from livekit_metering.pricing import PriceBook
from livekit_metering.records import MeterRecord, Resource, Status, Unit
from livekit_metering.scripted import FakeAudioOutput

R = Resource
# what the provider reports, per response: input by modality (cached included) and its cached part
FIRST = Usage(text_in=1200, audio_in=400, cached_text=1024, text_out=30, audio_out=240)
SECOND = Usage(text_in=1400, audio_in=650, image_in=85, cached_text=1280, cached_audio=320, text_out=44, audio_out=610)
CUT = Usage(text_in=1500, audio_in=700, cached_text=1408, cached_audio=512, text_out=9, audio_out=75)
OPEN_SECONDS = 37.25  # the realtime session's connection time, on the job's manual clock


def totals(records: list[MeterRecord]) -> dict[Resource, int]:
    sums: dict[Resource, int] = {}
    for record in records:
        sums[record.resource] = sums.get(record.resource, 0) + record.raw
    return sums


def script() -> list[Response]:
    return [
        Response("Hi, this is the bike shop. How can I help?", 1.0, FIRST),
        Response("We open at nine and close at six, every day but Sunday.", 1.2, SECOND),
        Response("Let me read you the whole catalogue of " + "spare parts " * 40, 20.0, SECOND, cut=CUT),
    ]


async def _converse(session: AgentSession, model: FakeRealtimeModel) -> None:
    """Two replies played out, a third interrupted once it has started, then wait for its figures."""
    for _ in range(2):
        await session.generate_reply().wait_for_playout()
    handle = session.generate_reply()
    for _ in range(500):
        if model.sessions and model.sessions[-1]._current is not None:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    handle.interrupt()
    await handle.wait_for_playout()
    for _ in range(500):  # the provider's figures for the cut response follow the cancel
        if len(model.billed) == 3:
            break
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def job_records(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[MeterRecord], FakeRealtimeModel, Any]:
    """One job in livekit-agents' real job runner: an xAI voice session (billed by time and tokens)."""
    out = tmp_path_factory.mktemp("realtime") / "records.jsonl"
    clock = ManualClock()
    model = FakeRealtimeModel(script(), model="xai/grok-voice-3.0")
    seen: dict[str, Any] = {}

    async def entry(ctx: JobContext) -> None:
        await ctx.connect()
        session = AgentSession(llm=MeteredLLM(model))
        session.output.audio = speaker = FakeAudioOutput()
        await session.start(Agent(instructions="You answer calls for a bike shop."))
        await _converse(session, model)
        model.sessions[-1].report_transcription(input_tokens=160, output_tokens=24)
        clock.advance(OPEN_SECONDS)
        await session.aclose()
        seen["speaker_seconds"] = speaker.seconds
        seen["usage"] = [u for u in session.usage.model_usage if u.type == "llm_usage"]
        ctx.shutdown("caller hung up")

    async def run() -> None:
        # deployed to LiveKit Cloud, said here: the autouse fixture that says so runs per test
        await run_job(metered(entry, file=out, clock=clock, hosting="cloud"), fake_job=True)

    asyncio.run(run())
    return read_records(out), model, seen


def test_tokens_by_modality_equal_the_provider_usage_with_cached_tokens_counted_once(job_records: Any) -> None:
    records, model, seen = job_records
    realtime = [r for r in records if r.meta.get("mode") == "realtime"]
    billed = [usage for _, usage, _ in model.billed]
    assert billed == [FIRST, SECOND, CUT]  # the interrupted response reported what it had generated
    sums = totals(realtime)
    assert sums == {
        R.REALTIME_INPUT_TEXT: (1200 - 1024) + (1400 - 1280) + (1500 - 1408),
        R.REALTIME_INPUT_AUDIO: 400 + (650 - 320) + (700 - 512),
        R.REALTIME_INPUT_IMAGE: 85,
        R.REALTIME_INPUT_CACHED_TEXT: 1024 + 1280 + 1408,
        R.REALTIME_INPUT_CACHED_AUDIO: 320 + 512,
        R.REALTIME_OUTPUT_TEXT: 30 + 44 + 9,
        R.REALTIME_OUTPUT_AUDIO: 240 + 610 + 75,
    }
    # every input token once: uncached plus cached is all input, not input plus cached again
    inputs = sum(v for k, v in sums.items() if k.value.startswith("realtime_input"))
    assert inputs == (1200 + 400) + (1400 + 650 + 85) + (1500 + 700) == 5935
    # the framework's own session.usage sees the same provider figures (metering changed no event)
    (usage,) = seen["usage"]
    assert (usage.input_tokens, usage.input_cached_tokens, usage.output_tokens) == (5935, 4544, 1008)
    assert {(r.model, r.provider) for r in realtime} == {("xai/grok-voice-3.0", "livekit")}
    assert {r.unit for r in realtime} == {Unit.TOKEN} and all(r.quantity == r.raw for r in realtime)


def test_one_usage_per_response_in_order_and_the_interrupted_one_billed_as_cancelled(job_records: Any) -> None:
    records, model, _ = job_records
    by_usage: dict[str, list[MeterRecord]] = {}
    for record in records:
        if record.meta.get("mode") == "realtime":
            by_usage.setdefault(record.id.split("/")[1], []).append(record)
    assert sorted(by_usage) == ["realtime-1", "realtime-2", "realtime-3"]
    cut = by_usage["realtime-3"]
    assert {r.status for r in cut} == {Status.CANCELLED} and {r.meta["outcome"] for r in cut} == {"cancelled"}
    assert {r.resource: r.raw for r in cut} == {
        R.REALTIME_INPUT_TEXT: 92,
        R.REALTIME_INPUT_AUDIO: 188,
        R.REALTIME_INPUT_CACHED_TEXT: 1408,
        R.REALTIME_INPUT_CACHED_AUDIO: 512,
        R.REALTIME_OUTPUT_TEXT: 9,
        R.REALTIME_OUTPUT_AUDIO: 75,
    }
    assert {r.meta["request_id"] for r in cut} == {model.billed[2][0]}
    assert {r.status for r in by_usage["realtime-1"] + by_usage["realtime-2"]} == {Status.OK}


def test_session_seconds_are_the_open_time_rounded_up_to_whole_seconds(job_records: Any) -> None:
    records, _, _ = job_records
    (session,) = [r for r in records if r.resource is R.REALTIME_SESSION]
    assert session.status is Status.OK and session.id == "AJ_test1/realtime-session-1/realtime_session"
    assert session.raw == 37_250 == session.meta["connection_ms"]  # the manual clock moved 37.25 s while open
    assert (session.unit, session.quantity) == (Unit.SECOND, Decimal(38))
    assert session.meta["basis"] == "connection" and session.meta["provider_ms"] == 0


def test_input_transcription_billed_apart_is_its_own_usage(job_records: Any) -> None:
    records, _, _ = job_records
    transcription = {r.resource: r for r in records if r.meta.get("mode") == "realtime_transcription"}
    assert {k: r.raw for k, r in transcription.items()} == {R.TRANSCRIPTION_INPUT: 160, R.TRANSCRIPTION_OUTPUT: 24}
    assert {(r.model, r.provider) for r in transcription.values()} == {("gpt-4o-transcribe", "livekit")}


def test_the_cost_line_and_the_dev_preview_name_the_realtime_resources(job_records: Any) -> None:
    records, _, _ = job_records
    line = cost_line(summarize(records, session_id="AJ_test1"))
    for part in (
        "realtime_input_text=388",
        "realtime_input_audio=918",
        "realtime_input_cached_text=3712",
        "realtime_input_cached_audio=832",
        "realtime_output_audio=925",
        "realtime_session_seconds=38",
        "transcription_input=160",
    ):
        assert f" {part} " in line, (part, line)
    # no public LiveKit price: listed as unpriced, never $0; the cost is the agent minute's alone
    assert " cost=$0.01 unpriced=gpt-4o-transcribe,xai/grok-voice-3.0 " in line
    console = Console(file=io.StringIO(), width=200)
    preview = CostPreview(console=console)  # the running line per usage, as in `dev` mode
    for record in records:
        preview(record)
    console.print(render_summary(records, PriceBook.bundled()))  # the table that closes the session
    text = console.file.getvalue()
    assert "Realtime audio output 240 tokens" in text and "Realtime session 38 seconds" in text, text
    assert "Realtime cached text input" in text and "Transcription input" in text


# -- a month of such sessions, invoiced ---------------------------------------------------------------

CONTRACT = """
[[realtime]]
model = "xai/grok-voice-3.0"
input_text = "4.00"
input_audio = "32.00"
input_image = "5.00"
cached_text = "0.40"
cached_audio = "0.40"
output_text = "16.00"
output_audio = "64.00"
session = "0.05"
effective = 2026-11-01
source = "our LiveKit contract (test)"

[[realtime]]
model = "gpt-4o-transcribe"
transcription_input = "2.50"
transcription_output = "10.00"
effective = 2026-11-01
source = "our LiveKit contract (test)"
"""


def _month(records: list[MeterRecord], days: int = 30, per_day: int = 3) -> list[MeterRecord]:
    """The job's records, ``per_day`` times a day through November 2026, each time a session of its own."""
    month: list[MeterRecord] = []
    for day, call in ((d, c) for d in range(days) for c in range(per_day)):
        start = datetime(2026, 11, 1 + day, 9 + call, tzinfo=timezone.utc)
        for record in records:
            session = f"AJ_day{day}_call{call}"
            month.append(
                record.model_copy(
                    update={
                        "id": record.id.replace(record.session_id, session),
                        "session_id": session,
                        "start": start,
                        "end": start + timedelta(minutes=1),
                    }
                )
            )
    return month


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_invoice_preview_of_a_month_matches_a_hand_calculation(job_records: Any, tmp_path: Path) -> None:
    records, _, _ = job_records
    (tmp_path / "contract.toml").write_text(CONTRACT)
    book = PriceBook.load(tmp_path / "contract.toml")
    invoice = book.invoice(_month(records), plan="ship", month="2026-11")

    # by hand, from the scripted usage: 90 calls (3 a day) of the same session, USD per 1M tokens
    per_call = {
        "realtime_input_text": (388, "4.00"),
        "realtime_input_audio": (918, "32.00"),
        "realtime_input_image": (85, "5.00"),
        "realtime_input_cached_text": (3712, "0.40"),
        "realtime_input_cached_audio": (832, "0.40"),
        "realtime_output_text": (83, "16.00"),
        "realtime_output_audio": (925, "64.00"),
        "transcription_input": (160, "2.50"),
        "transcription_output": (24, "10.00"),
    }
    expected = {name: _cents(Decimal(90 * n) * Decimal(price) / 1_000_000) for name, (n, price) in per_call.items()}
    expected["realtime_session"] = _cents(Decimal(90 * 38) / 60 * Decimal("0.05"))  # 38 s a call at $0.05 a minute
    models = {"xai/grok-voice-3.0", "gpt-4o-transcribe"}
    lines = {line.resource: line for line in invoice.lines if line.model in models}
    assert {name: line.amount for name, line in lines.items()} == expected
    # 83,250 audio tokens at $64/M is $5.328; 3,420 s is 57 minutes at $0.05
    assert expected["realtime_output_audio"] == Decimal("5.33") and expected["realtime_session"] == Decimal("2.85")
    inference = sum(expected.values(), Decimal(0))
    assert inference == Decimal("11.34")
    agent_minutes = next(line for line in invoice.lines if line.resource == "agent_session")
    assert agent_minutes.amount == Decimal("0.00")  # 90 one-minute sessions, inside Ship's 5,000 minutes
    # $50 plan fee, the realtime lines, then the $5 of inference credits taken off them
    assert invoice.total == Decimal("50.00") + inference - Decimal("5.00") == Decimal("56.34")
    assert invoice.unpriced == [] and invoice.not_billed_by_livekit == []


def test_bundled_prices_leave_realtime_unpriced_never_zero(job_records: Any) -> None:
    records, _, _ = job_records
    invoice = PriceBook.bundled().invoice(_month(records, days=3, per_day=1), plan="ship", month="2026-11")
    realtime = [line for line in invoice.lines if line.resource.startswith(("realtime", "transcription"))]
    assert realtime and all(line.amount is None for line in realtime)
    assert "xai/grok-voice-3.0" in invoice.unpriced
    assert invoice.total == Decimal("50.00")  # the plan fee: unpriced usage is listed, not summed as $0


def test_realtime_through_a_providers_own_plugin_is_not_billed_by_livekit(job_records: Any, tmp_path: Path) -> None:
    records, _, _ = job_records
    plugin = [
        r.model_copy(update={"provider": "xai", "model": "grok-voice-3.0"})
        for r in records
        if r.resource.value.startswith(("realtime", "transcription"))
    ]
    invoice = PriceBook.bundled().invoice(_month(plugin, days=2, per_day=1), plan="ship", month="2026-11")
    assert invoice.not_billed_by_livekit == ["xai/grok-voice-3.0 via xai"]
    assert [line.resource for line in invoice.lines] == ["plan_fee"]


# -- estimates, duplex, composites -------------------------------------------------------------------


async def test_a_response_without_figures_when_the_session_closes_is_estimated() -> None:
    meter = Meter(session_id="AJ_est", exporter=MemoryExporter())
    model = MeteredLLM(FakeRealtimeModel([Response("Sorry, one moment please", 0.8, FIRST, silent=True)]), meter=meter)
    session = model.session()
    context = llm.ChatContext.empty()
    context.add_message(role="user", content="Where is my order number four two?")  # 34 characters
    await session.update_chat_ctx(context)
    generation = await session.generate_reply()
    async for message in generation.message_stream:
        _ = [t async for t in message.text_stream], [f async for f in message.audio_stream]
    await session.aclose()
    records = {r.resource: r for r in meter.records}
    assert {r.status for r in records.values()} == {Status.ESTIMATED}
    assert {k: r.raw for k, r in records.items()} == {
        R.REALTIME_INPUT_TEXT: -(-34 // 4),  # the session's context text, ceil(chars/4)
        R.REALTIME_OUTPUT_TEXT: -(-len("Sorry, one moment please ") // 4),  # what it streamed
        R.REALTIME_OUTPUT_AUDIO: 800 // 50,  # 0.8 s of audio at OpenAI's 50 ms per token
    }
    meta = records[R.REALTIME_OUTPUT_AUDIO].meta
    assert meta["outcome"] == "closed" and meta["output_audio_ms"] == 800 and "ceil(ms/50)" in str(meta["estimate"])


async def test_a_duplex_session_bills_the_seconds_the_provider_reports_and_its_backend_tokens() -> None:
    exporter = MemoryExporter()
    meter = Meter(session_id="AJ_duplex", exporter=exporter)
    duplex = FakeDuplexModel()
    adapter = llm.DuplexRealtimeAdapter(MeteredLLM(duplex, meter=meter, checkpoint_interval=0.05))
    assert is_metered(adapter) and is_metered(duplex)
    session = adapter.session()
    provider = duplex.sessions[-1]
    provider.report_seconds(12.5)
    await asyncio.sleep(0.12)  # checkpoints while the session is open
    provider.report_seconds(30.2)  # cumulative: the delta goes out
    provider.report_backend(prompt=900, cached=512, completion=120)
    await session.aclose()
    final = {r.resource: r for r in meter.records}
    assert final[R.REALTIME_SESSION].raw == 30_200 and final[R.REALTIME_SESSION].quantity == Decimal(31)
    assert final[R.REALTIME_SESSION].meta["basis"] == "provider"
    assert (final[R.LLM_INPUT].raw, final[R.LLM_INPUT_CACHED].raw, final[R.LLM_OUTPUT].raw) == (388, 512, 120)
    assert final[R.LLM_INPUT].model == "gpt-5.6-luna"
    checkpoints = [r for r in exporter.exported if r.resource is R.REALTIME_SESSION and r.status is Status.CHECKPOINT]
    assert checkpoints and {r.id for r in checkpoints} == {final[R.REALTIME_SESSION].id}


async def test_a_realtime_fallback_adapter_is_metered_per_child() -> None:
    meter = Meter(session_id="AJ_fallback", exporter=MemoryExporter())
    first, second = FakeRealtimeModel([]), FakeRealtimeModel([], model="google/gemini-3.8-live")
    adapter = llm.RealtimeModelFallbackAdapter([first, second])
    assert MeteredLLM(adapter, meter=meter) is adapter
    assert is_metered(first) and is_metered(second) and type(adapter) is llm.RealtimeModelFallbackAdapter


# -- transparency: the same session, with and without metering -----------------------------------------


async def _run_realtime_session(meter: Meter | None) -> tuple[list[tuple[str, str]], float, FakeRealtimeModel]:
    model = FakeRealtimeModel(script()[:2])
    items: list[tuple[str, str]] = []
    with fake_job_context():
        session = AgentSession(**metered_models(llm=model, meter=meter)) if meter else AgentSession(llm=model)
        session.output.audio = speaker = FakeAudioOutput()
        session.on("conversation_item_added", lambda ev: items.append((ev.item.role, ev.item.text_content or "")))
        await session.start(Agent(instructions="You answer calls for a bike shop."))
        for _ in range(2):
            await session.generate_reply().wait_for_playout()
        await session.aclose()
    return items, speaker.seconds, model


async def test_a_metered_realtime_model_is_the_same_model_and_the_session_sees_the_same_conversation() -> None:
    meter = Meter(session_id="AJ_same", exporter=MemoryExporter())
    bare = await _run_realtime_session(None)
    metered_run = await _run_realtime_session(meter)
    assert metered_run[:2] == bare[:2] and bare[1] == pytest.approx(2.2)  # same transcript, same audio played
    model = metered_run[2]
    assert type(model) is FakeRealtimeModel and model.label == "fake_realtime.FakeRealtimeModel"
    model.update_options(voice="verse")
    assert model.voice == "verse"
    assert type(model.sessions[0]) is type(bare[2].sessions[0])  # the provider's own session object
    # AgentSession's close reached the provider's session through the metering's aclose hook
    assert all(s.closed_at is not None for s in (*bare[2].sessions, *model.sessions))
    assert len([r for r in meter.records if r.meta.get("mode") == "realtime"]) == 5 + 7  # the non-zero modalities


async def test_meter_session_models_meters_the_sessions_realtime_model_in_place() -> None:
    model = FakeRealtimeModel([])
    session = AgentSession(llm=model)
    meter_session_models(session)
    assert session.llm is model and is_metered(model)
