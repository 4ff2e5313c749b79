"""Budgets in livekit-agents' real job runner with a real AgentSession (scripted STT, LLM and TTS burning
tokens and characters at LiveKit Inference list prices) and, for customer budgets, a real collector.

* A $0.02 session budget: the warning fires once, then the cap is reached within one usage, the
  agent finishes the utterance in progress (not interrupted), the session ends with
  ``end_cause = budget``; no further reply is generated.
* A customer over its monthly cap is refused before the agent connects: nothing is metered.
* A customer under its cap is ended when the running session takes it over.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from collector_helpers import body_of, post
from harness.jobproc import JOB_ID, FakeRoom, run_job
from livekit.agents import Agent, AgentSession, JobContext
from livekit.agents.voice.turn import TurnHandlingOptions

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.budgets import BudgetEvent, end_after_utterance
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.pricing import PriceBook
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status, latest_forms
from livekit_metering.scripted import FakeAudioInput, FakeAudioOutput, ScriptedLLM, ScriptedSTT, ScriptedTTS

pytestmark = pytest.mark.slow

TURN_HANDLING: dict[str, Any] = {
    "turn_detection": "stt",
    "endpointing": {"min_delay": 0.1, "max_delay": 0.5},
    "interruption": {"enabled": False},
    "preemptive_generation": {"enabled": False},
}
# Each reply is about 130 characters: some $0.0065 of cartesia/sonic-3 TTS at $50 per 1M characters.
REPLIES = [
    f"Reply {n}: we can certainly help with that, and here is what I would suggest for your order, "
    "with delivery on Tuesday morning."
    for n in range(1, 9)
]
LINES = [f"Question number {n}, please." for n in range(1, 9)]
BOOK = PriceBook.bundled()


class PacedAudioOutput(FakeAudioOutput):
    """A speaker that takes ``1 / speed`` of the audio's duration to play a segment (an instant one
    would leave nothing in progress to finish)."""

    def __init__(self, speed: float = 4.0) -> None:
        super().__init__()
        self.speed = speed

    def _finish_soon(self, played: float, *, interrupted: bool) -> None:
        def finish() -> None:
            self.on_playback_finished(playback_position=played, interrupted=interrupted)

        if interrupted:
            asyncio.get_running_loop().call_soon(finish)
        else:
            asyncio.get_running_loop().call_later(played / self.speed, finish)


def cost(records: list[MeterRecord]) -> Decimal:
    """At Ship list prices, each usage's latest form (a running checkpoint counts once)."""
    return sum((BOOK.price_of(r, "ship") or Decimal(0) for r in latest_forms(records)), Decimal(0))


class Conversation:
    """A caller who asks the scripted questions one after the other until the session closes."""

    def __init__(self) -> None:
        self.stt, self.llm, self.tts = ScriptedSTT(), ScriptedLLM(list(REPLIES)), ScriptedTTS()
        self.messages: list[Any] = []
        self.closed = asyncio.Event()
        self.closed_at = 0.0
        self.playout_ends: list[float] = []

    async def run(self, ctx: JobContext) -> None:
        await ctx.connect()
        session: AgentSession[None] = AgentSession(
            stt=MeteredSTT(self.stt),
            llm=MeteredLLM(self.llm),
            tts=MeteredTTS(self.tts),
            turn_handling=cast(TurnHandlingOptions, TURN_HANDLING),
        )
        session.input.audio = FakeAudioInput()
        speaker = PacedAudioOutput()
        session.output.audio = speaker
        speaker.on("playback_finished", lambda _: self.playout_ends.append(time.monotonic()))

        def on_close(_: Any) -> None:
            self.closed_at = time.monotonic()
            self.closed.set()

        session.on("close", on_close)
        session.on("conversation_item_added", lambda ev: self.messages.append(ev.item))
        await session.start(Agent(instructions="Answer every question."))
        await asyncio.sleep(0.2)
        for line in LINES:
            replies = len(self.replies)
            self.stt.say(line)
            for _ in range(200):  # bounded: 10 s a turn
                if self.closed.is_set() or len(self.replies) > replies:
                    break
                await asyncio.sleep(0.05)
            if self.closed.is_set():
                return
            await asyncio.sleep(0.5)  # the reply plays out (0.3 s at the paced speaker)
        ctx.shutdown("script over")  # the budget never ended the call

    @property
    def replies(self) -> list[Any]:
        return [m for m in self.messages if getattr(m, "role", "") == "assistant"]


async def test_a_session_budget_warns_once_then_ends_the_session_after_the_utterance(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    talk = Conversation()
    events: list[tuple[str, BudgetEvent, float]] = []

    def warned(ctx: JobContext, event: BudgetEvent) -> None:
        events.append(("warning", event, time.monotonic()))

    async def limit(ctx: JobContext, event: BudgetEvent) -> None:
        events.append(("limit", event, time.monotonic()))
        await end_after_utterance(ctx, event)  # the default, observed

    entry = metered(talk.run, file=out, hosting="cloud", budget="0.02", on_budget_warning=warned, on_limit=limit)
    run = await run_job(entry, room=FakeRoom(), timeout=60)
    records = read_records(out)

    # By hand: the session's first minute ($0.01 once connected, cloud-deployed), each reply's LLM tokens
    # (openai/gpt-4.1-mini: $0.40 / $1.60 per 1M input / output tokens) and TTS characters ($50 per 1M:
    # some $0.0065 a reply). Reply 1 takes it past $0.016: the warning (80 %); reply 2 past $0.02: the limit.
    rates = {Resource.LLM_INPUT: Decimal("0.40"), Resource.LLM_OUTPUT: Decimal("1.60"), Resource.TTS: Decimal(50)}

    def replies_cost(turns: int) -> Decimal:
        found = [r for r in records if r.resource in rates and int(r.id.split("/")[1].split("-")[1]) <= turns]
        return sum((r.raw * rates[r.resource] / 10**6 for r in found), Decimal(0))

    assert [kind for kind, _, _ in events] == ["warning", "limit"]
    warning, reached = events[0][1], events[1][1]
    assert warning.record_id == f"{JOB_ID}/tts-1/tts" and reached.record_id == f"{JOB_ID}/tts-2/tts"
    assert warning.spent == Decimal("0.01") + replies_cost(1)
    assert reached.spent == Decimal("0.01") + replies_cost(2)
    # Within one usage of the cap: before the crossing record (reply 2's TTS) it was under the cap.
    crossing = next(r for r in records if r.id == reached.record_id)
    assert reached.spent - crossing.raw * rates[Resource.TTS] / 10**6 < Decimal("0.02") <= reached.spent

    # The session's record says budget; no reply after the one in progress.
    (own,) = [r for r in records if r.meta.get("session_time") is True and r.status is Status.OK]
    assert own.meta["end_cause"] == "budget" and own.meta["shutdown_reason"] == "budget"
    assert (own.meta["budget"], own.meta["budget_cap"], own.meta["budget_spent"]) == (
        "session",
        "0.02",
        str(reached.spent),
    )
    assert run.exit_reason == "budget"
    tts = [r for r in records if r.resource is Resource.TTS]
    assert len(tts) == len(talk.replies) == 2
    assert len([r for r in records if r.resource is Resource.LLM_OUTPUT]) == 2
    # All it spent: the limit's figure, and the STT stream's closing seconds.
    stt = [r for r in latest_forms(records) if r.resource is Resource.STT]
    assert cost(records) == reached.spent + sum((BOOK.price_of(r, "ship") or Decimal(0) for r in stt), Decimal(0))

    # The utterance in progress was finished, not cut: the last reply is whole and played out before
    # the session closed.
    last = talk.replies[-1]
    assert not last.interrupted and last.text_content == REPLIES[1] and tts[1].raw >= len(REPLIES[1]) - 1
    assert talk.closed_at >= talk.playout_ends[-1] >= events[1][2]


# -- customer budgets, against a real collector ------------------------------------------------------------

ACME = '{"customer_id": "acme"}'


@pytest.fixture
def signed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The job signs with the collector's key and keeps its outbox in the test's directory."""
    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    monkeypatch.setenv("LIVEKIT_METERING_OUTBOX", str(tmp_path / "outbox.sqlite3"))


async def _seed_acme(http: aiohttp.ClientSession, url: str, sessions: int, minutes: int) -> None:
    """Earlier today: ``sessions`` sessions of ``minutes`` agent session minutes each for acme, side by
    side ($0.01 a minute at Ship list prices), all within the last ``minutes + 1`` minutes."""
    end = datetime.now(timezone.utc) - timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    records = [
        get_policy().record(
            id=f"AJ_earlier{n}/session/agent_session",
            session_id=f"AJ_earlier{n}",
            resource=Resource.AGENT_SESSION,
            raw=minutes * 60_000,
            start=start,
            end=end,
            customer="acme",
        )
        for n in range(sessions)
    ]
    status, doc = await post(http, url, body_of(records))
    assert status == 200 and {r["status"] for r in doc["results"]} == {"accepted"}, doc


async def _sessions(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/v1/sessions?limit=200", headers={"Authorization": sign()}) as resp:
        return cast(list[dict[str, Any]], (await resp.json())["sessions"])


async def test_a_customer_over_its_monthly_budget_is_refused_before_connecting(tmp_path: Path, signed: None) -> None:
    out, room = tmp_path / "records.jsonl", FakeRoom()
    talk = Conversation()
    async with run_collector() as url, aiohttp.ClientSession() as http:
        await _seed_acme(http, url, 100, 10)  # $10.00 this month, over a $5 cap
        entry = metered(talk.run, url=url, file=out, customer="customer_id", customer_budget="5")
        run = await run_job(entry, room=room, metadata=ACME, timeout=60)
        sessions = await _sessions(http, url)

    assert run.exit_reason == "customer_budget"
    assert not room.isconnected() and talk.messages == []  # the entrypoint never ran: no connection
    assert not out.exists() or read_records(out) == []  # nothing metered
    assert JOB_ID not in {s["session_id"] for s in sessions} and len(sessions) == 100  # nothing billed for this job


async def test_a_customer_under_its_budget_is_ended_when_the_running_session_crosses_it(
    tmp_path: Path, signed: None
) -> None:
    out = tmp_path / "records.jsonl"
    talk = Conversation()
    limits: list[BudgetEvent] = []

    async def limit(ctx: JobContext, event: BudgetEvent) -> None:
        limits.append(event)
        await end_after_utterance(ctx, event)

    async with run_collector() as url, aiohttp.ClientSession() as http:
        # $0.99 this month; a $1.01 cap leaves $0.02: the session's first minute ($0.01) and about one
        # and a half replies ($0.0065 each), as in the session budget above.
        await _seed_acme(http, url, 9, 11)
        entry = metered(
            talk.run, url=url, file=out, hosting="cloud", customer="customer_id", customer_budget="1.01", on_limit=limit
        )
        run = await run_job(entry, room=FakeRoom(), metadata=ACME, timeout=60)
        sessions = {s["session_id"]: s for s in await _sessions(http, url)}

    (reached,) = limits
    assert (reached.scope, reached.customer, reached.cap) == ("customer", "acme", Decimal("1.01"))
    assert reached.record_id == f"{JOB_ID}/tts-2/tts" and Decimal("0.99") + Decimal("0.02") <= reached.spent
    assert run.exit_reason == "customer_budget" and len(talk.replies) == 2
    records = read_records(out)
    (own,) = [r for r in records if r.meta.get("session_time") is True and r.status is Status.OK]
    assert (own.meta["end_cause"], own.meta["budget"], own.customer) == ("budget", "customer", "acme")
    # The collector has the session, ended by the budget (its records shipped through the outbox).
    assert sessions[JOB_ID]["end_cause"] == "budget" and sessions[JOB_ID]["customer"] == "acme"


async def _connect_and_leave(ctx: JobContext) -> None:
    await ctx.connect()
    ctx.shutdown("done")


@pytest.mark.parametrize("closed", [False, True])
async def test_an_unreachable_collector_fails_open_by_default_or_closed(
    tmp_path: Path, signed: None, closed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    out, room = tmp_path / "records.jsonl", FakeRoom()
    entry = metered(
        _connect_and_leave,
        url="http://127.0.0.1:9",  # nothing listens: the month-to-date cannot be read
        file=out,
        customer="customer_id",
        customer_budget="5",
        budget_fail_closed=closed,
    )
    run = await run_job(entry, room=room, metadata=ACME, timeout=60)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "month-to-date could not be read" in said
    if closed:
        assert run.exit_reason == "customer_budget_unavailable" and not out.exists()
    else:
        assert run.exit_reason == "done" and "fail open" in said
        assert [
            r.meta["end_cause"] for r in read_records(out) if r.meta.get("session_time") and r.status is Status.OK
        ] == ["shutdown"]
