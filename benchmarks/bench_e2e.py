"""Real sessions against a real LiveKit server: the agent's measured session time against the server's
join and leave times, and what each end cause billed.

    LIVEKIT_METERING_TEST_SERVER=/path/to/livekit-server .venv/bin/python benchmarks/bench_e2e.py [--sessions 5]

Each session is the one of tests/test_e2e_livekit.py (tests/harness/livekit_server.py): livekit-server
in dev mode on loopback, a registered AgentServer worker running the metered agent, a caller made
with the ``livekit`` SDK that publishes a tone and hears one scripted reply, then the end cause.
Sessions run one at a time. Per session, against the server's webhooks for the agent participant:

* start: the agent's session-time record's start minus ``ParticipantInfo.joined_at_ms`` (the server registers the join,
  then the agent's ``connect()`` returns);
* end: the session's end minus the time the server's ``participant_left`` webhook for the agent arrived
  (both on this host's clock; the event's own ``created_at`` has whole seconds only), so the server's
  leave time here includes the webhook's delivery, tens of milliseconds;
* billed: the agent's session-time quantity, and what the server's join and leave give under the same
  policy (minute increments); and both under the per-second policy (1 s increments, 10 s minimum);
* kill to billed end: the kill's time minus the billed end (positive: time lost; negative: billed
  past the kill, while the server still counted the dead agent in the room).

Causes: ``shutdown`` (ctx.shutdown() after the reply), ``deleted`` (RoomService.DeleteRoom), ``left``
(the caller leaves; the server closes the room after its departure timeout, 1 s here), ``killed`` (the
worker and its job processes SIGKILLed, then the caller leaves: the server's participant_left webhook
closes the session), ``stale`` (the job process SIGKILLed with the room's webhooks held back: the
collector's stale sweep closes it at its last checkpoint). ``--hold`` seconds pass between the reply
and the end (default 12, so that per-second billing is above its 10 s minimum).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.livekit_server import ENDS, SERVER_ENV, SessionRun, Stack, run_session

from livekit_metering.rates import get_policy
from livekit_metering.records import Resource

SCRIPT = [("Hello, is this the metering line?", "Yes, every second of this call is measured.")]
PER_SECOND = get_policy("per-second-10s-minimum")


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def measure(run: SessionRun) -> dict[str, int | Decimal | str]:
    s = run.session
    joined_ms = int(run.webhook("participant_joined", run.agent).event.participant.joined_at_ms)
    left_ms = run.webhook("participant_left", run.agent).arrived_ms
    return {
        "start": ms(s.start) - joined_ms,
        "end": ms(s.end) - left_ms,
        "agent_ms": s.raw,
        "server_ms": left_ms - joined_ms,
        "billed": s.quantity,
        "billed_server": get_policy(s.policy).quantity(s.resource, left_ms - joined_ms),
        "per_second": PER_SECOND.quantity(s.resource, s.raw),
        "per_second_server": PER_SECOND.quantity(s.resource, left_ms - joined_ms),
        "lost": run.marks["killed"] - ms(s.end) if "killed" in run.marks else 0,
        "closed_by": str(s.meta.get("closed_by") or f"the agent ({s.meta.get('end_cause')})"),
        "stt": sum((r.quantity for r in run.records if r.resource is Resource.STT), Decimal(0)),
    }


def spread(values: list[int]) -> str:
    """median and worst (largest magnitude), signed, in ms"""
    worst = max(values, key=abs)
    return f"{statistics.median(values):+.0f} / {worst:+d}"


def total(rows: list[dict[str, int | Decimal | str]], key: str) -> Decimal:
    return sum((Decimal(r[key]) for r in rows), Decimal(0))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=5, help="sessions per end cause")
    parser.add_argument("--hold", type=float, default=12.0, help="seconds between the reply and the end")
    parser.add_argument("--causes", default=",".join(ENDS), help=f"comma-separated, of {', '.join(ENDS)}")
    args = parser.parse_args()
    binary = os.environ.get(SERVER_ENV)
    if not binary:
        sys.exit(f"set {SERVER_ENV} to a livekit-server binary (.ci/run installs one)")
    causes = args.causes.split(",")
    results: dict[str, list[dict[str, int | Decimal | str]]] = {cause: [] for cause in causes}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        stack = Stack(binary, Path(tmp), close_stale_after=timedelta(seconds=8)).start()
        try:
            for i in range(args.sessions):
                for cause in causes:  # interleaved: the machine's load spreads over every cause alike
                    stack.ensure_worker()
                    run = await run_session(stack, cause, SCRIPT, workdir=Path(tmp), hold=args.hold)
                    results[cause].append(measure(run))
                    print(f"  {i + 1}/{args.sessions} {cause}: {results[cause][-1]}", file=sys.stderr)
        finally:
            stack.stop()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; livekit-server {stack.version}, livekit-agents {version('livekit-agents')}, "
        f"livekit {version('livekit')}; {args.sessions} sessions per cause, one at a time, "
        f"{args.hold:g} s held after the reply"
    )
    print()
    print(
        "| end cause | closed by | agent start − server join, ms | agent end − server leave, ms "
        "| session s, agent / server (median) | billed minutes, agent / server | per-second policy s, "
        "agent / server | STT s billed | kill to billed end, ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for cause, rows in results.items():
        closed = ", ".join(sorted({str(r["closed_by"]) for r in rows}))
        agent_s = statistics.median(int(r["agent_ms"]) for r in rows) / 1000
        server_s = statistics.median(int(r["server_ms"]) for r in rows) / 1000
        lost = spread([int(r["lost"]) for r in rows]) if any(r["lost"] for r in rows) else ""
        start, end = spread([int(r["start"]) for r in rows]), spread([int(r["end"]) for r in rows])
        print(
            f"| {cause} | {closed} | {start} | {end} "
            f"| {agent_s:.2f} / {server_s:.2f} | {total(rows, 'billed')} / {total(rows, 'billed_server')} "
            f"| {total(rows, 'per_second')} / {total(rows, 'per_second_server')} | {total(rows, 'stt')} | {lost} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
