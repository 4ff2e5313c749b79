"""BudgetGuard on plain records: the running list-price total (checkpoints replaced, not added), the
warning once, the limit once, a customer's month-to-date from the collector plus the session."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from livekit_metering.budgets import BudgetEvent, BudgetGuard, CustomerSpend
from livekit_metering.entrypoint import metered
from livekit_metering.options import InvalidOption, MeteringOptions
from livekit_metering.pricing import PriceBook
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

T0 = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def tts(n: int, chars: int = 60) -> MeterRecord:
    """``chars`` characters of cartesia/sonic-3 at $50 per 1M: 60 characters cost $0.003."""
    return get_policy().record(
        id=f"AJ_1/tts-{n}/tts",
        session_id="AJ_1",
        resource=Resource.TTS,
        raw=chars,
        start=T0,
        end=T0,
        model="cartesia/sonic-3",
        provider="livekit",
    )


def session_time(ms: int, status: Status = Status.CHECKPOINT) -> MeterRecord:
    return get_policy().record(
        id="AJ_1/session/agent_session",
        session_id="AJ_1",
        resource=Resource.AGENT_SESSION,
        raw=ms,
        start=T0,
        end=T0 + timedelta(milliseconds=ms),
        status=status,
    )


def guard(events: list[BudgetEvent], **kw: Any) -> BudgetGuard:
    return BudgetGuard(
        book=PriceBook.bundled(),
        plan="ship",
        session_id="AJ_1",
        fire=lambda callback, event: events.append(event),
        **kw,
    )


def test_the_warning_then_the_limit_each_once() -> None:
    events: list[BudgetEvent] = []
    g = guard(events, session_cap=Decimal("0.02"))
    # $0.003 each: $0.018 (the 6th) reaches 80 % of $0.02; $0.021 (the 7th) the cap.
    for n in range(1, 10):
        g.observe(tts(n))
        if n == 5:
            assert events == []
        if n == 6:
            assert [(e.kind, e.spent, e.record_id) for e in events] == [("warning", Decimal("0.018"), "AJ_1/tts-6/tts")]
    assert [(e.kind, e.scope, e.spent, e.record_id) for e in events] == [
        ("warning", "session", Decimal("0.018"), "AJ_1/tts-6/tts"),
        ("limit", "session", Decimal("0.021"), "AJ_1/tts-7/tts"),
    ]
    assert g.spent == Decimal("0.027")
    assert g.reached is events[1]
    assert events[1].reason == "budget"


def test_a_checkpoint_replaces_its_earlier_figure() -> None:
    events: list[BudgetEvent] = []
    g = guard(events, session_cap=Decimal("0.05"))
    for minutes in (1, 2, 3):  # running figures of one usage: 1, 2, then 3 minutes at $0.01
        g.observe(session_time(minutes * 60_000 - 5_000))
    assert g.spent == Decimal("0.03")
    g.observe(session_time(3 * 60_000, Status.OK))
    assert g.spent == Decimal("0.03") and events == []


def test_one_record_past_both_levels_fires_the_warning_first() -> None:
    events: list[BudgetEvent] = []
    g = guard(events, session_cap=Decimal("0.02"))
    g.observe(tts(1, chars=1_000))  # $0.05
    assert [e.kind for e in events] == ["warning", "limit"]


def test_a_customer_budget_counts_the_collectors_month_to_date_and_the_session() -> None:
    events: list[BudgetEvent] = []
    spend = CustomerSpend(
        "http://127.0.0.1:9", customer="acme", session_id="AJ_1", plan="ship", api_key=None, api_secret=None
    )
    spend.base = Decimal("9.99")
    g = guard(events, customer_cap=Decimal(10), customer=spend)
    g.observe(tts(1, chars=100))  # $0.005: $9.995 spent
    assert [e.kind for e in events] == ["warning"]  # $8 is 80 % of $10: passed long ago, said now
    g.observe(tts(2, chars=100))  # $10.000
    assert [(e.kind, e.scope, e.customer, e.spent) for e in events][1] == (
        "limit",
        "customer",
        "acme",
        Decimal("10.000"),
    )
    assert events[1].reason == "customer_budget"


def test_unpriced_usage_counts_nothing_and_no_budget_means_no_events() -> None:
    events: list[BudgetEvent] = []
    g = guard(events, session_cap=Decimal("0.001"))
    unknown = tts(1).model_copy(update={"model": "acme/house-tts"})
    g.observe(unknown)
    assert g.spent == 0 and events == []
    free = guard(events)
    free.observe(tts(2, chars=10**6))
    assert free.spent == Decimal(50) and events == []


def test_the_sessions_own_time_counts_as_it_runs_not_per_checkpoint() -> None:
    """The agent session minute is priced from the running duration each check (rounded up to the
    minute, $0.01 on Ship), so a budget sees the second minute begin without waiting for a checkpoint."""
    events: list[BudgetEvent] = []
    now_ms = [15_000]
    g = guard(events, session_cap=Decimal("0.02"), session_time=lambda: now_ms[0], policy=get_policy())
    g.observe(session_time(15_000).model_copy(update={"meta": {"session_time": True}}))
    assert (g.spent, g.total) == (0, Decimal("0.01")) and events == []
    now_ms[0] = 60_001  # the second minute has begun: $0.02, no new record needed
    g.check()
    assert g.total == Decimal("0.02")
    assert [(e.kind, e.spent) for e in events] == [("warning", Decimal("0.02")), ("limit", Decimal("0.02"))]
    g.observe(tts(1))  # usages add to it: $0.003
    assert g.total == Decimal("0.023")


# -- the options: checked where they are written, a clear error saying what to write ------------------------


async def _entry(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("budget", "-1", "must be a positive amount in USD"),
        ("budget", "twenty", 'must be an amount in USD such as "0.50"'),
        ("budget", "NaN", "must be a positive amount"),
        ("budget", True, "must be an amount in USD"),
        ("budget", "1e12", "up to 1,000,000,000"),
        ("customer_budget", [5], "must be an amount in USD"),
        ("budget_warning", "1.5", "above 0 and at most 1"),
        ("budget_warning", 0, "above 0 and at most 1"),
        ("customer_over_budget", "maybe", 'must be "refuse"'),
        ("on_limit", "stop", "must be a callable"),
        ("on_budget_warning", 3, "must be a callable"),
    ],
)
def test_a_bad_budget_option_fails_at_decoration_saying_what_to_write(option: str, value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        metered(_entry, **{option: value})
    assert f"metered({option}=" in str(info.value)


def test_budget_options_from_keywords_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    options = metered(_entry, budget=0.02, customer_budget=lambda customer: None).options
    resolved = options.resolved_budgets()
    assert resolved.session == Decimal("0.02") and callable(resolved.customer)
    assert (resolved.warn_at, resolved.customer_over, resolved.fail_closed) == (Decimal("0.8"), "refuse", False)
    assert not metered(_entry).options.resolved_budgets().any  # no budget: nothing is checked

    monkeypatch.setenv("LIVEKIT_METERING_SESSION_BUDGET", "0.50")
    monkeypatch.setenv("LIVEKIT_METERING_CUSTOMER_BUDGET", "100")
    monkeypatch.setenv("LIVEKIT_METERING_BUDGET_WARNING", "0.9")
    monkeypatch.setenv("LIVEKIT_METERING_CUSTOMER_OVER_BUDGET", "end")
    monkeypatch.setenv("LIVEKIT_METERING_BUDGET_FAIL_CLOSED", "true")
    env = metered(_entry).options.resolved_budgets()
    assert (env.session, env.customer, env.warn_at) == (Decimal("0.50"), Decimal(100), Decimal("0.9"))
    assert (env.customer_over, env.fail_closed) == ("end", True)
    assert metered(_entry, budget="1").options.resolved_budgets().session == Decimal(1)  # the keyword wins

    # A bad variable fails at decoration; one that went bad since (in the job process) is logged, once.
    monkeypatch.setenv("LIVEKIT_METERING_SESSION_BUDGET", "lots")
    with pytest.raises(InvalidOption, match=re.escape("LIVEKIT_METERING_SESSION_BUDGET='lots': must be an amount")):
        metered(_entry)
    assert MeteringOptions().resolved_budgets().session is None
    assert MeteringOptions().resolved_budgets().session is None
    assert caplog.text.count("LIVEKIT_METERING_SESSION_BUDGET='lots'") == 1
