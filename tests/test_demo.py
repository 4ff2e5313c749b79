"""The README's main job: `livekit-metering demo` meters a real session end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

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

    book = PriceBook.bundled()
    month = session.start.strftime("%Y-%m")
    local = book.invoice(result.records, plan="ship", month=month).to_json()
    assert result.invoice == local  # the collector's invoice preview is the same as one computed here
    assert result.invoice["total"] == "50.00"  # the plan fee; the usage fits in the included quotas
    assert result.session_cost == book.cost(result.records, plan="ship").total > 0


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
    assert "livekit-metering report records.jsonl" in done.stdout
    session_id = done.stdout.split("records for session ", 1)[1].split()[0]

    def run(*args: str) -> dict[str, object]:
        command = [*cli, *args, "--format", "json"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        data: dict[str, object] = json.loads(out.stdout)
        return data

    report = run("report", "records.jsonl")
    (session,) = report["sessions"]  # type: ignore[misc]
    assert session["session_id"] == session_id and session["customer"] == "acme-bikes"  # type: ignore[index]
    assert session["billed_minutes"] == "1" and Decimal(session["cost"]) > Decimal("0.01")  # type: ignore[index]
    invoice = run("invoice", "records.jsonl", "--plan", "ship")
    assert invoice["total"] == "50.00"  # the plan fee: the session fits in the included quotas


def test_demo_refuses_an_unknown_plan() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "livekit_metering.cli", "demo", "--plan", "gold"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "gold" in done.stderr and "ship" in done.stderr
