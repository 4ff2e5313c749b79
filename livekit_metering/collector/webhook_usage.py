"""Usage the whole LiveKit project is billed for, from its webhooks: participants, SIP calls, egress,
ingress. Pure functions from a verified ``WebhookEvent`` to the records it opens or closes.

One usage, one record id, whichever webhook (or the agent) reports it:

* a participant's connection: ``participant_usage_id(room sid, participant sid, connection)``; a SIP
  participant's call: ``sip_call_id(room sid, participant sid)``. ``participant_joined`` writes a
  checkpoint from ``joined_at``; ``participant_left`` / ``participant_connection_aborted`` the final
  record from ``joined_at`` to the time LiveKit reports. Humans and self-hosted agents bill
  ``connection`` minutes; a Cloud-deployed agent (``kind_details`` has ``CLOUD_AGENT``) only when the
  policy says so (``cloud_agent_connection`` in policies.toml); SIP participants bill their call
  (``telephony.sip_resource``), never ``connection``; ingress, egress, connector and bridge
  participants bill nothing here (ingress and egress are metered from their own webhooks; LiveKit
  publishes no rule for connectors and bridges).
* an egress, from ``started_at`` to ``ended_at``: ``track_egress`` minutes for track egress, else
  ``transcode`` minutes, or ``transcode_audio`` when the request is audio only.
* an ingress session, from ``started_at`` to ``ended_at``: ``stream_import`` minutes.

Each record is rounded by the collector's policy and marked ``by_webhook``, so the agent's own
figure for the same id wins (see ``store.base.fold``).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from livekit.protocol import models

from ..rates import RatePolicy
from ..records import Resource, Status, participant_usage_id, record_id, sip_call_id
from ..telephony import sip_resource
from .store.base import Stored, from_ms

__all__ = ["PARTICIPANT_RESOURCES", "UsageRules", "usage_of"]

_Kind = models.ParticipantInfo.Kind
PARTICIPANT_RESOURCES = (
    Resource.CONNECTION,
    Resource.SIP_INBOUND,
    Resource.SIP_INBOUND_TOLL_FREE,
    Resource.SIP_TRUNK,
)
_OPENING = ("participant_joined", "egress_started", "egress_updated", "ingress_started")
_EARLIEST_MS = 946_684_800_000  # 2000-01-01: an earlier time in a webhook is a missing one
_SKEW_MS = 5 * 60_000


@dataclass(frozen=True)
class UsageRules:
    """How one project's webhooks become usage: the policy that rounds it, the project's LiveKit phone
    numbers (they decide a SIP call's class), the participant attribute naming the customer, and the
    provider of the usage (``self-hosted`` when the project's own LiveKit server sends the webhooks:
    metered, not billed by LiveKit)."""

    policy: RatePolicy
    livekit_numbers: Collection[str] = ()
    customer_key: str = ""
    provider: str = ""


def usage_of(event: Any, rules: UsageRules) -> list[Stored]:
    """The records one webhook opens (checkpoints) or closes (final records)."""
    kind = event.event
    reported_ms = int(event.created_at) * 1000
    if kind in ("participant_joined", "participant_left", "participant_connection_aborted"):
        return _participant(event, rules, reported_ms)
    if kind.startswith("egress_") and event.egress_info.egress_id:
        return _egress(event, rules, reported_ms)
    if kind.startswith("ingress_") and event.ingress_info.ingress_id:
        return _ingress(event, rules, reported_ms)
    return []


def _participant(event: Any, rules: UsageRules, reported_ms: int) -> list[Stored]:
    p, room = event.participant, event.room
    if not p.sid:
        return []
    if p.kind == _Kind.SIP:
        rid, resource = sip_call_id(room.sid, p.sid), sip_resource(p.attributes, rules.livekit_numbers)
    elif p.kind == _Kind.STANDARD or (
        p.kind == _Kind.AGENT
        and (models.ParticipantInfo.CLOUD_AGENT not in p.kind_details or rules.policy.cloud_agent_connection)
    ):
        rid, resource = participant_usage_id(room.sid, p.sid, Resource.CONNECTION), Resource.CONNECTION
    else:
        return []
    joined_ms = p.joined_at_ms or p.joined_at * 1000
    meta: dict[str, str | int | bool] = {"source": "webhook", "participant": p.identity[:256], "kind": _kind_name(p)}
    if joined_ms < _EARLIEST_MS:
        joined_ms = reported_ms
        meta["flag"] = "no-join-time"
    opening = event.event in _OPENING
    meta["opened_by" if opening else "closed_by"] = f"webhook:{event.event}"
    is_agent = p.kind == _Kind.AGENT and p.identity.startswith("agent-") and len(p.identity) > len("agent-")
    session = p.identity[len("agent-") :] if is_agent else _room_session(room.sid, room.name)
    if p.kind == _Kind.AGENT and models.ParticipantInfo.CLOUD_AGENT not in p.kind_details:
        meta["session_time"] = True  # a self-hosted agent's connection is its session time
    return [
        _record(
            rules,
            rid=rid,
            session=session,
            resource=resource,
            start_ms=joined_ms,
            end_ms=max(joined_ms, reported_ms),
            reported_ms=reported_ms,
            final=not opening,
            room=room.name,
            room_sid=room.sid,
            agent_name=p.attributes.get("lk.agent.name", "") if p.kind == _Kind.AGENT else "",
            customer=_customer(rules, p.attributes, room.metadata),
            meta=meta,
        )
    ]


def _egress(event: Any, rules: UsageRules, reported_ms: int) -> list[Stored]:
    info = event.egress_info
    started_ms = info.started_at // 1_000_000
    if started_ms < _EARLIEST_MS:
        return []  # never started (failed while starting): nothing to bill
    opening = event.event in _OPENING
    if opening:
        end_ms = max(started_ms, info.updated_at // 1_000_000, reported_ms if event.event == "egress_updated" else 0)
    else:
        end_ms = info.ended_at // 1_000_000 or info.updated_at // 1_000_000 or reported_ms
    meta: dict[str, str | int | bool] = {
        "source": "webhook",
        "egress": info.egress_id[:256],
        "request": info.WhichOneof("request") or "",
        "opened_by" if opening else "closed_by": f"webhook:{event.event}",
    }
    return [
        _record(
            rules,
            rid=record_id(f"egress:{info.egress_id}", "egress", "minutes"),
            session=_room_session(info.room_id, info.room_name) if info.room_id else f"egress:{info.egress_id}",
            resource=egress_resource(info),
            start_ms=started_ms,
            end_ms=max(started_ms, end_ms),
            reported_ms=reported_ms,
            final=not opening,
            room=info.room_name,
            room_sid=info.room_id,
            meta=meta,
        )
    ]


def _ingress(event: Any, rules: UsageRules, reported_ms: int) -> list[Stored]:
    info, state = event.ingress_info, event.ingress_info.state
    started_ms = state.started_at // 1_000_000
    if started_ms < _EARLIEST_MS:
        return []
    opening = event.event in _OPENING
    end_ms = max(started_ms, state.updated_at // 1_000_000) if opening else (state.ended_at // 1_000_000 or reported_ms)
    # A reusable ingress starts many sessions: each has its own resource id (else its start time).
    usage = f"session:{state.resource_id or state.started_at}"
    meta: dict[str, str | int | bool] = {
        "source": "webhook",
        "ingress": info.ingress_id[:256],
        "transcoded": not info.bypass_transcoding,
        "opened_by" if opening else "closed_by": f"webhook:{event.event}",
    }
    return [
        _record(
            rules,
            rid=record_id(f"ingress:{info.ingress_id}", usage, "minutes"),
            session=_room_session(state.room_id, info.room_name) if state.room_id else f"ingress:{info.ingress_id}",
            resource=Resource.STREAM_IMPORT,
            start_ms=started_ms,
            end_ms=max(started_ms, end_ms),
            reported_ms=reported_ms,
            final=not opening,
            room=info.room_name,
            room_sid=state.room_id,
            meta=meta,
        )
    ]


def egress_resource(info: Any) -> Resource:
    """Track egress bills ``track_egress``; every other egress transcodes: audio-only requests bill
    ``transcode_audio``, the rest ``transcode`` (video)."""
    request = info.WhichOneof("request")
    if request == "track":
        return Resource.TRACK_EGRESS
    audio_only = False
    if request in ("room_composite", "web"):
        audio_only = getattr(info, request).audio_only
    elif request == "track_composite":
        audio_only = not info.track_composite.video_track_id
    elif request in ("egress", "replay"):
        req = getattr(info, request)
        source = req.WhichOneof("source")
        if source in ("template", "web"):
            audio_only = getattr(req, source).audio_only
        elif source == "media":
            audio_only = not (req.media.video_track_id or req.media.HasField("participant_video"))
    return Resource.TRANSCODE_AUDIO if audio_only else Resource.TRANSCODE


def _record(
    rules: UsageRules,
    *,
    rid: str,
    session: str,
    resource: Resource,
    start_ms: int,
    end_ms: int,
    reported_ms: int,
    final: bool,
    meta: dict[str, str | int | bool],
    **fields: str,
) -> Stored:
    # Times in a webhook are bounded by when it was sent (itself checked against the clock): a usage
    # cannot end after it was reported (a little clock skew aside), nor start before it ends.
    end_ms = min(end_ms, reported_ms + _SKEW_MS)
    start_ms = min(start_ms, end_ms)
    record = rules.policy.record(
        id=rid,
        session_id=session[:256],
        resource=resource,
        raw=end_ms - start_ms,
        start=from_ms(start_ms),
        end=from_ms(end_ms),
        status=Status.OK if final else Status.CHECKPOINT,
        meta=meta,
        provider=rules.provider,
        **{k: v[:256] for k, v in fields.items()},
    )
    return Stored(record, by_webhook=True)


def _room_session(room_sid: str, room_name: str) -> str:
    return f"room:{room_sid or room_name or '-'}"


def _kind_name(p: Any) -> str:
    name = _Kind.Name(p.kind) if p.kind in _Kind.values() else str(p.kind)
    return name.lower()


def _customer(rules: UsageRules, attributes: Any, room_metadata: str) -> str:
    """The customer named by the configured key: a participant attribute, else a key of the room's
    JSON metadata (where ``@metered(customer=...)`` also looks)."""
    key = rules.customer_key
    if not key:
        return ""
    value = attributes.get(key)
    if not value and room_metadata.startswith("{"):
        try:
            doc = json.loads(room_metadata)
        except ValueError:
            doc = None
        value = doc.get(key) if isinstance(doc, dict) else None
    return value[:256] if isinstance(value, str) else ""
