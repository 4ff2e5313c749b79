"""SessionMeter: one job's agent session time, from connect to the first end event.

The session's lifecycle is a few facts: when the agent connected, when and why the session ended,
and the details seen on the way (the room's DisconnectReason, the job's shutdown reason). The
hooks in ``entrypoint.py`` report those facts; this module turns them into ``agent_session``
records: a zero-length checkpoint at connect (so a crash right after it still leaves the start on
disk), a checkpoint every ``checkpoint_interval`` seconds while the session is open, one at the
end instant, and the final record, all with the same id, each superseding the one before.

Durations come from a monotonic clock; the wall-clock stamps are derived from one anchor taken when
the meter is created, so ``end - start`` always equals the measured duration.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from .export.base import Exporter
from .meter import Meter
from .rates import RatePolicy
from .records import MeterRecord, Resource, Status

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = ["Clock", "EndCause", "SessionMeter", "SystemClock", "meter_for"]

logger = logging.getLogger("livekit_metering")

SESSION_USAGE = "session"  # the usage name of the one agent_session record of a job
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Clock(Protocol):
    """Where a SessionMeter reads time: ``monotonic()`` for durations, ``time()`` (epoch seconds) for stamps."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class EndCause(str, Enum):
    """Why the session ended: the first of these events ends it."""

    SHUTDOWN = "shutdown"  # ctx.shutdown(reason) was called
    ROOM_ENDED = "room_ended"  # disconnected with ROOM_DELETED or ROOM_CLOSED
    AGENT_DISCONNECTED = "agent_disconnected"  # disconnected for any other reason
    JOB_CRASHED = "job_crashed"  # the entrypoint raised
    WORKER_SHUTDOWN = "worker_shutdown"  # the worker closed the job ("parent process shutdown")


Attribution = Callable[[], tuple[str | None, Mapping[str, str] | None]]


class SessionMeter(Meter):
    """The meter of one job: model usage recorded through it, plus the job's agent session time.

    ``session_id`` is the LiveKit job id. Every method is safe to call in any order and more than
    once: the first ``connected`` starts the session, the first ``end`` ends it, ``finish`` writes
    the final record once. None of them raises.
    """

    def __init__(
        self,
        *,
        session_id: str,
        exporter: Exporter | None = None,
        policy: str | RatePolicy | None = None,
        checkpoint_interval: float = 15.0,
        clock: Clock | None = None,
        attribution: Attribution | None = None,
        **context: Any,
    ) -> None:
        super().__init__(session_id=session_id, exporter=exporter, policy=policy, **context)
        if not checkpoint_interval > 0:
            raise ValueError(f"checkpoint_interval must be a positive number of seconds, got {checkpoint_interval!r}")
        self.checkpoint_interval = float(checkpoint_interval)
        self.clock: Clock = clock or SystemClock()
        self._attribution = attribution
        # One anchor: wall time = anchor + monotonic offset, so stamps and durations always agree.
        self._mono0 = self.clock.monotonic()
        self._wall0_ms = round(self.clock.time() * 1000)
        self.started_at: float | None = None  # monotonic
        self.ended_at: float | None = None
        self.end_cause: EndCause | None = None
        self.disconnect_reason: str | None = None
        self.shutdown_reason: str | None = None
        self.end_detail: dict[str, str] = {}
        self.final: MeterRecord | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._session_lock = threading.Lock()

    @classmethod
    def for_job(cls, ctx: JobContext, **options: Any) -> SessionMeter:
        """A meter for the job of ``ctx``, carrying where it runs (room, room_sid, agent_name, worker_id)."""
        job = ctx.job
        return cls(
            session_id=job.id,
            room=job.room.name,
            room_sid=job.room.sid,
            agent_name=job.agent_name,
            worker_id=str(ctx.worker_id or ""),
            **options,
        )

    # -- state -------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def duration_ms(self) -> int:
        """Session time so far (or in total, once ended); 0 when the agent never connected."""
        if self.started_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else self.clock.monotonic()
        return max(0, self._ms(end) - self._ms(self.started_at))

    def wall(self, at: float) -> datetime:
        """The UTC wall time of monotonic instant ``at``, to the millisecond."""
        return _EPOCH + timedelta(milliseconds=self._ms(at))

    def _ms(self, at: float) -> int:
        return self._wall0_ms + math.floor((at - self._mono0) * 1000)

    # -- events ------------------------------------------------------------------------------------

    def connected(self, at: float | None = None) -> bool:
        """The agent's connection to the room completed. Starts the session unless it started or ended already."""
        with self._session_lock:
            if self.started_at is not None or self.ended_at is not None:
                return False
            self.started_at = self.clock.monotonic() if at is None else at
        self.checkpoint()  # the start is on disk before the agent moves on
        self._start_checkpoints()
        return True

    def end(
        self,
        cause: EndCause,
        *,
        at: float | None = None,
        disconnect_reason: str | None = None,
        shutdown_reason: str | None = None,
        **detail: str,
    ) -> bool:
        """An end event happened. The first one ends the session; later ones only add missing details
        (and the room's end names the cause of a worker shutdown it caused)."""
        with self._session_lock:
            first = self.ended_at is None
            if first:
                self.ended_at = self.clock.monotonic() if at is None else at
                self.end_cause = cause
                self.end_detail.update(detail)
            elif cause is EndCause.ROOM_ENDED and self.end_cause is EndCause.WORKER_SHUTDOWN and self.final is None:
                # A LiveKit server ends the job of a room it deletes or closes through the worker, a few
                # milliseconds before the room's own disconnect arrives: the room ended it, at the first instant.
                self.end_cause = cause
        self.note(disconnect_reason=disconnect_reason, shutdown_reason=shutdown_reason)
        if first:
            self._stop_checkpoints()
            if self.started_at is not None:
                self.checkpoint()  # the exact end survives a crash before the final record is written
        return first

    def note(self, *, disconnect_reason: str | None = None, shutdown_reason: str | None = None) -> None:
        """Keep the first DisconnectReason and shutdown reason seen, whatever ended the session."""
        if disconnect_reason and self.disconnect_reason is None:
            self.disconnect_reason = disconnect_reason
        if shutdown_reason and self.shutdown_reason is None:
            self.shutdown_reason = shutdown_reason

    # -- records -----------------------------------------------------------------------------------

    def checkpoint(self) -> MeterRecord | None:
        """Write the running figure of the open session (or its exact figure once ended)."""
        if self.started_at is None or self.final is not None:
            return None
        return self._write(Status.CHECKPOINT)

    def finish(self) -> MeterRecord | None:
        """Write the final record (once). Ends the session now if no end event was seen.

        Returns None when the agent never connected: such a job has no billable session time.
        """
        self._stop_checkpoints()
        if self.final is not None:
            return self.final
        if self.ended_at is None:
            self.end(EndCause.SHUTDOWN, end_source="finish")
        if self.started_at is None:
            return None
        self.final = self._write(Status.OK)
        return self.final

    def _write(self, status: Status) -> MeterRecord | None:
        try:
            self._attribute()
            assert self.started_at is not None
            start = self.wall(self.started_at)
            end_at = self.ended_at if self.ended_at is not None else self.clock.monotonic()
            end = max(start, self.wall(end_at))
            raw = int((end - start) / timedelta(milliseconds=1))
            return self.record(
                Resource.AGENT_SESSION,
                raw,
                usage=SESSION_USAGE,
                start=start,
                end=end,
                status=status,
                meta=self._meta(),
            )
        except Exception:
            logger.exception("livekit-metering could not write the session record of %s", self.session_id)
            return None

    def _meta(self) -> dict[str, str | int | bool]:
        meta: dict[str, str | int | bool] = {"job_id": self.session_id}
        worker = self.context.get("worker_id")
        if worker:
            meta["worker_id"] = str(worker)
        if self.end_cause is not None:
            meta["end_cause"] = self.end_cause.value
        if self.disconnect_reason:
            meta["disconnect_reason"] = self.disconnect_reason
        if self.shutdown_reason:
            meta["shutdown_reason"] = self.shutdown_reason[:256]
        for key, value in self.end_detail.items():
            meta[key] = value[:256]
        return meta

    def _attribute(self) -> None:
        """Ask the user's attribution (customer, attributes) again until it gives a customer."""
        if self._attribution is None:
            return
        try:
            customer, attributes = self._attribution()
        except Exception:
            logger.exception("livekit-metering: the customer/attributes option failed for %s", self.session_id)
            return
        if customer:
            self.context["customer"] = str(customer)[:256]
        if attributes:
            self.context["attributes"] = {str(k)[:256]: str(v)[:256] for k, v in attributes.items()}

    # -- periodic checkpoints ------------------------------------------------------------------------

    def _start_checkpoints(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a job's event loop (a plain script or a test): no periodic checkpoints
        self._checkpoint_task = loop.create_task(self._checkpoint_loop(), name="livekit_metering_checkpoints")

    def _stop_checkpoints(self) -> None:
        task, self._checkpoint_task = self._checkpoint_task, None
        if task is not None and not task.done():
            try:
                task.cancel()
            except RuntimeError:  # its loop is closed already
                pass

    async def _checkpoint_loop(self) -> None:
        # Bounded by the session: it stops at the end event, or when the job's loop is torn down.
        while self.ended_at is None:
            await asyncio.sleep(self.checkpoint_interval)
            if self.ended_at is None:
                self.checkpoint()


# -- finding the meter of a job ---------------------------------------------------------------------

_by_job: weakref.WeakKeyDictionary[Any, SessionMeter] = weakref.WeakKeyDictionary()
_by_job_lock = threading.Lock()


def register(ctx: JobContext, meter: SessionMeter) -> None:
    with _by_job_lock:
        _by_job[ctx] = meter


def meter_for(ctx: JobContext) -> SessionMeter | None:
    """The SessionMeter that ``metered`` installed for this job, or None when the job is not metered."""
    with _by_job_lock:
        return _by_job.get(ctx)
