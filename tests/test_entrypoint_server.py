"""``metered`` under the real AgentServer (unregistered, simulated jobs): process crashes and thread isolation.

These start a real worker with real job processes or threads, so they take about a second per job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import _jobs
import pytest
from harness.jobproc import until
from livekit.agents import AgentServer, JobExecutorType

from livekit_metering.entrypoint import MeteredEntrypoint, metered
from livekit_metering.export import read_records
from livekit_metering.records import MeterRecord, Resource, Status


@asynccontextmanager
async def running_server(entry: MeteredEntrypoint, executor: JobExecutorType) -> AsyncIterator[AgentServer]:
    server = AgentServer(job_executor_type=executor, num_idle_processes=0, host="127.0.0.1", port=0)
    server.rtc_session(entry, agent_name="metered-test")
    started = asyncio.Event()
    server.on("worker_started", started.set)
    run = asyncio.create_task(server.run(devmode=True, unregistered=True))
    try:
        await asyncio.wait_for(started.wait(), 60)
        yield server
    finally:
        await server.aclose()
        await asyncio.wait_for(run, 60)


def all_records(path: Path) -> list[MeterRecord]:
    return list(read_records(path, latest=False)) if path.exists() else []


async def test_sigkill_of_the_job_process_leaves_the_last_checkpoint_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    marker = _jobs.killed_marker(out)
    entry = metered(_jobs.killed_mid_session, file=out, checkpoint_interval=0.2)

    async with running_server(entry, JobExecutorType.PROCESS) as server:
        await server.simulate_job("doomed-room", fake_job=True)
        await until(marker.exists, timeout=60)

    last_seen = MeterRecord.from_json(json.loads(marker.read_text()))
    sessions = [r for r in all_records(out) if r.resource is Resource.AGENT_SESSION]
    assert [r.status for r in sessions] == [Status.CHECKPOINT] * len(sessions)  # no final record: nothing ran
    assert len(sessions) >= 3  # at connect, then every 0.2 s
    # On disk: exactly the last checkpoint the job wrote before it died, so at most one interval is lost.
    (latest,) = read_records(out)
    assert latest == last_seen
    assert latest.raw > 0 and timedelta(milliseconds=latest.raw) == latest.end - latest.start
    assert latest.room == "doomed-room" and latest.session_id.startswith("mock-job-")


async def test_thread_executor_keeps_concurrent_sessions_apart(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    rooms = ["alpha", "bravo-22", "charlie-3333"]
    _jobs.reset()

    def finals() -> list[MeterRecord]:
        return [r for r in all_records(out) if r.resource is Resource.AGENT_SESSION and r.is_final]

    async with running_server(metered(_jobs.overlapping, file=out), JobExecutorType.THREAD) as server:
        for room in rooms:
            await server.simulate_job(room, fake_job=True)
        await until(lambda: len(finals()) == len(rooms), timeout=60)

    sessions = {r.session_id: r for r in finals()}
    assert sorted(r.room for r in sessions.values()) == rooms
    tts = [r for r in read_records(out) if r.resource is Resource.TTS]
    assert len(tts) == len(rooms)
    for record in tts:
        # Each job's usage went to its own meter: same session as its room, and its own amount.
        assert sessions[record.session_id].room == record.room
        assert record.raw == len(record.room)
    assert all(r.meta["end_cause"] == "shutdown" for r in sessions.values())


async def test_closing_the_worker_ends_its_running_sessions_as_worker_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"

    def sessions() -> list[MeterRecord]:
        return [r for r in all_records(out) if r.resource is Resource.AGENT_SESSION]

    async with running_server(metered(_jobs.stays_in_the_room, file=out), JobExecutorType.THREAD) as server:
        await server.simulate_job("long-call", fake_job=True)
        await until(lambda: bool(sessions()), timeout=60)  # connected: the open checkpoint is on disk
    # leaving the block closes the worker, which asks the job to shut down

    (final,) = [r for r in sessions() if r.is_final]
    assert final.meta["end_cause"] == "worker_shutdown"
    assert final.meta["shutdown_reason"] == "parent process shutdown"
    assert final.room == "long-call"


@pytest.fixture(autouse=True)
def _quiet_worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="livekit.agents")
