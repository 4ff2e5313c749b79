"""Where the agent runs decides what its own time is billed as: agent session minutes when deployed to
LiveKit Cloud, its own WebRTC connection minutes when self-hosted against LiveKit Cloud, nothing
LiveKit bills on your own server.

The job-runner tests run livekit-agents' real ``_JobProc`` with a real AgentSession (scripted LLM)
and a FakeRoom standing in for the LiveKit server; hosting is detected the way the package does in
production, from the job's server URL and the variables LiveKit Cloud sets for deployed agents.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from harness.jobproc import JOB_ID, ROOM_SID, FakeRoom, ManualClock, run_job
from livekit.agents import Agent, AgentSession, JobContext

from livekit_metering.adapters import MeteredLLM
from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.hosting import CLOUD_AGENT_ENV, HOSTING_ENV, Hosting, InvalidHosting, detect_hosting
from livekit_metering.options import InvalidOption
from livekit_metering.preview import render_summary
from livekit_metering.pricing import PriceBook
from livekit_metering.records import MeterRecord, Resource, Status, participant_usage_id
from livekit_metering.scripted import ScriptedLLM

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
CLOUD_URL = "wss://acme-4x7k.livekit.cloud"
OWN_URL = "ws://livekit.internal:7880"
AGENT_SID = "PA_agent-" + JOB_ID  # the FakeRoom's local participant


# -- detection ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "expected", "source"),
    [
        (CLOUD_URL, {"LIVEKIT_AGENT_ID": "CA_abc"}, Hosting.CLOUD, "deployment"),
        (CLOUD_URL, {"LIVEKIT_AGENT_DEPLOYMENT": "dep-1"}, Hosting.CLOUD, "deployment"),
        (CLOUD_URL, {"LIVEKIT_WORKER_TOKEN": "tok"}, Hosting.CLOUD, "deployment"),
        (CLOUD_URL, {}, Hosting.SELF_HOSTED_ON_CLOUD, "url"),
        ("wss://acme.livekit.run", {}, Hosting.SELF_HOSTED_ON_CLOUD, "url"),
        (OWN_URL, {}, Hosting.SELF_HOSTED, "url"),
        ("wss://livekit.cloud.example.com", {}, Hosting.SELF_HOSTED, "url"),  # not a LiveKit Cloud host
        ("", {}, Hosting.SELF_HOSTED, "url"),
        (CLOUD_URL, {HOSTING_ENV: "Self-Hosted"}, Hosting.SELF_HOSTED, "env"),
        (OWN_URL, {HOSTING_ENV: "cloud", "LIVEKIT_AGENT_ID": ""}, Hosting.CLOUD, "env"),
    ],
)
def test_hosting_is_detected_from_what_livekit_agents_reads(
    url: str, env: dict[str, str], expected: Hosting, source: str
) -> None:
    assert detect_hosting(url, environ=env) == (expected, source)


def test_the_option_wins_and_a_wrong_value_says_what_to_write() -> None:
    assert detect_hosting(OWN_URL, option="cloud", environ={HOSTING_ENV: "self-hosted"}) == (Hosting.CLOUD, "option")
    with pytest.raises(InvalidHosting, match="'cloud', 'self-hosted-on-cloud', 'self-hosted'"):
        detect_hosting(OWN_URL, environ={HOSTING_ENV: "on-prem"})
    with pytest.raises(InvalidOption, match=r"metered\(hosting='selfhosted'\): must be one of 'cloud', "):
        metered(hosting="selfhosted")


# -- the agent's own time, in the real job runner -------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No hosting set: detection decides. Without API keys livekit-agents' cloud telemetry stays off
    (it cannot sign), so these jobs leave no process-wide tracer behind for other tests."""
    for name in (HOSTING_ENV, *CLOUD_AGENT_ENV, "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_OBSERVABILITY_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def _seventy_second_call(clock: ManualClock, out: Path, url: str, **options: object) -> list[MeterRecord]:
    async def entry(ctx: JobContext) -> None:
        clock.advance(3)
        await ctx.connect()
        session: AgentSession[None] = AgentSession(llm=MeteredLLM(ScriptedLLM(["We open at nine."])))
        await session.start(Agent(instructions="Answer briefly."))
        result = await session.run(user_input="When do you open?")
        result.expect.next_event().is_message(role="assistant")
        clock.advance(70)
        ctx.shutdown("caller hung up")
        await session.aclose()

    await run_job(metered(entry, file=out, clock=clock, **options), room=FakeRoom(), url=url)  # type: ignore[arg-type]
    return read_records(out)


def _own_time(records: list[MeterRecord]) -> list[MeterRecord]:
    """The record of the agent's own time in the room (agent session or connection minutes)."""
    return [r for r in records if r.meta.get("session_time") is True]


async def test_a_self_hosted_agent_on_livekit_cloud_bills_its_own_connection_minutes(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    records = await _seventy_second_call(ManualClock(), tmp_path / "r.jsonl", CLOUD_URL)

    (own,) = _own_time(records)
    assert own.resource is Resource.CONNECTION and own.status is Status.OK
    assert (own.start, own.end, own.raw) == (T0 + timedelta(seconds=3), T0 + timedelta(seconds=73), 70_000)
    assert own.quantity == Decimal(2)  # 70 s rounds up to 2 minutes
    # the id LiveKit's participant webhooks give the collector for the agent's participant: stored once
    assert own.id == participant_usage_id(ROOM_SID, AGENT_SID, Resource.CONNECTION)
    assert own.session_id == JOB_ID and own.provider == ""
    assert own.meta["hosting"] == "self-hosted-on-cloud" and own.meta["session_time"] is True
    assert own.meta["participant_sid"] == AGENT_SID and own.meta["end_cause"] == "shutdown"
    assert own.meta["hosting_source"] == "url"  # a LiveKit Cloud URL, no deployment variables
    # 2 minutes at the Ship overage price of $0.0005 a minute (hand calculation)
    assert PriceBook.bundled().cost(records, plan="ship").by_resource["connection"] == Decimal("0.0010")


async def test_the_same_call_deployed_to_livekit_cloud_bills_agent_session_minutes(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("LIVEKIT_AGENT_ID", "CA_support")  # what LiveKit Cloud sets in a deployed agent's worker
    records = await _seventy_second_call(ManualClock(), tmp_path / "r.jsonl", CLOUD_URL)

    (own,) = _own_time(records)
    assert own.resource is Resource.AGENT_SESSION and own.quantity == Decimal(2) and own.raw == 70_000
    assert own.id == f"{JOB_ID}/session/agent_session"
    assert own.meta["hosting"] == "cloud" and own.meta["participant_sid"] == AGENT_SID
    # its participant's WebRTC minutes, under the id the collector derives from webhooks: covered, 0
    (covered,) = [r for r in records if r.resource is Resource.CONNECTION]
    assert covered.id == participant_usage_id(ROOM_SID, AGENT_SID, Resource.CONNECTION)
    assert (covered.raw, covered.quantity, covered.status) == (0, Decimal(0), Status.OK)
    assert covered.meta["covered_by"] == "agent_session" and covered.session_id == JOB_ID
    assert not [r for r in records if r.resource is Resource.DATA_TRANSFER]  # its traffic stays inside LiveKit Cloud
    assert PriceBook.bundled().cost(records, plan="ship").by_resource["agent_session"] == Decimal("0.02")


async def test_on_your_own_server_the_records_are_kept_but_not_billed_by_livekit(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="livekit_metering"):
        records = await _seventy_second_call(ManualClock(), tmp_path / "r.jsonl", OWN_URL)

    (own,) = _own_time(records)
    assert own.resource is Resource.CONNECTION and own.quantity == Decimal(2)
    assert own.provider == "self-hosted" and own.meta["hosting"] == "self-hosted"
    book = PriceBook.bundled()
    assert book.price_of(own, plan="ship") == Decimal(0)
    report = book.cost(records, plan="ship")
    (line,) = [ln for ln in report.lines if ln.resource is Resource.CONNECTION]
    assert line.cost == Decimal(0) and not line.billed_by_livekit and "connection" not in report.unpriced

    invoice = book.invoice(records, plan="ship", month="2026-11")
    assert "connection" not in {ln.resource for ln in invoice.lines}
    assert invoice.not_billed_by_livekit == [
        "connection via self-hosted",
        "data_transfer via self-hosted",  # 0 bytes here: the FakeRoom's counter stays at zero
    ]

    from rich.console import Console

    console = Console(file=io.StringIO(), width=140)
    console.print(render_summary(records, book, "ship"))
    table = console.file.getvalue()  # type: ignore[attr-defined]
    (row,) = [ln for ln in table.splitlines() if "WebRTC connection" in ln]
    assert "not billed by LiveKit" in row and "$0.0000" in row

    (line_text,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"session {JOB_ID}")]
    assert "connection_minutes=2" in line_text and "hosting=self-hosted" in line_text
    assert "billed_minutes=0" in line_text


async def test_hosting_option_overrides_the_detection(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    records = await _seventy_second_call(ManualClock(), tmp_path / "r.jsonl", OWN_URL, hosting="cloud")
    (own,) = _own_time(records)
    assert own.resource is Resource.AGENT_SESSION and own.meta["hosting"] == "cloud"
    assert own.meta["hosting_source"] == "option"


async def test_a_job_that_never_connects_bills_nothing_whatever_the_hosting(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def entry(ctx: JobContext) -> None:
        ctx.shutdown("nobody came")

    out = tmp_path / "r.jsonl"
    await run_job(metered(entry, file=out), room=FakeRoom(), url=CLOUD_URL)
    assert not out.exists() or read_records(out) == []
