"""Meter: turns one measured usage into a rounded MeterRecord and hands it to an exporter.

Measurement code (hooks, adapters) calls ``current_meter().record(...)`` and knows nothing of
rounding or shipping. Inside a job, ``metered`` installs the job's meter in a context variable;
outside any job (a plain script) the records go to a process-wide default meter.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from .export.base import Exporter
from .rates import RatePolicy, get_policy
from .records import MeterRecord, Resource, Status, record_id

__all__ = ["Meter", "current_meter", "use_meter"]

logger = logging.getLogger("livekit_metering")

Listener = Callable[[MeterRecord], None]


class Meter:
    """Records the usages of one session (or of a plain script) under one rate policy.

    ``context`` holds the record fields that are the same for every usage of the session
    (room, room_sid, agent_name, worker_id, customer, attributes). ``record`` never raises:
    metering must not break the agent, so failures are logged and counted instead.
    """

    def __init__(
        self,
        *,
        session_id: str | None = None,
        exporter: Exporter | None = None,
        policy: str | RatePolicy | None = None,
        keep_records: bool = True,
        **context: Any,
    ) -> None:
        self.session_id = session_id or f"local-{uuid.uuid4().hex[:12]}"
        self.policy = get_policy(policy)
        self.context: dict[str, Any] = context
        self.failures = 0
        self._exporter = exporter
        self._keep = keep_records
        self._records: dict[str, MeterRecord] = {}
        self._counters: dict[str, Iterator[int]] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    @property
    def exporter(self) -> Exporter:
        if self._exporter is None:
            from .export.config import default_exporter
            from .export.fallback import file_instead, with_fallback

            try:
                self._exporter = with_fallback(default_exporter())
            except Exception as exc:  # a bad LIVEKIT_METERING_URL: keep the records in the file
                self._exporter = file_instead(exc)
        return self._exporter

    @property
    def records(self) -> list[MeterRecord]:
        """The latest form of each usage recorded so far (checkpoints replaced by later figures)."""
        return list(self._records.values())

    def next_usage(self, kind: str) -> str:
        """A new usage name, unique within this meter and deterministic in order: ``llm-1``, ``llm-2``..."""
        with self._lock:
            counter = self._counters.setdefault(kind, itertools.count(1))
            return f"{kind}-{next(counter)}"

    def on_record(self, listener: Listener) -> None:
        """Call ``listener`` with every record after it is exported (for live cost previews)."""
        self._listeners.append(listener)

    def record(
        self,
        resource: Resource,
        raw: int,
        *,
        usage: str,
        start: datetime,
        end: datetime,
        status: Status = Status.OK,
        id: str | None = None,
        **fields: Any,
    ) -> MeterRecord | None:
        """Round, build and export the record of one usage; return it, or None if metering failed.

        The record's id is ``record_id(session_id, usage, resource)`` unless ``id`` gives the id both
        the agent and the collector derive for it (``participant_usage_id``).
        """
        try:
            record = self.policy.record(
                id=id or record_id(self.session_id, usage, resource),
                session_id=self.session_id,
                resource=resource,
                raw=raw,
                start=start,
                end=end,
                status=status,
                **{**self.context, **fields},
            )
            self.exporter.export([record])
        except Exception:
            self.failures += 1
            logger.exception("livekit-metering could not record %s usage %r", resource, usage)
            return None
        if self._keep:
            self._records[record.id] = record
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("livekit-metering record listener failed")
        return record


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("livekit_metering_meter", default=None)
_default: Meter | None = None
_default_lock = threading.Lock()


def current_meter() -> Meter:
    """The meter of the running job, else the process-wide default meter.

    ``metered`` sets the job's meter for the entrypoint and every task it starts; code the job
    runner calls outside that context (``on_session_end``, shutdown callbacks) finds it through
    the job context instead.
    """
    meter = _current.get() or _job_meter()
    if meter is not None:
        return meter
    global _default
    with _default_lock:
        if _default is None:
            _default = Meter(keep_records=False)
        return _default


def _job_meter() -> Meter | None:
    from livekit.agents import get_job_context

    from .session import meter_for

    ctx = get_job_context(required=False)
    return meter_for(ctx) if ctx is not None else None


@contextmanager
def use_meter(meter: Meter) -> Iterator[Meter]:
    """Make ``meter`` the current meter for the code (and the tasks it starts) inside the block."""
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)
