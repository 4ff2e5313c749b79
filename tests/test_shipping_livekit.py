"""The outbox inside a real livekit-agents job process: records reach the collector when the job ends."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import _jobs
from livekit.agents import JobExecutorType
from test_entrypoint_server import running_server
from test_shipping_collector import API_KEY, API_SECRET, StandInCollector, collector

from livekit_metering.entrypoint import metered
from livekit_metering.export import Outbox
from livekit_metering.records import Resource, Status

__all__ = ["collector"]


async def test_a_job_process_ships_its_session_record_through_the_outbox_before_it_exits(
    tmp_path: Path, collector: StandInCollector
) -> None:
    path = tmp_path / "outbox.sqlite3"
    # A picklable factory: the job process builds its own outbox on the host's file.
    factory = functools.partial(Outbox, path, url=collector.url, api_key=API_KEY, api_secret=API_SECRET, interval=0.05)
    entry = metered(_jobs.plain, exporter=factory)

    async with running_server(entry, JobExecutorType.PROCESS) as server:
        await server.simulate_job("shipping-room", fake_job=True)
        for _ in range(600):
            stored = collector.call(lambda: dict(collector.store))
            if any(r.resource is Resource.AGENT_SESSION and r.is_final for r in stored.values()):
                break
            await asyncio.sleep(0.05)

    sessions = [r for r in stored.values() if r.resource is Resource.AGENT_SESSION]
    assert len(sessions) == 1 and sessions[0].status is not Status.CHECKPOINT
    assert sessions[0].room == "shipping-room"
    leftover = Outbox(path)
    assert leftover.health().pending == 0, "the job flushed its outbox within its shutdown window"
    leftover.close()
