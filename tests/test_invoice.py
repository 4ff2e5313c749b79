"""Invoice preview: plan fee, quotas first, overage per resource, inference credits, cents, nothing due."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pricing_month import LK, MONTH_START, SHIP_NOVEMBER_LINES, SHIP_NOVEMBER_TOTAL, rec, ship_month

from livekit_metering.pricing import InvalidMonth, Invoice, InvoiceLine, PriceBook, UnknownPlan, cents, month_bounds
from livekit_metering.records import Resource

BOOK = PriceBook.bundled()


def line_of(invoice: Invoice, resource: str) -> InvoiceLine:
    return next(ln for ln in invoice.lines if ln.resource == resource)


def test_ship_month_matches_the_hand_calculation_line_by_line() -> None:
    invoice = BOOK.invoice(ship_month(), plan="ship", month="2026-11")
    got = [(ln.resource, ln.model, ln.unit, ln.quantity, ln.included, ln.billable, ln.amount) for ln in invoice.lines]
    assert got == SHIP_NOVEMBER_LINES
    assert invoice.total == SHIP_NOVEMBER_TOTAL
    assert sum(ln.amount for ln in invoice.lines if ln.amount is not None) == invoice.total
    assert invoice.unpriced == ["openai/gpt-5.1"]
    assert invoice.not_billed_by_livekit == ["deepgram/nova-3 via deepgram"]
    assert not invoice.nothing_due


def test_ship_month_json_has_decimal_strings_and_a_total() -> None:
    data = BOOK.invoice(ship_month(), plan="ship", month="2026-11").to_json()
    assert data["plan"] == "ship" and data["month"] == "2026-11" and data["currency"] == "USD"
    assert data["nothing_due"] is False
    assert data["total"] == "312.35"
    assert data["price_date"] == "2026-09-25"  # the newest price row used (cartesia/sonic-3)
    by_key = {(ln["resource"], ln["model"]): ln for ln in data["lines"]}
    assert by_key[("agent_session", "")] == {
        "resource": "agent_session",
        "model": "",
        "description": "agent session",
        "unit": "minute",
        "quantity": "7201",
        "included": "5000",
        "billable": "2201",
        "unit_price": "0.01",
        "per": "minute",
        "amount": "22.01",
    }
    assert by_key[("llm_output", "openai/gpt-5.1")]["amount"] is None
    assert by_key[("llm_output", "openai/gpt-5.1")]["unit_price"] is None
    for line in data["lines"]:
        assert line["amount"] is None or isinstance(line["amount"], str)


def test_track_egress_half_cent_rounds_half_up() -> None:
    line = line_of(BOOK.invoice(ship_month(), plan="ship", month="2026-11"), "track_egress")
    assert line.exact == Decimal("0.005")
    assert line.amount == Decimal("0.01")  # half-even would give 0.00


def test_cents_rounds_half_up() -> None:
    assert cents(Decimal("0.005")) == Decimal("0.01")
    assert cents(Decimal("0.0049999")) == Decimal("0.00")
    assert cents(Decimal("1.725")) == Decimal("1.73")
    assert cents(Decimal("-0.005")) == Decimal("-0.01")


def test_build_plan_within_caps_has_nothing_due() -> None:
    at = MONTH_START + timedelta(days=2)
    records = [
        rec("b1", "session", Resource.AGENT_SESSION, 600_000, at),
        rec("b1", "user", Resource.CONNECTION, 600_000, at),
        rec("b1", "stt-1", Resource.STT, 600_000, at, model="deepgram/nova-3", **LK),  # 10 min x 0.0048 = 0.048
        rec("b1", "tts-1", Resource.TTS, 20_000, at, model="cartesia/sonic-3", **LK),  # 20k x $50/M = $1.00
    ]
    invoice = BOOK.invoice(records, plan="build", month="2026-11")
    assert invoice.nothing_due
    assert invoice.total is None
    data = invoice.to_json()
    assert data["nothing_due"] is True and "total" not in data
    credit = next(ln for ln in invoice.lines if ln.resource == "inference_credits")
    assert credit.amount == Decimal("-1.05")  # 0.05 + 1.00, within the $2.50 credits


def test_build_plan_with_no_usage_has_nothing_due() -> None:
    invoice = BOOK.invoice([], plan="build", month="2026-11")
    assert invoice.nothing_due and "total" not in invoice.to_json()
    assert [ln.resource for ln in invoice.lines] == ["plan_fee"]


def test_build_plan_past_its_caps_bills_nothing_and_says_so() -> None:
    at = MONTH_START
    records = [rec(f"b{n}", "session", Resource.AGENT_SESSION, 600_000, at) for n in range(110)]  # 1,100 min
    records.append(rec("b0", "tts-1", Resource.TTS, 100_000, at, model="cartesia/sonic-3", **LK))  # $5.00
    invoice = BOOK.invoice(records, plan="build", month="2026-11")
    assert invoice.nothing_due
    agent = next(ln for ln in invoice.lines if ln.resource == "agent_session")
    assert (agent.quantity, agent.included, agent.billable, agent.amount) == (1100, 1000, 0, Decimal("0.00"))
    assert "100 minute past the cap: not billed" in agent.description
    credit = next(ln for ln in invoice.lines if ln.resource == "inference_credits")
    assert credit.amount == Decimal("-5.00")
    assert "$2.50 past the credits: not billed" in credit.description


def test_ship_with_no_usage_is_just_the_fee() -> None:
    invoice = BOOK.invoice([], plan="ship", month="2026-11")
    assert invoice.total == Decimal("50.00")
    assert invoice.to_json()["total"] == "50.00"


def test_platform_usage_on_your_own_livekit_server_is_left_out_and_listed() -> None:
    own = [
        rec("AJ_1", "session", Resource.CONNECTION, 200_000 * 60_000, MONTH_START, provider="self-hosted"),
        rec("AJ_1", "transfer", Resource.DATA_TRANSFER, 900 * 10**9, MONTH_START, provider="self-hosted"),
    ]
    invoice = BOOK.invoice(own, plan="ship", month="2026-11")
    assert invoice.total == Decimal("50.00")  # the fee only: 200,000 minutes past 150,000 would be $25
    assert [ln.resource for ln in invoice.lines] == ["plan_fee"]
    assert invoice.not_billed_by_livekit == ["connection via self-hosted", "data_transfer via self-hosted"]


def test_scale_uses_discounted_stt_and_tts_and_says_when_none_is_published() -> None:
    at = MONTH_START
    records = [
        rec("s1", "stt-1", Resource.STT, 6_000_000, at, model="deepgram/nova-3", **LK),  # 100 min
        rec("s1", "stt-2", Resource.STT, 6_000_000, at, model="xai/stt-1", **LK),  # 100 min, no Scale price
        rec("s1", "tts-1", Resource.TTS, 1_000_000, at, model="cartesia/sonic-3", **LK),
    ]
    lines = {ln.model: ln for ln in BOOK.invoice(records, plan="scale", month="2026-11").lines if ln.model}
    assert lines["deepgram/nova-3"].amount == Decimal("0.42")  # 100 x 0.0042 (Scale)
    assert lines["cartesia/sonic-3"].amount == Decimal("37.50")
    assert lines["xai/stt-1"].amount == Decimal("0.33")  # list 0.0033
    assert "no Scale price published" in lines["xai/stt-1"].description


def test_per_second_usage_is_shown_in_seconds_and_priced_exactly() -> None:
    # 5,000 min + 30 s of agent time under the per-second policy: 30 s past the quota.
    at = MONTH_START
    records = [
        rec(f"p{n}", "session", Resource.AGENT_SESSION, 300_000, at, policy="per-second-10s-minimum")
        for n in range(1000)
    ]
    records.append(rec("p-last", "session", Resource.AGENT_SESSION, 30_000, at, policy="per-second-10s-minimum"))
    agent = line_of(BOOK.invoice(records, plan="ship", month="2026-11"), "agent_session")
    assert agent.unit == "second"
    assert (agent.quantity, agent.included, agent.billable) == (300_030, 300_000, 30)
    assert agent.exact == Decimal("0.005")  # 30 s = 0.5 min x $0.01
    assert agent.amount == Decimal("0.01")


def test_transcode_allowance_is_shared_with_audio_only_transcode_and_stream_import() -> None:
    at = MONTH_START
    records = [
        rec("e1", "video", Resource.TRANSCODE, 500 * 60_000, at),
        rec("e1", "audio", Resource.TRANSCODE_AUDIO, 200 * 60_000, at),
        rec("e1", "import", Resource.STREAM_IMPORT, 10 * 60_000, at),
    ]
    invoice = BOOK.invoice(records, plan="ship", month="2026-11")
    lines = {ln.resource: ln for ln in invoice.lines}
    assert (lines["transcode"].included, lines["transcode"].amount) == (500, Decimal("0.00"))
    assert (lines["transcode_audio"].included, lines["transcode_audio"].billable) == (100, 100)
    assert lines["transcode_audio"].amount == Decimal("0.50")  # 100 x $0.005
    assert lines["stream_import"].billable == 10 and lines["stream_import"].amount is None
    assert invoice.unpriced == ["stream_import"]
    assert invoice.total == Decimal("50.50")


def test_month_is_taken_from_start_in_utc() -> None:
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=timezone.utc)
    records = [
        rec("m1", "session", Resource.AGENT_SESSION, 60_000, late),
        rec("m2", "session", Resource.AGENT_SESSION, 60_000, datetime(2026, 12, 1, tzinfo=timezone.utc)),
    ]
    nov = line_of(BOOK.invoice(records, plan="ship", month="2026-11"), "agent_session")
    assert nov.quantity == 1
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=timezone.utc),
        datetime(2027, 1, 1, tzinfo=timezone.utc),
    )


def test_unknown_plan_and_bad_month_are_clear_errors() -> None:
    with pytest.raises(UnknownPlan, match=r"unknown plan 'gold'; known plans: build, scale, ship"):
        BOOK.invoice([], plan="gold", month="2026-11")
    for bad in ("11/2026", "2026-1", ""):
        with pytest.raises(InvalidMonth, match="must be written YYYY-MM"):
            BOOK.invoice([], plan="ship", month=bad)
    # Well written but out of range: said so, not "the format is wrong".
    for bad, message in (("2026-13", "months are 01 to 12"), ("2026-00", "months are 01 to 12"), ("9999-12", "year")):
        with pytest.raises(InvalidMonth, match=message):
            BOOK.invoice([], plan="ship", month=bad)
