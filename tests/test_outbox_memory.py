"""Memory stays flat: records leave memory once they are on disk, even while the collector is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_shipping_collector import free_port

CHILD = textwrap.dedent(
    """
    import gc, json, resource, sys
    from datetime import datetime, timedelta, timezone
    from livekit_metering.export import Backoff, Outbox
    from livekit_metering.rates import get_policy
    from livekit_metering.records import Resource

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024

    path, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    policy = get_policy(None)
    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)

    template = policy.record(id="job-0/llm-0/llm_output", session_id="job-0", resource=Resource.LLM_OUTPUT,
                             raw=1, start=t0, end=t0 + timedelta(seconds=1), model="openai/gpt-4.1-mini",
                             room="room-x", agent_name="agent")

    def make(i):
        # A fresh record object per call (as an agent makes them), without re-validating each one.
        return template.model_copy(update={"id": f"job-{i // 50}/llm-{i}/llm_output", "raw": i})

    outbox = Outbox(path, url=url, api_key="k", api_secret="s" * 32, backoff=Backoff(0.05, 0.5))
    for i in range(2000):  # warm up: imports, caches, the sender failing to connect
        outbox.export([make(i)])
    gc.collect()
    before = rss_kb()
    for i in range(2000, 2000 + count):
        outbox.export([make(i)])
    gc.collect()
    after = rss_kb()
    health = outbox.health()
    print(json.dumps({"before_kb": before, "after_kb": after, "pending": health.pending,
                      "dropped": health.dropped}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_100k_records_while_the_collector_is_down_add_only_a_few_mb(tmp_path: Path) -> None:
    count = 100_000
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the collector is down throughout
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "o.sqlite3"), url, str(count)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["pending"] == count + 2000, "every record is kept, on disk"
    assert result["dropped"] == 0
    grown_mb = (result["after_kb"] - result["before_kb"]) / 1024
    print(f"RSS grew {grown_mb:.1f} MB for {count} records")
    assert grown_mb < 30, f"RSS grew {grown_mb:.1f} MB for {count} records: records are kept in memory"
