"""Job entrypoints for the worker tests. Module-level, so the PROCESS executor can pickle them by reference."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

from livekit.agents import JobContext

from livekit_metering.entrypoint import metered
from livekit_metering.export.file import FileExporter
from livekit_metering.meter import current_meter
from livekit_metering.records import MeterRecord, Resource, Status
from livekit_metering.session import meter_for

CONCURRENT_JOBS = 3
_together = threading.Barrier(CONCURRENT_JOBS)


async def plain(ctx: JobContext) -> None:
    """Connects, then ends the session."""
    await ctx.connect()
    ctx.shutdown("done")


@metered
async def decorated(ctx: JobContext) -> None:
    await plain(ctx)


@metered(checkpoint_interval=0.5, plan="scale")
async def decorated_with_options(ctx: JobContext) -> None:
    await plain(ctx)


def killed_marker(records: Path) -> Path:
    return records.with_name(records.name + ".killed")


async def killed_mid_session(ctx: JobContext) -> None:
    """Connects, waits for two periodic checkpoints, notes the last one, then SIGKILLs its own process."""
    await ctx.connect()
    meter = meter_for(ctx)
    assert meter is not None
    seen: list[MeterRecord] = []

    def on_record(record: MeterRecord) -> None:
        if record.resource is Resource.AGENT_SESSION and record.status is Status.CHECKPOINT:
            seen.append(record)

    meter.on_record(on_record)
    for _ in range(1000):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.01)
    exporter = getattr(meter.exporter, "primary", meter.exporter)  # behind its fallback to the default file
    assert isinstance(exporter, FileExporter)
    # No await between reading the last checkpoint and the kill: nothing else can be written.
    killed_marker(exporter.path).write_text(json.dumps(seen[-1].to_json()))
    os.kill(os.getpid(), signal.SIGKILL)


async def overlapping(ctx: JobContext) -> None:
    """Several of these run at once in one process (THREAD executor); each records usage into its own meter."""
    await ctx.connect()
    meter = current_meter()
    assert meter is meter_for(ctx) and meter.session_id == ctx.job.id
    await asyncio.to_thread(_together.wait, 30)  # all jobs are inside their sessions at the same time
    room = ctx.job.room.name
    meter.record(Resource.TTS, len(room), usage=meter.next_usage("tts"), start=_now(), end=_now())
    await asyncio.sleep(0.1)
    ctx.shutdown("done")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def reset() -> None:
    _together.reset()


async def stays_in_the_room(ctx: JobContext) -> None:
    """Connects and returns, like most agents: the session goes on until something ends it."""
    await ctx.connect()
