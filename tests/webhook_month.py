"""A month (2026-10) of a LiveKit project as its webhooks report it, built exactly as LiveKit's server
serializes them (protojson), with the figures worked out by hand in ``EXPECTED``.

Rooms and what happens in them:

* 2026-10-05, room A: alice connects 10 s (1 minute), bob 70 s (2 minutes), alice again 10 s (a new
  connection: 1 more minute); a self-hosted agent is in the room from 10:00:00 to LiveKit's leave at
  10:02:01 (121 s, 3 minutes by webhook) and reports its own connection, 119.6 s (2 minutes), which
  wins; a Cloud-deployed agent (no connection minutes under the default policy) reports 170 s of agent
  session (3 minutes); an egress and an ingress participant bill nothing as participants.
* 2026-10-12, room B: a call to the project's local number, 61 s (2 inbound minutes); one to its
  toll-free number, 30 s (1 toll-free minute); an outbound call through a third-party trunk, 200 s
  (4 trunk minutes); carol joins at 14:00:00 and never leaves: the room finishes at 14:20:30
  (1,230 s: 21 minutes, flagged).
* 2026-10-20, room C: a room-composite video egress of 3 min 10 s (4 transcode minutes), an
  audio-only one of 45 s (1 audio transcode minute), a track egress of 61 s (2 track egress minutes),
  an egress that failed before starting (nothing); an ingress of 3 min 10 s (4 stream import minutes).
* 2026-10-25, room D: dave's join webhook is lost, his leave says he joined 30 s earlier (1 minute);
  erin's join (16:00:00.250, reported at 16:00:01) is never followed by anything: closed a day later
  at the last time seen (1 minute, flagged).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress as egress_pb
from livekit.protocol import ingress as ingress_pb
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, participant_usage_id

MONTH = "2026-10"
Kind = models.ParticipantInfo.Kind
LOCAL, TOLL_FREE = "+14155550100", "+18885550199"
# The project's LiveKit numbers, as a collector settings file gives them.
SETTINGS = {
    "phone_numbers": [
        {"project": "acme", "number": LOCAL, "since": date(2026, 9, 1)},
        {"project": "acme", "number": TOLL_FREE, "since": date(2026, 10, 10)},
    ]
}

EXPECTED = {
    "connection": Decimal(29),  # 1 + 2 + 1 (room A humans) + 2 (self-hosted agent) + 21 (carol) + 1 (dave) + 1 (erin)
    "agent_session": Decimal(3),
    "sip_inbound": Decimal(2),
    "sip_inbound_toll_free": Decimal(1),
    "sip_trunk": Decimal(4),
    "transcode": Decimal(4),
    "transcode_audio": Decimal(1),
    "track_egress": Decimal(2),
    "stream_import": Decimal(4),
}


def at(day: int, hh: int, mm: int, ss: float = 0) -> datetime:
    return datetime(2026, 10, day, hh, mm, tzinfo=timezone.utc) + timedelta(seconds=ss)


def _ns(when: datetime) -> int:
    return round(when.timestamp() * 1000) * 1_000_000


@dataclass
class Hook:
    """One webhook: when LiveKit sent it and its body."""

    sent: datetime
    body: str
    label: str


class Month:
    def __init__(self) -> None:
        self.hooks: list[Hook] = []

    def _add(self, kind: str, when: datetime, label: str, **fields: Any) -> None:
        ev = WebhookEvent(event=kind, id=f"EV_{len(self.hooks):03d}_{kind}", created_at=int(when.timestamp()), **fields)
        self.hooks.append(Hook(when, MessageToJson(ev), label))

    def participant(
        self,
        room: str,
        sid: str,
        identity: str,
        joined: datetime,
        left: datetime | None,
        *,
        kind: int = Kind.STANDARD,
        details: Iterable[int] = (),
        attributes: dict[str, str] | None = None,
        join_lost: bool = False,
        join_reported: datetime | None = None,
    ) -> None:
        info = models.ParticipantInfo(
            sid=sid,
            identity=identity,
            kind=kind,  # type: ignore[arg-type]
            kind_details=list(details),  # type: ignore[arg-type]
            joined_at=int(joined.timestamp()),
            joined_at_ms=round(joined.timestamp() * 1000),
            attributes=attributes or {},
        )
        the_room = models.Room(sid=f"RM_{room}", name=f"room-{room}")
        if not join_lost:
            self._add(
                "participant_joined", join_reported or joined, f"{identity} joins", room=the_room, participant=info
            )
        if left is not None:
            self._add("participant_left", left, f"{identity} leaves", room=the_room, participant=info)

    def room_finished(self, room: str, when: datetime) -> None:
        self._add(
            "room_finished", when, f"room {room} finishes", room=models.Room(sid=f"RM_{room}", name=f"room-{room}")
        )

    def egress(self, egress_id: str, room: str, started: datetime | None, ended: datetime, **request: Any) -> None:
        def info(status: int, end: datetime | None) -> egress_pb.EgressInfo:
            msg = egress_pb.EgressInfo(
                egress_id=egress_id,
                room_id=f"RM_{room}",
                room_name=f"room-{room}",
                status=status,  # type: ignore[arg-type]
                started_at=_ns(started) if started else 0,
                ended_at=_ns(end) if end else 0,
                **request,
            )
            return msg

        if started is not None:
            self._add("egress_started", started, f"{egress_id} starts", egress_info=info(egress_pb.EGRESS_ACTIVE, None))
        status = egress_pb.EGRESS_COMPLETE if started else egress_pb.EGRESS_FAILED
        self._add("egress_ended", ended, f"{egress_id} ends", egress_info=info(status, ended))

    def ingress(self, ingress_id: str, room: str, started: datetime, ended: datetime) -> None:
        def info(end: datetime | None) -> ingress_pb.IngressInfo:
            state = ingress_pb.IngressState(
                status=ingress_pb.IngressState.ENDPOINT_PUBLISHING
                if end is None
                else ingress_pb.IngressState.ENDPOINT_INACTIVE,
                room_id=f"RM_{room}",
                started_at=_ns(started),
                ended_at=_ns(end) if end else 0,
                resource_id=f"{ingress_id}_r1",
            )
            return ingress_pb.IngressInfo(ingress_id=ingress_id, room_name=f"room-{room}", state=state)

        self._add("ingress_started", started, f"{ingress_id} starts", ingress_info=info(None))
        self._add("ingress_ended", ended, f"{ingress_id} ends", ingress_info=info(ended))


def build_month() -> tuple[list[Hook], list[MeterRecord]]:
    """The month's webhooks in the order LiveKit sent them, and the agents' own records."""
    m = Month()
    # Room A.
    m.participant("A", "PA_alice1", "alice", at(5, 10, 0), at(5, 10, 0, 10))
    m.participant("A", "PA_bob", "bob", at(5, 10, 0), at(5, 10, 1, 10))
    m.participant("A", "PA_self", "agent-AJ_self", at(5, 10, 0), at(5, 10, 2, 1), kind=Kind.AGENT)
    m.participant(
        "A",
        "PA_cloud",
        "agent-AJ_cloud",
        at(5, 10, 0),
        at(5, 10, 3),
        kind=Kind.AGENT,
        details=[models.ParticipantInfo.CLOUD_AGENT],
    )
    m.participant("A", "PA_eg", "EG_rec", at(5, 10, 1), at(5, 10, 4), kind=Kind.EGRESS)
    m.participant("A", "PA_in", "IN_cam", at(5, 10, 1), at(5, 10, 4), kind=Kind.INGRESS)
    m.participant("A", "PA_alice2", "alice", at(5, 10, 5), at(5, 10, 5, 10))
    m.room_finished("A", at(5, 10, 10))
    # Room B: telephony, and carol who never leaves.
    inbound = {"sip.ruleID": "SDR_1", "sip.trunkID": "ST_1", "sip.callID": "SCL_1"}
    m.participant(
        "B",
        "PA_sip1",
        "caller-1",
        at(12, 11, 0),
        at(12, 11, 1, 1),
        kind=Kind.SIP,
        attributes={**inbound, "sip.trunkPhoneNumber": LOCAL},
    )
    m.participant(
        "B",
        "PA_sip2",
        "caller-2",
        at(12, 11, 10),
        at(12, 11, 10, 30),
        kind=Kind.SIP,
        attributes={**inbound, "sip.trunkPhoneNumber": TOLL_FREE},
    )
    m.participant(
        "B",
        "PA_sip3",
        "callee-3",
        at(12, 11, 20),
        at(12, 11, 23, 20),
        kind=Kind.SIP,
        attributes={"sip.trunkID": "ST_out", "sip.trunkPhoneNumber": LOCAL, "sip.phoneNumber": "+15551234567"},
    )
    m.participant("B", "PA_carol", "carol", at(12, 14, 0), None)
    m.room_finished("B", at(12, 14, 20, 30))
    # Room C: egress and ingress.
    m.egress(
        "EG_video",
        "C",
        at(20, 12, 0),
        at(20, 12, 3, 10),
        room_composite=egress_pb.RoomCompositeEgressRequest(room_name="room-C"),
    )
    m.egress(
        "EG_audio",
        "C",
        at(20, 12, 10),
        at(20, 12, 10, 45),
        room_composite=egress_pb.RoomCompositeEgressRequest(room_name="room-C", audio_only=True),
    )
    m.egress("EG_track", "C", at(20, 12, 20), at(20, 12, 21, 1), track=egress_pb.TrackEgressRequest(room_name="room-C"))
    m.egress("EG_failed", "C", None, at(20, 12, 30), web=egress_pb.WebEgressRequest(url="https://example.com"))
    m.ingress("IN_1", "C", at(20, 13, 0), at(20, 13, 3, 10))
    # Room D: a lost join, a lost leave (and no room_finished).
    m.participant("D", "PA_dave", "dave", at(25, 15, 0), at(25, 15, 0, 30), join_lost=True)
    m.participant("D", "PA_erin", "erin", at(25, 16, 0, 0.25), None, join_reported=at(25, 16, 0, 1))
    hooks = sorted(m.hooks, key=lambda h: h.sent)

    policy = get_policy()
    own_connection = policy.record(
        id=participant_usage_id("RM_A", "PA_self", Resource.CONNECTION),
        session_id="AJ_self",
        resource=Resource.CONNECTION,
        raw=119_600,
        start=at(5, 10, 0, 0.4),
        end=at(5, 10, 2),
        room="room-A",
        room_sid="RM_A",
        agent_name="support",
        meta={"end_cause": "shutdown", "session_time": True},  # a self-hosted agent's session time
    )
    cloud_session = policy.record(
        id="AJ_cloud/session/agent_session",
        session_id="AJ_cloud",
        resource=Resource.AGENT_SESSION,
        raw=170_000,
        start=at(5, 10, 0, 0.5),
        end=at(5, 10, 2, 50.5),
        room="room-A",
        room_sid="RM_A",
        agent_name="support",
        meta={"end_cause": "shutdown"},
    )
    return hooks, [own_connection, cloud_session]
