"""SIGKILL of the recording and sending process at random moments: nothing it wrote is lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_shipping_collector import API_KEY, API_SECRET, StandInCollector, collector

from livekit_metering.export import Backoff, Outbox

__all__ = ["collector"]

CHILD = textwrap.dedent(
    """
    import random, sys
    from datetime import datetime, timedelta, timezone
    from livekit_metering.export import Backoff, Outbox
    from livekit_metering.rates import get_policy
    from livekit_metering.records import Resource

    path, url, key, secret, trial = sys.argv[1:6]
    policy = get_policy(None)
    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
    outbox = Outbox(path, url=url, api_key=key, api_secret=secret, interval=0.01, max_batch=25,
                    backoff=Backoff(0.01, 0.05))
    print("ready", flush=True)
    i = 0
    while True:
        batch = []
        for _ in range(random.randint(1, 4)):
            batch.append(policy.record(
                id=f"trial-{trial}/llm-{i}/llm_output", session_id=f"trial-{trial}",
                resource=Resource.LLM_OUTPUT, raw=100 + i, start=t0, end=t0 + timedelta(seconds=1)))
            i += 1
        outbox.export(batch)
        # Only now does the record count as taken: print its id after export returned.
        print(*(r.id for r in batch), sep="\\n", flush=True)
    """
)

TRIALS = 20


def run_and_kill(path: Path, url: str, trial: int, rng: random.Random) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), url, API_KEY, API_SECRET, str(trial)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    taken: set[str] = set()
    ready = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.strip()
            if line == "ready":
                ready.set()
            elif line:
                taken.add(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(30), "the child process did not start"
    time.sleep(rng.uniform(0.02, 0.5))  # a random moment: mid-export, mid-request, mid-delete, mid-checkpoint
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    reader.join(10)
    return taken


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_written_and_stores_nothing_twice(
    tmp_path: Path, collector: StandInCollector
) -> None:
    rng = random.Random(20261127)
    path = tmp_path / "outbox.sqlite3"  # one file per host: every restart reuses it
    collector.faults = [rng.choice(["slow", "commit-then-drop", "503"]) for _ in range(200)]
    collector.slow_s = 0.05
    taken: set[str] = set()
    for trial in range(TRIALS):
        taken |= run_and_kill(path, collector.url, trial, rng)
    assert len(taken) > TRIALS * 10, "the children recorded a meaningful number of records"
    print(f"{len(taken)} records taken, {collector.requests} requests before restart")

    collector.faults = []
    survivor = Outbox(path, url=collector.url, api_key=API_KEY, api_secret=API_SECRET, backoff=Backoff(0.01, 0.05))
    try:
        assert survivor.flush(30)
        stored = collector.call(lambda: set(collector.store))
        accepted = collector.call(lambda: dict(collector.accepted))
        assert taken <= stored, f"{len(taken - stored)} records written to the outbox never arrived"
        assert set(accepted.values()) == {1}, "no record was stored twice"
        assert survivor.health().pending == 0
    finally:
        survivor.close()


PLAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, timezone
    from livekit_metering import export
    from livekit_metering.meter import Meter
    from livekit_metering.records import Resource

    # A plain script: records through the default exporter, never calls shutdown().
    meter = Meter(session_id="script-1", exporter=export.default_exporter())
    t0 = datetime.now(timezone.utc)
    for i in range(30):
        meter.record(Resource.TTS, 100 + i, usage=meter.next_usage("tts"), start=t0, end=t0 + timedelta(seconds=1))
    """
)


def test_a_plain_script_that_never_calls_shutdown_still_delivers_at_exit(
    tmp_path: Path, collector: StandInCollector
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "LIVEKIT_METERING_URL": collector.url,
        "LIVEKIT_METERING_OUTBOX": str(tmp_path / "outbox.sqlite3"),
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
    }
    env.pop("LIVEKIT_METERING_FILE", None)
    subprocess.run([sys.executable, "-c", PLAIN_SCRIPT], env=env, check=True, timeout=60)
    stored = collector.call(lambda: set(collector.store))
    assert stored == {f"script-1/tts-{i}/tts" for i in range(1, 31)}
