"""Agent observability: one event per transcript item, span and log record livekit-agents uploads, and the
recorded session audio in whole minutes, compared with what LiveKit Cloud receives.

Each run is a real voice AgentSession (scripted STT, LLM and TTS, fake audio in and out) in
livekit-agents' real job runner, in a process of its own (``observability_job.py``: the framework's
telemetry is process-wide). Only LiveKit Cloud's observability endpoint is faked, here on loopback:
it receives the framework's own OTLP uploads (spans, logs) and its session recording upload, and
the test decodes them to count what arrived for the job.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web
from harness.jobproc import run_job
from livekit.agents import JobContext
from livekit.protocol import metrics as proto_metrics
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.records import MeterRecord, Resource, Status

JOB = Path(__file__).with_name("observability_job.py")


@dataclass
class CloudReceived:
    """What the stand-in for LiveKit Cloud's observability endpoint received, per job id."""

    spans: Counter[str] = field(default_factory=Counter)
    logs: Counter[str] = field(default_factory=Counter)
    chat_item_logs: Counter[str] = field(default_factory=Counter)
    recordings: dict[str, tuple[proto_metrics.MetricsRecordingHeader, list[object], int]] = field(default_factory=dict)


def _attr(attributes: object, key: str) -> str:
    for kv in attributes:  # type: ignore[attr-defined]
        if kv.key == key:
            return str(kv.value.string_value)
    return ""


RUNS = {"project": "AJ_obs_project", "off": "AJ_obs_off", "traces-off": "AJ_obs_traces_off"}


@dataclass
class Runs:
    received: CloudReceived
    records: dict[str, list[MeterRecord]]
    output: dict[str, str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The three sessions of this module, run at once against one stand-in for LiveKit Cloud."""
    return asyncio.run(_run_all(tmp_path_factory.mktemp("observability")))


async def _run_all(directory: Path) -> Runs:
    got = CloudReceived()

    async def body(request: web.Request) -> bytes:
        raw = await request.read()  # aiohttp inflates a gzip Content-Encoding itself
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await body(request))
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    got.spans[_attr(span.attributes, "job_id")] += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def logs(request: web.Request) -> web.Response:
        message = ExportLogsServiceRequest.FromString(await body(request))
        for resource in message.resource_logs:
            for scope in resource.scope_logs:
                for record in scope.log_records:
                    job = _attr(record.attributes, "job_id")
                    if scope.scope.name == "chat_history" and record.body.string_value == "chat item":
                        got.chat_item_logs[job] += 1
                    else:
                        got.logs[job] += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def recordings(request: web.Request) -> web.Response:
        header, history, audio = proto_metrics.MetricsRecordingHeader(), [], 0
        async for part in await request.multipart():
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "header":  # type: ignore[union-attr]
                header.ParseFromString(data)
            elif part.name == "chat_history":  # type: ignore[union-attr]
                history = json.loads(data)["items"]
            elif part.name == "audio":  # type: ignore[union-attr]
                audio = len(data)
        got.recordings[header.job_id] = (header, history, audio)
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/observability/traces/otlp/v0", traces)
    app.router.add_post("/observability/logs/otlp/v0", logs)
    app.router.add_post("/observability/metrics/otlp/v0", metrics)
    app.router.add_post("/observability/recordings/v0", recordings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        done = await asyncio.gather(*(_session(directory, url, record, job) for record, job in RUNS.items()))
    finally:
        await runner.cleanup()
    return Runs(
        received=got,
        records={record: records for record, (records, _) in zip(RUNS, done, strict=True)},
        output={record: output for record, (_, output) in zip(RUNS, done, strict=True)},
    )


async def _session(directory: Path, url: str, record: str, job_id: str) -> tuple[list[MeterRecord], str]:
    out = directory / f"records-{record}.jsonl"
    env = {
        **os.environ,
        "LIVEKIT_OBSERVABILITY_URL": url,
        "LIVEKIT_API_KEY": "APIobs",
        "LIVEKIT_API_SECRET": "obs-secret-obs-secret-obs-secret",
        "LIVEKIT_METERING_HOSTING": "self-hosted-on-cloud",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(JOB), str(out), record, job_id, env=env, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return read_records(out), text


def one(records: list[MeterRecord], resource: Resource) -> MeterRecord:
    (found,) = [r for r in records if r.resource is resource]
    return found


def test_recording_on_bills_one_event_per_item_exported_and_the_recorded_audio_in_whole_minutes(runs: Runs) -> None:
    # no record= given: the project's setting (job.enable_recording, on) decides, as in production
    job, got, records = RUNS["project"], runs.received, runs.records["project"]
    header, history, audio_bytes = got.recordings[job]
    assert audio_bytes > 0
    events = one(records, Resource.OBSERVABILITY_EVENT)
    assert events.status is Status.OK and events.meta["uploaded"] is True
    # what LiveKit Cloud received for this job, item for item
    assert events.meta["spans"] == got.spans[job] > 0
    assert events.meta["log_records"] == got.logs[job] > 0
    assert events.meta["transcript_items"] == len(history) == got.chat_item_logs[job] > 0
    assert events.raw == got.spans[job] + got.logs[job] + len(history)
    assert events.quantity == events.raw  # one event each

    audio = one(records, Resource.RECORDED_AUDIO)
    assert audio.raw == header.duration > 0  # the duration livekit-agents uploads with the recording, in ms
    assert audio.quantity == math.ceil(header.duration / 60_000)  # whole minutes, rounded up
    assert round(audio.start.timestamp() * 1000) == header.start_time.ToMilliseconds()

    # the cost line waits for the job runner's last flush, so it shows the final count
    (line,) = [ln for ln in runs.output["project"].splitlines() if ln.startswith(f"session {job} ")]
    assert f"observability_events={events.raw} " in line and f"recorded_audio_minutes={audio.quantity} " in line


def test_record_false_bills_no_observability(runs: Runs) -> None:
    job, got, records = RUNS["off"], runs.received, runs.records["off"]
    assert not [r for r in records if r.resource in (Resource.OBSERVABILITY_EVENT, Resource.RECORDED_AUDIO)]
    assert got.spans[job] == got.logs[job] == got.chat_item_logs[job] == 0 and job not in got.recordings
    assert [r for r in records if r.resource is Resource.CONNECTION]  # the session itself was metered


def test_recording_options_turn_each_part_off(runs: Runs) -> None:
    job, got, records = RUNS["traces-off"], runs.received, runs.records["traces-off"]
    events = one(records, Resource.OBSERVABILITY_EVENT)
    assert events.meta["spans"] == got.spans[job] == 0
    assert events.meta["log_records"] == got.logs[job] > 0
    assert events.meta["transcript_items"] == got.chat_item_logs[job] > 0
    assert one(records, Resource.RECORDED_AUDIO).raw == got.recordings[job][0].duration


@pytest.mark.parametrize(("hosting", "provider"), [("self-hosted", "self-hosted"), ("cloud", "")])
async def test_without_a_cloud_endpoint_the_transcript_and_recording_are_previewed_not_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hosting: str, provider: str
) -> None:
    """Console mode or your own server: livekit-agents uploads nothing (and sets up no exporter, so
    this runs in the test's process). The transcript items and the recording are still written: $0 on
    your own server, at LiveKit Cloud's price when the hosting says Cloud (a preview)."""
    import observability_job

    from livekit_metering.pricing import PriceBook

    monkeypatch.delenv("LIVEKIT_OBSERVABILITY_URL", raising=False)
    monkeypatch.setenv("LIVEKIT_METERING_HOSTING", hosting)
    out = tmp_path / "records.jsonl"
    items: list[int] = []

    async def entry(ctx: JobContext) -> None:
        await observability_job.converse(ctx, "on")
        items.append(len(ctx.primary_session.history.items))

    await run_job(metered(entry, file=out), fake_job=True, timeout=60)
    records = read_records(out)
    events, audio = one(records, Resource.OBSERVABILITY_EVENT), one(records, Resource.RECORDED_AUDIO)
    assert events.meta["uploaded"] is False and (events.meta["spans"], events.meta["log_records"]) == (0, 0)
    assert events.raw == events.meta["transcript_items"] == items[0] > 0
    assert audio.raw > 0 and events.provider == audio.provider == provider
    cost = PriceBook.bundled().cost([events, audio], plan="ship").total
    expected = events.raw * Decimal("0.00003") + audio.quantity * Decimal("0.005") if provider == "" else Decimal(0)
    assert cost == expected
