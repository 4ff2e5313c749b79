"""The price book: bundled data with dates and sources, lookup by model, history, user overrides, costing."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from pricing_month import LK, rec

from livekit_metering import InvalidPriceBook, PriceBook, UnknownPlan
from livekit_metering.pricing import Kind
from livekit_metering.records import REALTIME_RESOURCES, Resource, Status

BOOK = PriceBook.bundled()
NOV = datetime(2026, 11, 10, 12, tzinfo=timezone.utc)
INFERENCE = {Resource.STT, Resource.LLM_INPUT, Resource.LLM_INPUT_CACHED, Resource.LLM_OUTPUT, Resource.TTS}
INFERENCE |= REALTIME_RESOURCES  # priced per model too


# -- bundled data ---------------------------------------------------------------------------------


def test_every_bundled_row_has_a_date_and_a_source() -> None:
    assert len(BOOK.rows) > 100
    for row in BOOK.rows:
        assert isinstance(row.effective, date) and date(2025, 1, 1) <= row.effective <= date(2026, 12, 31)
        assert row.source.strip(), row
    for plan in BOOK.plans.values():
        assert plan.source and plan.effective


def test_plans_fees_and_credits() -> None:
    assert {p: (BOOK.plans[p].fee, BOOK.plans[p].inference_credits) for p in BOOK.plans} == {
        "build": (Decimal(0), Decimal("2.50")),
        "ship": (Decimal(50), Decimal("5.00")),
        "scale": (Decimal(500), Decimal("50.00")),
    }
    assert BOOK.plans["build"].hard_caps and not BOOK.plans["ship"].hard_caps


@pytest.mark.parametrize("plan", ["ship", "scale"])
def test_every_platform_resource_is_priced_on_paid_plans_except_stream_import(plan: str) -> None:
    for resource in Resource:
        if resource in INFERENCE:
            continue
        row = BOOK.row(resource, plan=plan, at=NOV.date())
        assert row is not None, resource
        if resource is Resource.STREAM_IMPORT:
            assert row.price is None  # the facts found no public price: unpriced, not $0
        else:
            assert row.price is not None and row.price > 0, resource


@pytest.mark.parametrize(
    ("plan", "resource", "included", "price"),
    [
        ("ship", Resource.AGENT_SESSION, "5000", "0.01"),
        ("scale", Resource.AGENT_SESSION, "50000", "0.01"),
        ("ship", Resource.CONNECTION, "150000", "0.0005"),
        ("scale", Resource.CONNECTION, "1500000", "0.0004"),
        ("ship", Resource.DATA_TRANSFER, "250", "0.12"),
        ("scale", Resource.DATA_TRANSFER, "3000", "0.10"),
        ("ship", Resource.OBSERVABILITY_EVENT, "500000", "0.00003"),
        ("ship", Resource.RECORDED_AUDIO, "5000", "0.005"),
        ("ship", Resource.SIP_TRUNK, "5000", "0.004"),
        ("scale", Resource.SIP_TRUNK, "50000", "0.003"),
        ("ship", Resource.PHONE_NUMBER, "1", "1.00"),
        ("ship", Resource.PHONE_NUMBER_TOLL_FREE, "0", "2.00"),
        ("ship", Resource.SIP_INBOUND, "100", "0.01"),
        ("ship", Resource.SIP_INBOUND_TOLL_FREE, "0", "0.02"),
        ("scale", Resource.TRANSCODE, "8000", "0.015"),
        ("ship", Resource.TRANSCODE_AUDIO, "600", "0.005"),
        ("ship", Resource.TRACK_EGRESS, "600", "0.001"),
        ("ship", Resource.VOICE_ISOLATION, "1000", "0.0012"),
        ("build", Resource.AGENT_SESSION, "1000", None),
    ],
)
def test_plan_quotas_and_overage_prices(plan: str, resource: Resource, included: str, price: str | None) -> None:
    row = BOOK.row(resource, plan=plan, at=NOV.date())
    assert row is not None
    assert row.included == Decimal(included)
    assert row.price == (None if price is None else Decimal(price))


@pytest.mark.parametrize(
    ("model", "language", "resource", "plan", "price"),
    [
        ("deepgram/nova-3", "", Resource.STT, "ship", "0.0048"),
        ("deepgram/nova-3", "en", Resource.STT, "ship", "0.0048"),
        ("deepgram/nova-3", "multi", Resource.STT, "ship", "0.0058"),
        ("deepgram/nova-3", "multi", Resource.STT, "scale", "0.0050"),
        ("deepgram/nova-3", "", Resource.STT, "scale", "0.0042"),
        ("deepgram/nova-3-general", "", Resource.STT, "ship", "0.0048"),  # alias
        ("deepgram/flux", "", Resource.STT, "ship", "0.0065"),  # alias of flux-general-en
        ("assemblyai/universal-streaming", "", Resource.STT, "ship", "0.0025"),
        ("openai/gpt-4.1-mini", "", Resource.LLM_INPUT, "ship", "0.40"),
        ("openai/gpt-4.1-mini", "", Resource.LLM_INPUT_CACHED, "scale", "0.10"),
        ("openai/gpt-4.1-mini", "", Resource.LLM_OUTPUT, "build", "1.60"),
        ("google/gemini-2.5-flash", "", Resource.LLM_OUTPUT, "ship", "2.50"),
        ("cartesia/sonic-3", "", Resource.TTS, "ship", "50.00"),
        ("cartesia/sonic-3", "", Resource.TTS, "scale", "37.50"),
        ("cartesia/sonic-3.5", "", Resource.TTS, "ship", "50.00"),
        ("deepgram/aura-2", "", Resource.TTS, "scale", "27.00"),
    ],
)
def test_inference_prices_by_model_id(model: str, language: str, resource: Resource, plan: str, price: str) -> None:
    row = BOOK.row(resource, plan=plan, at=NOV.date(), model=model, language=language)
    assert row is not None and row.price == Decimal(price)
    assert row.source and row.effective


def test_price_history_picks_the_row_in_effect_at_the_usage() -> None:
    def nova3(at: date) -> Decimal | None:
        row = BOOK.row(Resource.STT, plan="ship", at=at, model="deepgram/nova-3")
        return None if row is None else row.price

    assert nova3(date(2026, 5, 1)) == Decimal("0.0077")
    assert nova3(date(2026, 9, 20)) == Decimal("0.0077")
    assert nova3(date(2026, 9, 21)) == Decimal("0.0048")
    # Before the oldest known row, the oldest row applies (the dates are when a price was first seen).
    assert nova3(date(2025, 1, 1)) == Decimal("0.0077")


# -- record pricing and unit conversion -----------------------------------------------------------


def test_documented_rounding_examples_and_their_cost() -> None:
    # 10 s of connection bills 1 minute, 70 s bills 2; two 10 s connections bill 2 minutes, not 1.
    ten = rec("c", "a", Resource.CONNECTION, 10_000, NOV)
    seventy = rec("c", "b", Resource.CONNECTION, 70_000, NOV)
    other_ten = rec("c", "c", Resource.CONNECTION, 10_000, NOV)
    assert (ten.quantity, seventy.quantity) == (1, 2)
    assert BOOK.price_of(ten, "ship") == Decimal("0.0005")
    assert BOOK.price_of(seventy, "ship") == Decimal("0.0010")
    assert BOOK.cost([ten, other_ten], "ship").total == Decimal("0.0010")  # 2 minutes


def test_unit_conversion_is_exact() -> None:
    # Seconds priced per minute: 45 s of nova-3 = 0.75 min x 0.0048.
    stt = rec("s", "stt-1", Resource.STT, 44_001, NOV, model="deepgram/nova-3", **LK)
    assert stt.quantity == 45
    assert BOOK.price_of(stt, "ship") == Decimal("0.0036")
    # Per-second agent time with a 10 s minimum: 3 s bills 10 s = 1/6 min x $0.01.
    short = rec("s", "session", Resource.AGENT_SESSION, 3_000, NOV, policy="per-second-10s-minimum")
    assert short.quantity == 10
    cost = BOOK.price_of(short, "ship")
    assert cost is not None and abs(cost * 6 - Decimal("0.01")) < Decimal("1e-50")
    # Bytes to GB: 1 GB is 10^9 bytes, billed in 0.01 GB steps.
    data = rec("s", "data", Resource.DATA_TRANSFER, 1_000_000_001, NOV)
    assert data.quantity == Decimal("1.01")
    assert BOOK.price_of(data, "ship") == Decimal("0.1212")
    # Tokens per 1M and characters per 1M.
    tokens = rec("s", "llm-1", Resource.LLM_OUTPUT, 1_234, NOV, model="openai/gpt-4o-mini", **LK)
    assert BOOK.price_of(tokens, "ship") == Decimal("0.0007404")
    chars = rec("s", "tts-1", Resource.TTS, 1_001, NOV, model="cartesia/sonic-3", **LK)
    assert BOOK.price_of(chars, "ship") == Decimal("0.05005")
    # Number-months and events.
    assert BOOK.price_of(rec("n", "rent", Resource.PHONE_NUMBER_TOLL_FREE, 1, NOV), "ship") == Decimal("2.00")
    assert BOOK.price_of(rec("n", "obs", Resource.OBSERVABILITY_EVENT, 7, NOV), "ship") == Decimal("0.00021")


def test_multilingual_stt_is_keyed_on_language_or_model_suffix() -> None:
    by_field = rec("s", "stt-1", Resource.STT, 60_000, NOV, model="deepgram/nova-3", language="multi", **LK)
    by_suffix = rec("s", "stt-2", Resource.STT, 60_000, NOV, model="deepgram/nova-3:multi", **LK)
    assert BOOK.price_of(by_field, "ship") == BOOK.price_of(by_suffix, "ship") == Decimal("0.0058")


def test_direct_plugins_are_keyed_as_provider_and_model() -> None:
    direct = rec("d", "stt-1", Resource.STT, 60_000, NOV, provider="deepgram", model="nova-3")
    assert BOOK.price_of(direct, "ship") == Decimal("0.0048")
    unknown_direct = rec("d", "tts-1", Resource.TTS, 100, NOV, provider="acme", model="voice-9")
    assert BOOK.price_of(unknown_direct, "ship") is None


def test_unknown_model_is_unpriced_never_zero() -> None:
    records = [
        rec("u", "llm-1", Resource.LLM_INPUT, 1_000, NOV, model="openai/gpt-5.1", **LK),
        rec("u", "tts-1", Resource.TTS, 1_000, NOV, model="xai/tts-1", **LK),
        rec("u", "stt-1", Resource.STT, 1_000, NOV, model="", **LK),
        rec("u", "llm-2", Resource.LLM_INPUT, 1_000_000, NOV, model="openai/gpt-4o-mini", **LK),
    ]
    assert [BOOK.price_of(r, "ship") for r in records[:3]] == [None, None, None]
    report = BOOK.cost(records, "ship")
    assert report.unpriced == ["openai/gpt-5.1", "stt (no model)", "xai/tts-1"]
    assert report.total == Decimal("0.15")
    assert "openai/gpt-5.1" not in report.by_model
    unpriced_line = next(ln for ln in report.lines if ln.model == "openai/gpt-5.1")
    assert unpriced_line.cost is None and unpriced_line.to_json()["cost"] is None
    # A price explicitly marked unpriced in the data (cached input of gpt-5) is unpriced too.
    cached = rec("u", "llm-3", Resource.LLM_INPUT_CACHED, 10, NOV, model="openai/gpt-5", **LK)
    assert BOOK.price_of(cached, "ship") is None


def test_cost_report_per_resource_per_model_and_total() -> None:
    records = [
        rec("r", "session", Resource.AGENT_SESSION, 70_000, NOV),  # 2 min x 0.01 = 0.02
        rec("r", "stt-1", Resource.STT, 60_000, NOV, model="deepgram/nova-3", **LK),  # 1 min = 0.0048
        rec("r", "llm-1", Resource.LLM_INPUT, 10_000, NOV, model="openai/gpt-4.1-mini", **LK),  # 0.004
        rec("r", "llm-1", Resource.LLM_OUTPUT, 1_000, NOV, model="openai/gpt-4.1-mini", **LK),  # 0.0016
        rec("r", "tts-1", Resource.TTS, 200, NOV, model="cartesia/sonic-3", **LK),  # 0.01
    ]
    report = BOOK.cost(records, "ship")
    assert report.by_resource == {
        "agent_session": Decimal("0.02"),
        "stt": Decimal("0.0048"),
        "llm_input": Decimal("0.004"),
        "llm_output": Decimal("0.0016"),
        "tts": Decimal("0.01"),
    }
    assert report.by_model == {
        "deepgram/nova-3": Decimal("0.0048"),
        "openai/gpt-4.1-mini": Decimal("0.0056"),
        "cartesia/sonic-3": Decimal("0.01"),
    }
    assert report.total == Decimal("0.0404")
    assert report.to_json()["total"] == "0.0404"
    assert report.unpriced == []


def test_costing_counts_final_forms_and_open_checkpoints_once() -> None:
    checkpoint = rec("k", "session", Resource.AGENT_SESSION, 30_000, NOV, status=Status.CHECKPOINT)
    later_checkpoint = rec("k", "session", Resource.AGENT_SESSION, 90_000, NOV, status=Status.CHECKPOINT)
    final = rec("k", "session", Resource.AGENT_SESSION, 150_000, NOV)
    open_one = rec("k2", "session", Resource.AGENT_SESSION, 30_000, NOV, status=Status.CHECKPOINT)
    assert BOOK.cost([checkpoint, final, later_checkpoint], "ship").total == Decimal("0.03")  # final 3 min only
    assert BOOK.cost([checkpoint, later_checkpoint], "ship").total == Decimal("0.02")  # latest checkpoint
    assert BOOK.cost([final, open_one], "ship").total == Decimal("0.04")


def test_build_platform_usage_costs_nothing_but_inference_has_list_price() -> None:
    assert BOOK.price_of(rec("b", "session", Resource.AGENT_SESSION, 60_000, NOV), "build") == Decimal(0)
    tts = rec("b", "tts-1", Resource.TTS, 1_000, NOV, model="cartesia/sonic-3", **LK)
    assert BOOK.price_of(tts, "build") == Decimal("0.05")


def test_unknown_plan_is_a_clear_error() -> None:
    with pytest.raises(UnknownPlan, match="unknown plan 'enterprise'; known plans: build, scale, ship"):
        BOOK.cost([], "enterprise")
    with pytest.raises(UnknownPlan):
        BOOK.price_of(rec("x", "session", Resource.AGENT_SESSION, 1, NOV), "free")


def test_listing_filters_by_kind_model_and_plan() -> None:
    stt = BOOK.select(kind="stt")
    assert stt and all(r.kind is Kind.STT for r in stt)
    assert {r.model for r in BOOK.select(model="sonic-3")} == {"cartesia/sonic-3"}
    assert {r.model for r in BOOK.select(model="flux-general")} >= {"deepgram/flux-general-en"}
    ship_plan = BOOK.select(kind="plan", plan="ship")
    assert ship_plan and all(r.plan == "ship" for r in ship_plan)
    phone = BOOK.select(kind="phone", plan="scale")
    assert {r.resource for r in phone} == {
        Resource.PHONE_NUMBER,
        Resource.PHONE_NUMBER_TOLL_FREE,
        Resource.SIP_INBOUND,
        Resource.SIP_INBOUND_TOLL_FREE,
        Resource.SIP_TRUNK,
    }
    current = BOOK.select(model="deepgram/nova-3", kind="stt", at=date(2026, 11, 1))
    history = BOOK.select(model="deepgram/nova-3", kind="stt", history=True)
    assert len(history) > len(current)
    assert Decimal("0.0077") not in {r.price for r in current if r.provider == "livekit"}


# -- user price files -----------------------------------------------------------------------------

CONTRACT = """
[[stt]]
model = "deepgram/nova-3"
price = "0.0040"
effective = 2026-11-01
source = "our LiveKit enterprise contract, signed 2026-10-15"

[[llm]]
model = "openai/gpt-5.1"
input = "1.25"
cached = "0.125"
output = "10"
effective = 2026-11-01
source = "our contract"

[[tts]]
provider = "acme"
model = "acme/voice-9"
price = "12"
effective = 2026-01-01
source = "Acme order form 42"

[[resource]]
plan = "ship"
resource = "agent_session"
included = 5000
price = "0.008"
effective = 2026-11-01
source = "negotiated overage"
"""


def test_user_file_overrides_and_adds_rows(tmp_path: Path) -> None:
    path = tmp_path / "contract.toml"
    path.write_text(CONTRACT)
    book = PriceBook.load(path)
    nov = rec("c", "stt-1", Resource.STT, 60_000, NOV, model="deepgram/nova-3", **LK)
    oct_ = rec("c", "stt-2", Resource.STT, 60_000, NOV - timedelta(days=30), model="deepgram/nova-3", **LK)
    assert book.price_of(nov, "ship") == Decimal("0.0040")
    assert book.price_of(oct_, "ship") == Decimal("0.0048")  # the bundled price still applies before
    assert book.price_of(nov, "scale") == Decimal("0.0042")  # Scale's own row is untouched
    gpt = rec("c", "llm-1", Resource.LLM_OUTPUT, 1_000_000, NOV, model="openai/gpt-5.1", **LK)
    assert book.price_of(gpt, "ship") == Decimal(10)
    acme = rec("c", "tts-1", Resource.TTS, 1_000_000, NOV, provider="acme", model="voice-9")
    assert book.price_of(acme, "ship") == Decimal(12)
    agent = rec("c", "session", Resource.AGENT_SESSION, 60_000, NOV)
    assert book.price_of(agent, "ship") == Decimal("0.008")
    user_row = book.row_of(agent, "ship")
    assert user_row is not None and user_row.origin == str(path) and user_row.source == "negotiated overage"
    # The bundled book is unchanged.
    assert BOOK.price_of(nov, "ship") == Decimal("0.0048")


def test_user_file_may_define_a_plan(tmp_path: Path) -> None:
    path = tmp_path / "enterprise.toml"
    path.write_text(
        """
[[plan]]
id = "enterprise"
fee = "2000"
inference_credits = "500"
effective = 2026-11-01
source = "order form"

[[resource]]
plan = "enterprise"
resource = "agent_session"
included = 200000
price = "0.006"
effective = 2026-11-01
source = "order form"
"""
    )
    book = PriceBook.load(path)
    invoice = book.invoice(
        [rec("e", "session", Resource.AGENT_SESSION, 60_000, NOV)], plan="enterprise", month="2026-11"
    )
    assert invoice.total == Decimal("2000.00")


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidPriceBook) as info:
        PriceBook.load(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


ROW = """
[[stt]]
model = "acme/ears"
{field}
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[[stt]\nmodel = 1", "not valid TOML"),
        ('[[stt]]\nmodel = "acme/ears"\nprice = "0.01"\neffective = 2026-11-01', "field 'source': missing"),
        ('[[stt]]\nmodel = "acme/ears"\nprice = "0.01"\nsource = "x"', "field 'effective': missing"),
        (
            '[[stt]]\nmodel = "acme/ears"\nprice = "0.01"\nsource = "x"\neffective = "2026-11-01"',
            "field 'effective': must be a TOML date",
        ),
        (
            '[[stt]]\nmodel = "acme/ears"\nprice = "-0.01"\nsource = "x"\neffective = 2026-11-01',
            "[[stt]] #1 (model 'acme/ears'): field 'price': must not be negative",
        ),
        (
            '[[stt]]\nmodel = "acme/ears"\nprice = 0.01\nsource = "x"\neffective = 2026-11-01',
            "field 'price': is a TOML float (0.01); write money as a decimal string",
        ),
        (
            '[[stt]]\nmodel = "acme/ears"\nprice = "abc"\nsource = "x"\neffective = 2026-11-01',
            "field 'price': 'abc' is not a decimal number",
        ),
        (
            '[[stt]]\nmodel = "acme/ears"\nprice = "NaN"\nsource = "x"\neffective = 2026-11-01',
            "field 'price': must be a finite amount",
        ),
        (
            '[[stt]]\nmodel = "acme/ears"\nprise = "1"\nsource = "x"\neffective = 2026-11-01',
            "field 'prise': unknown field",
        ),
        (
            '[[resource]]\nplan = "gold"\nresource = "connection"\nprice = "1"\nsource = "x"\neffective = 2026-11-01',
            "field 'plan': unknown plan 'gold'; known plans: ['build', 'scale', 'ship']",
        ),
        (
            '[[resource]]\nplan = "ship"\nresource = "teleport"\nprice = "1"\nsource = "x"\neffective = 2026-11-01',
            "field 'resource': unknown resource 'teleport'",
        ),
        (
            '[[resource]]\nplan = "ship"\nresource = "stt"\nprice = "1"\nsource = "x"\neffective = 2026-11-01',
            "is priced per model",
        ),
        (
            '[[resource]]\nplan = "ship"\nresource = "data_transfer"\nprice = "1"\nper = "minute"\n'
            'source = "x"\neffective = 2026-11-01',
            "field 'per': 'minute' does not fit data_transfer",
        ),
        (
            '[[resource]]\nplan = "ship"\nresource = "connection"\nsource = "x"\neffective = 2026-11-01',
            "field 'price': missing",
        ),
        ('[[llm]]\nmodel = "acme/brain"\nsource = "x"\neffective = 2026-11-01', "needs input, cached and output"),
        ('[[plans]]\nid = "x"', "unknown table 'plans'"),
        ('[[plan]]\nid = "x"\nfee = -5\nsource = "x"\neffective = 2026-11-01', "field 'fee': must not be negative"),
    ],
)
def test_bad_price_files_give_errors_naming_file_row_and_field(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in _error(tmp_path, body)


def test_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    before = len(PriceBook.bundled().rows)
    _error(tmp_path, '[[stt]]\nmodel = "a/b"\nprice = "1"\nsource = "x"\neffective = 2026-11-01\n[[stt]]\nmodel = 3')
    assert len(PriceBook.bundled().rows) == before


def test_missing_price_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidPriceBook, match="cannot read price file"):
        PriceBook.load(tmp_path / "nope.toml")
