"""What the agent sees of the room around it: SIP callers and the downstream data it receives.

Both are ``SessionUsage``s of the job's SessionMeter, so they share the session's guarantees:
exact instants from the meter's clock, checkpoints with the session's, final records with its.

- **SIP calls.** Each SIP participant (``ParticipantKind.SIP``) is one usage, from when it joined
  (the server's ``joined_at`` when the SDK gives it, else when the agent saw it join, or connected
  if the caller was there first) to when it left. Its resource comes from ``telephony.sip_resource``,
  its id from ``sip_call_id``, the id the collector derives from the same participant's webhooks.
  The agent's figure is final only when it saw the call end; a caller still there when the session
  ends leaves a checkpoint (``clipped``), which LiveKit's webhooks close. Calls the agent places
  itself (``create_sip_participant``) join the room as SIP participants too and are metered alike.
- **Downstream data.** The bytes the agent's subscriber transport received, from
  ``room.get_rtc_stats()``, sampled before each checkpoint and just before the job runner
  disconnects the room (which it does before the final record is written); a counter that goes
  back (a full reconnect makes a new transport) starts a new run added to the old. One usage per
  session, billed in 0.01 GB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .records import Resource, Status, sip_call_id
from .session import IntervalUsage, Meta, SessionMeter, SessionUsage
from .telephony import call_direction, sip_resource

if TYPE_CHECKING:
    from livekit import rtc

__all__ = ["DataTransfer", "SipCalls", "downstream_bytes"]

logger = logging.getLogger("livekit_metering")

_SIP_KIND = 3  # rtc.ParticipantKind.PARTICIPANT_KIND_SIP
_STATS_TIMEOUT = 1.0  # seconds: get_rtc_stats is one FFI round trip; never hold the agent up longer


class SipCalls(SessionUsage):
    """The SIP participants in the room, one IntervalUsage each, keyed by participant sid."""

    def __init__(self, meter: SessionMeter, room: rtc.Room, *, livekit_numbers: Iterable[str] | None = None) -> None:
        self.meter = meter
        self.room = room
        self.livekit_numbers = frozenset(livekit_numbers) if livekit_numbers else None
        self.calls: dict[str, IntervalUsage] = {}

    def start(self) -> None:
        """Begin watching: callers already in the room start now (at the agent's connect), later ones when they join."""
        self.room.on("participant_connected", self._joined)
        self.room.on("participant_disconnected", self._left)
        for participant in list(self.room.remote_participants.values()):
            self._track(participant, already_there=True)

    def _joined(self, participant: Any) -> None:
        try:
            self._track(participant, already_there=False)
        except Exception:
            logger.exception("livekit-metering: participant_connected hook failed")

    def _left(self, participant: Any) -> None:
        try:
            call = self.calls.get(str(getattr(participant, "sid", "")))
            if call is not None:
                call.end()
        except Exception:
            logger.exception("livekit-metering: participant_disconnected hook failed")

    def _track(self, participant: Any, *, already_there: bool) -> None:
        meter = self.meter
        if getattr(participant, "kind", None) != _SIP_KIND or meter.ended or meter.started_at is None:
            return
        sid = str(getattr(participant, "sid", "") or "")
        if not sid or sid in self.calls:
            return
        attributes = dict(getattr(participant, "attributes", None) or {})
        meta: Meta = {
            **meter.participant_meta(sid, str(getattr(participant, "identity", ""))),
            "direction": call_direction(attributes),
        }
        if attributes.get("sip.callID"):
            meta["sip_call_id"] = attributes["sip.callID"][:256]
        now = meter.clock.monotonic()
        joined = getattr(participant, "joined_at", None)
        if isinstance(joined, datetime):  # the server's join time, converted to the meter's clock
            start, meta["start_source"] = min(meter.monotonic_of(joined), now), "joined_at"
        elif already_there:
            start, meta["start_source"] = meter.started_at, "agent_connected"
        else:
            start, meta["start_source"] = now, "participant_connected"
        self.calls[sid] = IntervalUsage(
            meter,
            sip_resource(attributes, livekit_numbers=self.livekit_numbers),
            usage=f"sip-{sid}",
            id=sip_call_id(str(meter.context.get("room_sid", "")), sid),
            start=start,
            meta=meta,
            clipped_start=already_there and meta["start_source"] == "agent_connected",
            final_at_session_end=False,  # outliving the session, the call is closed by LiveKit's webhooks
        )

    def checkpoint(self) -> None:
        for call in list(self.calls.values()):
            call.checkpoint()

    def session_ended(self) -> None:
        self.room.off("participant_connected", self._joined)
        self.room.off("participant_disconnected", self._left)
        for call in list(self.calls.values()):
            call.session_ended()

    def finish(self) -> None:
        for call in list(self.calls.values()):
            call.finish()


def downstream_bytes(stats: Any) -> int:
    """Bytes received on the subscriber transport(s) of one ``room.get_rtc_stats()`` result."""
    total = 0
    for entry in getattr(stats, "subscriber_stats", ()):
        if entry.WhichOneof("stats") == "transport":
            total += int(entry.transport.transport.bytes_received)
    return total


class DataTransfer(SessionUsage):
    """The agent's downstream bytes over the session, from its subscriber transport's counters."""

    USAGE = "session"

    def __init__(self, meter: SessionMeter, room: rtc.Room) -> None:
        self.meter = meter
        self.room = room
        self.base = 0  # bytes of earlier transports (before a full reconnect)
        self.last = 0  # the current transport's counter at the last sample
        self.sampled_at: float | None = None
        self.samples = 0
        self.final = False

    @property
    def total(self) -> int:
        return self.base + self.last

    async def sample(self) -> None:
        """Read the room's counters (bounded); a room that is gone keeps the last figure."""
        if self.final or not self.room.isconnected():
            return
        try:
            stats = await asyncio.wait_for(self.room.get_rtc_stats(), _STATS_TIMEOUT)
        except Exception as exc:  # disconnected meanwhile, or the FFI is gone: keep the last sample
            logger.debug("livekit-metering: no RTC stats (%s)", exc)
            return
        self.observe(downstream_bytes(stats))

    def observe(self, received: int) -> None:
        if received < self.last:  # a new transport: its counter starts from zero
            self.base += self.last
        self.last = received
        self.sampled_at = self.meter.clock.monotonic()
        self.samples += 1

    def sample_before_disconnect(self) -> None:
        """Take the last sample just before the room is disconnected (the job runner does it before
        the final record is written), on the room's own instance."""
        disconnect = self.room.disconnect

        async def sampled_disconnect(*args: Any, **kwargs: Any) -> Any:
            try:
                await self.sample()
            except Exception:
                logger.exception("livekit-metering: sampling before disconnect failed")
            return await disconnect(*args, **kwargs)

        self.room.disconnect = sampled_disconnect  # type: ignore[method-assign]

    def checkpoint(self) -> None:
        if not self.final:
            self._write(Status.CHECKPOINT)

    def finish(self) -> None:
        if not self.final:
            self.final = True
            self._write(Status.OK)

    def _write(self, status: Status) -> None:
        start = self.meter.started_at
        if start is None or self.samples == 0:
            return  # nothing measured: no record rather than a made-up zero
        end = self.sampled_at if self.sampled_at is not None else start
        wall_start = self.meter.wall(start)
        self.meter.record(
            Resource.DATA_TRANSFER,
            self.total,
            usage=self.USAGE,
            start=wall_start,
            end=max(wall_start, self.meter.wall(end)),
            status=status,
            provider=self.meter.hosting.provider,
            meta={
                "hosting": self.meter.hosting.value,
                "samples": self.samples,
                **self.meter.participant_meta(self.meter.participant_sid, self.meter.participant_identity),
            },
        )
