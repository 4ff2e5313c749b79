"""SessionMeter: one job's agent session time, from connect to the first end event.

The session's lifecycle is a few facts: when the agent connected, when and why the session ended,
and the details seen on the way (the room's DisconnectReason, the job's shutdown reason). The
hooks in ``entrypoint.py`` report those facts; this module turns them into the records of the
agent's own time in the room: ``agent_session`` when the agent is deployed to LiveKit Cloud, its
own WebRTC ``connection`` otherwise (see ``hosting.py``). A zero-length checkpoint at connect (so
a crash right after it still leaves the start on disk), a checkpoint every ``checkpoint_interval``
seconds while the session is open, one at the end instant, and the final record, all with the
same id, each superseding the one before.

Other usages that live within the session (a SIP call, the downstream data, an audio stream
through enhanced noise cancellation) are ``SessionUsage``s added to the meter: they are sampled
and checkpointed with the session, told when it ends, and finished with it.

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
from .hosting import Hosting
from .meter import Meter
from .rates import RatePolicy
from .records import MeterRecord, Resource, Status, participant_usage_id

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = ["Clock", "EndCause", "IntervalUsage", "SessionMeter", "SessionUsage", "SystemClock", "meter_for"]

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
    BUDGET = "budget"  # ctx.shutdown() after a budget's limit was reached (budgets.py)


Attribution = Callable[[], tuple[str | None, Mapping[str, str] | None]]
Meta = dict[str, str | int | bool]


class SessionUsage:
    """A usage that lives within the session. Each step is called by the SessionMeter, guarded, never raising into it.

    ``sample`` refreshes what it measures (it may await the room) before each periodic checkpoint;
    ``checkpoint`` writes its running figure; ``session_ended`` is called once, at the session's end
    instant; ``finish`` writes its final figure when the session's final record is written.
    """

    async def sample(self) -> None:
        return None

    def checkpoint(self) -> None:
        return None

    def session_ended(self) -> None:
        return None

    def finish(self) -> None:
        return None


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
        hosting: Hosting = Hosting.CLOUD,
        hosting_source: str = "",
        **context: Any,
    ) -> None:
        super().__init__(session_id=session_id, exporter=exporter, policy=policy, **context)
        self.hosting = hosting
        self.hosting_source = hosting_source  # how the hosting was decided: option, env, deployment or url
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
        self.participant_sid = ""  # the agent's own participant, once connected
        self.participant_identity = ""
        self.usages: list[SessionUsage] = []
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

    def monotonic_of(self, wall: datetime) -> float:
        """The instant of UTC wall time ``wall`` on this meter's monotonic clock (for times the server reports)."""
        ms = (wall - _EPOCH) // timedelta(milliseconds=1)
        return self._mono0 + (ms - self._wall0_ms) / 1000

    # -- events ------------------------------------------------------------------------------------

    def connected(self, at: float | None = None, *, participant_sid: str = "", participant_identity: str = "") -> bool:
        """The agent's connection to the room completed. Starts the session unless it started or ended already."""
        with self._session_lock:
            if self.started_at is not None or self.ended_at is not None:
                return False
            self.started_at = self.clock.monotonic() if at is None else at
            self.participant_sid = participant_sid
            self.participant_identity = participant_identity
        self.checkpoint()  # the start is on disk before the agent moves on
        self._start_checkpoints()
        return True

    def add_usage(self, usage: SessionUsage) -> None:
        """Run ``usage`` alongside the session (sampled, checkpointed, ended and finished with it)."""
        self.usages.append(usage)
        if self.ended_at is not None:
            self._each("session_ended", usage)

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
            for usage in list(self.usages):
                self._each("session_ended", usage)
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
        self._cloud_agent_connection()
        for usage in list(self.usages):
            self._each("finish", usage)
        return self.final

    def _cloud_agent_connection(self) -> None:
        """A Cloud-deployed agent's own participant, under the id LiveKit's webhooks give the collector:
        its WebRTC minutes are covered by agent session minutes (0, ``meta.covered_by``), unless the
        rate policy says LiveKit bills them too. Written so a webhook-derived figure never bills them."""
        if self.hosting is not Hosting.CLOUD or not self.participant_sid or self.started_at is None:
            return
        end = self.ended_at if self.ended_at is not None else self.clock.monotonic()
        room_sid = str(self.context.get("room_sid", ""))
        usage_id = participant_usage_id(room_sid, self.participant_sid, Resource.CONNECTION)
        meta: Meta = {
            "job_id": self.session_id,
            **self.participant_meta(self.participant_sid, self.participant_identity),
        }
        if self.policy.cloud_agent_connection:
            self.interval(
                Resource.CONNECTION, self.started_at, end, Status.OK, usage="connection", id=usage_id, meta=meta
            )
            return
        start = self.wall(self.started_at)
        self.record(  # never raises
            Resource.CONNECTION,
            0,
            usage="connection",
            id=usage_id,
            start=start,
            end=max(start, self.wall(end)),
            meta={**meta, "hosting": self.hosting.value, "covered_by": Resource.AGENT_SESSION.value},
        )

    def interval(
        self,
        resource: Resource,
        start: float,
        end: float,
        status: Status,
        *,
        usage: str,
        meta: Meta,
        id: str | None = None,
    ) -> MeterRecord | None:
        """Write one time usage from monotonic ``start`` to ``end``, with the session's hosting; never raises."""
        try:
            self._attribute()
            wall_start = self.wall(start)
            wall_end = max(wall_start, self.wall(end))
            raw = int((wall_end - wall_start) / timedelta(milliseconds=1))
            return self.record(
                resource,
                raw,
                usage=usage,
                id=id,
                start=wall_start,
                end=wall_end,
                status=status,
                provider=self.hosting.provider,
                meta={**meta, "hosting": self.hosting.value},
            )
        except Exception:
            logger.exception(
                "livekit-metering could not write the %s record %r of %s", resource, usage, self.session_id
            )
            return None

    def participant_meta(self, sid: str, identity: str) -> Meta:
        return {"participant_sid": sid, "participant_identity": identity[:256]} if sid else {}

    def _write(self, status: Status) -> MeterRecord | None:
        assert self.started_at is not None
        resource = self.hosting.session_resource
        end_at = self.ended_at if self.ended_at is not None else self.clock.monotonic()
        # Off LiveKit Cloud deployments the agent is a WebRTC participant like any other: its minutes
        # carry the id the collector derives from the participant's webhooks.
        shared = resource is Resource.CONNECTION and self.participant_sid
        usage_id = (
            participant_usage_id(self.context.get("room_sid", ""), self.participant_sid, resource) if shared else None
        )
        return self.interval(
            resource, self.started_at, end_at, status, usage=SESSION_USAGE, id=usage_id, meta=self._meta()
        )

    def _meta(self) -> Meta:
        meta: Meta = {"job_id": self.session_id, "session_time": True}
        meta.update(self.participant_meta(self.participant_sid, self.participant_identity))
        if self.hosting_source:
            meta["hosting_source"] = self.hosting_source
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
            for usage in list(self.usages):
                try:
                    await usage.sample()
                except Exception:
                    logger.exception("livekit-metering: sampling %s failed", type(usage).__name__)
            if self.ended_at is None:
                self.checkpoint()
                for usage in list(self.usages):
                    self._each("checkpoint", usage)

    def _each(self, step: str, usage: SessionUsage) -> None:
        try:
            getattr(usage, step)()
        except Exception:
            logger.exception("livekit-metering: %s of %s failed", step, type(usage).__name__)


class IntervalUsage(SessionUsage):
    """A time usage within the session, from ``start`` to its own end or the session's (a SIP call, an audio stream).

    Its start is on disk as a checkpoint at once; it is checkpointed with the session; its final
    record is written when it ends, or with the session's. ``meta["clipped"]`` says which ends the
    agent did not see itself: ``start`` when it began before the agent connected, ``end`` when it
    outlived the session. A usage someone else also reports (a SIP call: LiveKit's webhooks) is
    ``final_at_session_end=False``: outliving the session, its figure stays a checkpoint, for the
    collector to close at the end LiveKit reports.
    """

    def __init__(
        self,
        meter: SessionMeter,
        resource: Resource,
        *,
        usage: str,
        start: float,
        meta: Meta | None = None,
        id: str | None = None,
        clipped_start: bool = False,
        final_at_session_end: bool = True,
    ) -> None:
        self.meter = meter
        self.resource = resource
        self.usage = usage
        self.id = id
        self.start = start
        self.meta: Meta = dict(meta or {})
        self.clipped_start = clipped_start
        self.clipped_end = False
        self.final_at_session_end = final_at_session_end
        self.ended_at: float | None = None
        self.final: MeterRecord | None = None
        self._lock = threading.Lock()
        self.checkpoint()

    def end(self, at: float | None = None) -> MeterRecord | None:
        """It ended (the participant left, the stream closed): write its final record now."""
        with self._lock:
            if self.ended_at is None:
                self.ended_at = self.meter.clock.monotonic() if at is None else at
        return self.finish_record()

    def checkpoint(self) -> None:
        if self.final is None:
            self._write(Status.CHECKPOINT)

    def session_ended(self) -> None:
        if self._ends_with_session():
            self.checkpoint()  # the exact end, on disk before the final record (or as the last figure)

    def finish(self) -> None:
        self._ends_with_session()
        if self.final_at_session_end or not self.clipped_end:
            self.finish_record()

    def _ends_with_session(self) -> bool:
        """Still open when the session ended: it ends there, clipped. True when this call ended it."""
        session_end = self.meter.ended_at
        with self._lock:
            if self.ended_at is not None or session_end is None:
                return False
            self.ended_at, self.clipped_end = max(self.start, session_end), True
            return True

    def finish_record(self) -> MeterRecord | None:
        with self._lock:
            if self.final is not None or self.ended_at is None:
                return self.final
            self.final = self._write(Status.OK)
            return self.final

    def _write(self, status: Status) -> MeterRecord | None:
        end = self.ended_at if self.ended_at is not None else self.meter.clock.monotonic()
        meta = dict(self.meta)
        clipped = {(True, True): "both", (True, False): "start", (False, True): "end"}.get(
            (self.clipped_start, self.clipped_end)
        )
        if clipped:
            meta["clipped"] = clipped
        return self.meter.interval(
            self.resource, self.start, max(self.start, end), status, usage=self.usage, id=self.id, meta=meta
        )


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
