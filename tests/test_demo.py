"""The README's main job: `livekit-metering demo` meters a real session end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console

from livekit_metering import PriceBook, Resource, Status, get_policy
from livekit_metering.demo import SCRIPT, run_demo


async def test_demo_session_reaches_the_collector_rounded_and_priced(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=120)
    result = await run_demo(plan="ship", console=console, workdir=tmp_path)

    by_resource: dict[Resource, list] = {}
    for record in result.records:
        assert record.session_id == result.session_id
        assert record.status is Status.OK, record
        assert get_policy(record.policy).check(record) is None
        by_resource.setdefault(record.resource, []).append(record)

    (session,) = by_resource[Resource.AGENT_SESSION]
    assert session.quantity == 1  # a few seconds bill as one minute
    assert session.meta["end_cause"] == "shutdown"
    assert len(by_resource[Resource.LLM_OUTPUT]) == len(SCRIPT)  # one record per LLM request
    assert len(by_resource[Resource.TTS]) == len(SCRIPT)
    replies = sum(len(reply) for _, reply in SCRIPT)
    assert sum(r.raw for r in by_resource[Resource.TTS]) == replies  # every character handed to the TTS
    (stt,) = by_resource[Resource.STT]  # one stream, open for the whole session
    assert stt.raw > 0 and stt.quantity == Decimal(-(-stt.raw // 1000))

    assert session.meta["hosting"] == "cloud"

    # the same call, self-hosted against LiveKit Cloud: its own connection minutes instead
    hosted = {r.resource: r for r in result.self_hosted_records}
    assert Resource.AGENT_SESSION not in hosted and hosted[Resource.CONNECTION].quantity == 1
    assert hosted[Resource.CONNECTION].meta["hosting"] == "self-hosted-on-cloud"
    assert sum(r.raw for r in result.self_hosted_records if r.resource is Resource.TTS) == replies  # the same call
    assert result.self_hosted_session_id != result.session_id

    book = PriceBook.bundled()
    month = session.start.strftime("%Y-%m")
    both = [*result.records, *result.self_hosted_records]
    local = book.invoice(both, plan="ship", month=month).to_json()
    assert result.invoice == local  # the collector's invoice preview is the same as one computed here
    assert result.invoice["total"] == "50.00"  # the plan fee; the usage fits in the included quotas
    assert result.session_cost == book.cost(result.records, plan="ship").total > 0
    # a minute of agent session ($0.01) against a minute of WebRTC connection ($0.0005)
    assert result.session_cost - result.self_hosted_cost == Decimal("0.0095")


def test_demo_command_runs_on_a_fresh_process_and_keeps_its_records_for_the_reports(tmp_path: Path) -> None:
    """The README's path: run the demo keeping its records, then `report` and `invoice` on them."""
    cli = [sys.executable, "-m", "livekit_metering.cli"]
    done = subprocess.run(
        [*cli, "demo", "--plan", "ship", "--keep", "records.jsonl"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "matches" in done.stdout
    assert "Invoice preview: ship plan" in done.stdout
    assert "agent deployed to LiveKit Cloud" in done.stdout and "self-hosted on LiveKit" in done.stdout
    assert "livekit-metering report records.jsonl" in done.stdout

    def run(*args: str) -> dict[str, Any]:
        command = [*cli, *args, "--format", "json"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    # Both calls, with the costs the demo's own preview printed (Cloud-deployed, then self-hosted).
    sessions = run("report", "records.jsonl")["sessions"]
    assert [s["customer"] for s in sessions] == ["acme-bikes", "acme-bikes"]
    assert [s["billed_minutes"] for s in sessions] == ["1", "1"]  # agent minutes, then its own connection
    total_row = next(line for line in done.stdout.splitlines() if line.startswith("│ Total"))
    shown = [cell.strip() for cell in total_row.split("│")[3:5]]
    assert [f"${Decimal(s['cost']).quantize(Decimal('0.0001'))}" for s in sessions] == shown
    invoice = run("invoice", "records.jsonl", "--plan", "ship")
    assert invoice["total"] == "50.00"  # the plan fee: both calls fit in the included quotas


def test_demo_refuses_an_unknown_plan() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "livekit_metering.cli", "demo", "--plan", "gold"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "gold" in done.stderr and "ship" in done.stderr
