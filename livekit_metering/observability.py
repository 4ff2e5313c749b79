"""Agent observability: the events and recorded audio livekit-agents uploads to LiveKit Cloud for a session.

LiveKit bills agent observability in two ways: events (each transcript item, observation (trace
span) and log record) and minutes of recorded session audio. Both are uploaded by livekit-agents
itself when the job has a LiveKit Cloud observability endpoint and recording is on: the ``record``
given to ``AgentSession.start``, else the project's setting that arrives as ``job.enable_recording``,
each part (audio, traces, logs, transcript) on or off by ``RecordingOptions``.

What is counted is what the framework hands over, not an estimate:

- spans and log records: what livekit-agents' own OTLP exporters (behind its per-job upload gate)
  are handed for this job, counted by the job id stamped on each; the exporters are observed on
  their instances, once per process, and a job's count is final once the job runner's cleanup has
  flushed them. The transcript's "chat item" log records are the transcript items again: they
  count once, as transcript items;
- transcript items and recorded audio: the session report the framework builds at the session's
  end (``JobContext.make_session_report``, observed on the job's instance): its chat history
  items, and its recording duration (the ``duration`` it uploads with the audio).

One ``observability_event`` record (``meta``: ``transcript_items``, ``spans``, ``log_records``)
and one ``recorded_audio`` record per session. ``meta["uploaded"]`` says whether livekit-agents
uploads them: in dev, without a LiveKit Cloud endpoint, the records still preview what the
session would cost on LiveKit Cloud, but spans and logs cannot be counted (no exporter runs).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .hosting import is_cloud_url
from .records import Resource, Status
from .session import SessionMeter, SessionUsage

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = ["ExportCounts", "Observability", "exported", "observability_url"]

logger = logging.getLogger("livekit_metering")

USAGE = "session"
_TRANSCRIPT_LOGGER = "chat_history"
_TRANSCRIPT_BODY = "chat item"


class ExportCounts:
    """What livekit-agents' exporters were handed for one job."""

    def __init__(self) -> None:
        self.spans = 0
        self.log_records = 0


class _Exported:
    """Counts, per job id, what the framework's cloud exporters are handed (one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, ExportCounts] = {}
        self._observed: set[int] = set()

    def watch(self, job_id: str) -> ExportCounts:
        with self._lock:
            return self._jobs.setdefault(job_id, ExportCounts())

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def observe_exporters(self) -> bool:
        """Observe the framework's span and log exporters, if they exist yet; True once both are observed."""
        try:
            from livekit.agents.telemetry import traces
        except Exception:  # pragma: no cover - livekit-agents without telemetry
            return False
        cloud = getattr(traces, "_cloud", None)
        span_gate = getattr(cloud, "_span_gate", None)
        log_processor = getattr(cloud, "_log_batch_processor", None)
        log_gate = getattr(getattr(log_processor, "_batch_processor", None), "_exporter", None)
        spans = self._observe(getattr(span_gate, "_inner", None), self._count_spans)
        logs = self._observe(getattr(log_gate, "_inner", None), self._count_logs)
        return spans and logs

    def _observe(self, exporter: Any, count: Any) -> bool:
        if exporter is None:
            return False
        with self._lock:
            if id(exporter) in self._observed:
                return True
            self._observed.add(id(exporter))
        export = exporter.export

        def counted_export(batch: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
            try:
                count(batch)
            except Exception:
                logger.exception("livekit-metering: counting exported telemetry failed")
            return export(batch, *args, **kwargs)

        exporter.export = counted_export
        return True

    def _count_spans(self, batch: Sequence[Any]) -> None:
        with self._lock:
            for span in batch:
                counts = self._jobs.get(_job_of(getattr(span, "attributes", None)))
                if counts is not None:
                    counts.spans += 1

    def _count_logs(self, batch: Sequence[Any]) -> None:
        with self._lock:
            for item in batch:
                record = getattr(item, "log_record", item)
                counts = self._jobs.get(_job_of(getattr(record, "attributes", None)))
                if counts is None:
                    continue
                scope = getattr(getattr(item, "instrumentation_scope", None), "name", "")
                # the transcript's chat-item records count once, as transcript items (see the module doc)
                if scope != _TRANSCRIPT_LOGGER or getattr(record, "body", None) != _TRANSCRIPT_BODY:
                    counts.log_records += 1


def _job_of(attributes: Mapping[str, Any] | None) -> str:
    value = (attributes or {}).get("job_id")
    return value if isinstance(value, str) else ""


exported = _Exported()


def observability_url(livekit_url: str) -> str | None:
    """Where livekit-agents uploads observability for a job on ``livekit_url`` (its own rule), or None."""
    explicit = os.environ.get("LIVEKIT_OBSERVABILITY_URL")
    if explicit:
        return explicit
    return livekit_url if is_cloud_url(livekit_url) else None


class Observability(SessionUsage):
    """The observability of one job: watches its exporters' counts and its session report."""

    def __init__(self, meter: SessionMeter, ctx: JobContext, *, livekit_url: str) -> None:
        self.meter = meter
        self.ctx = ctx
        self.endpoint = observability_url(livekit_url)
        self.counts = exported.watch(meter.session_id)
        self.report: Any = None
        self.final = False

    def install(self, on_session_start: Callable[[], None] | None = None) -> None:
        """Observe the job's session report, and the exporters once recording sets them up (both per instance).

        ``on_session_start`` is called when an AgentSession starts (it initializes the job's recording first).
        """
        ctx = self.ctx
        make_report = ctx.make_session_report
        init_recording = ctx.init_recording

        def make_session_report(*args: Any, **kwargs: Any) -> Any:
            report = make_report(*args, **kwargs)
            self.report = report
            return report

        def observed_init_recording(*args: Any, **kwargs: Any) -> Any:
            try:
                return init_recording(*args, **kwargs)
            finally:
                exported.observe_exporters()
                if on_session_start is not None:
                    on_session_start()

        ctx.make_session_report = make_session_report  # type: ignore[method-assign]
        ctx.init_recording = observed_init_recording  # type: ignore[method-assign]
        exported.observe_exporters()

    @property
    def counting(self) -> bool:
        """Whether exporters run for this job, so the final count waits for the runner's last flush."""
        return bool(self.endpoint) and getattr(self.ctx, "_telemetry_state", None) is not None

    # -- what the session uploads -----------------------------------------------------------------------

    def _options(self) -> Mapping[str, Any]:
        options = getattr(getattr(self.report, "options", None), "recording_options", None)
        return options if isinstance(options, Mapping) else {}

    def _recording_on(self) -> bool:
        return any(self._options().get(k) for k in ("audio", "traces", "logs", "transcript"))

    def _refused(self) -> bool:
        """LiveKit Cloud answered that the project turned data recording off: nothing is uploaded."""
        try:
            from livekit.agents.telemetry.traces import _upload_gate

            return bool(self.endpoint) and bool(_upload_gate.disabled)
        except Exception:
            return False

    def transcript_items(self) -> int:
        if not self._options().get("transcript"):
            return 0
        history = getattr(self.report, "chat_history", None)
        return len(getattr(history, "items", ()) or ())

    def recording(self) -> tuple[datetime, int] | None:
        """Start and length (ms) of the session's audio recording, as livekit-agents uploads it."""
        report = self.report
        started = getattr(report, "audio_recording_started_at", None)
        duration = getattr(report, "duration", None)
        if not (self._options().get("audio") and getattr(report, "audio_recording_path", None) and started):
            return None
        start = datetime.fromtimestamp(float(started), tz=timezone.utc)
        return start, max(0, int(float(duration or 0) * 1000))  # as livekit-agents writes it in the upload

    # -- records --------------------------------------------------------------------------------------

    def finish(self) -> None:
        """At the session's final record: final now unless the exporters still have to flush (``after_cleanup``)."""
        if self.counting:
            self._write(Status.CHECKPOINT)
        else:
            self.after_cleanup()

    def after_cleanup(self) -> None:
        if self.final:
            return
        self.final = True
        try:
            self._write(Status.OK)
        finally:
            exported.forget(self.meter.session_id)

    def _write(self, status: Status) -> None:
        meter = self.meter
        if meter.started_at is None or self.report is None or not self._recording_on() or self._refused():
            return  # never connected, no session report, recording off, or refused: nothing to meter
        base: dict[str, Any] = {"hosting": meter.hosting.value, "uploaded": bool(self.endpoint)}
        items, spans, logs = self.transcript_items(), self.counts.spans, self.counts.log_records
        events = items + spans + logs
        start = meter.wall(meter.started_at)
        end = meter.wall(meter.ended_at if meter.ended_at is not None else meter.clock.monotonic())
        if events:
            meter.record(
                Resource.OBSERVABILITY_EVENT,
                events,
                usage=USAGE,
                start=start,
                end=max(start, end),
                status=status,
                provider=meter.hosting.provider,
                meta={**base, "transcript_items": items, "spans": spans, "log_records": logs},
            )
        recording = self.recording()
        if recording is not None and recording[1] > 0:
            rec_start, length = recording
            meter.record(
                Resource.RECORDED_AUDIO,
                length,
                usage=USAGE,
                start=rec_start,
                end=rec_start + timedelta(milliseconds=length),
                status=status,
                provider=meter.hosting.provider,
                meta=base,
            )
