"""LiveKit webhooks: close agent sessions whose agent never sent its final record.

A crashed worker leaves its ``agent_session`` record as a checkpoint. When LiveKit reports the
room finished, the agent participant left, or the agent job ended, the collector writes the final
record itself: from the checkpoint's start to the time LiveKit reports (never earlier than the last
checkpoint's end, which the agent already proved), rounded by the checkpoint's policy, with
``meta.closed_by = "webhook:<event>"``.

Redelivery and reordering are harmless: webhook ids are remembered, a close is idempotent, the
earliest reported end wins among webhook closes, and the agent's own final record, if it arrives
later, supersedes a webhook close (see ``store.base.fold``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
from google.protobuf import json_format
from livekit import api
from livekit.protocol import models

from ..rates import get_policy
from ..records import Status
from .auth import AuthError, KeyRing
from .ingest import BadRequest
from .store.base import Outcome, Store, Stored, epoch_ms, from_ms

__all__ = ["WebhookResult", "Webhooks", "close_record"]

log = logging.getLogger("livekit_metering.collector")

CLOSING_EVENTS = ("room_finished", "participant_left", "agent_job_ended")


@dataclass
class WebhookResult:
    event: str
    id: str
    project: str
    duplicate: bool = False
    closed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "duplicate": self.duplicate, "closed": self.closed}


class Webhooks:
    def __init__(self, store: Store, keys: KeyRing) -> None:
        self.store = store
        self._receivers = {
            key: api.WebhookReceiver(api.TokenVerifier(key, secret)) for key, secret in keys.secrets().items()
        }
        self._keys = keys

    def verify(self, body: str, auth: str | None) -> tuple[str, Any]:
        """(project, WebhookEvent) of a webhook signed by a known key; AuthError otherwise."""
        if not auth:
            raise AuthError("missing Authorization header on the webhook")
        token = auth.strip()
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise AuthError(f"the webhook token is not a valid JWT ({exc})") from None
        receiver = self._receivers.get(issuer) if isinstance(issuer, str) else None
        if receiver is None:
            raise AuthError(f"unknown API key {issuer!r} on the webhook")
        try:
            event = receiver.receive(body, token)
        except json_format.ParseError as exc:  # signed correctly, but not a WebhookEvent
            raise BadRequest(400, f"the webhook body is not a LiveKit WebhookEvent: {exc}") from None
        except Exception as exc:  # livekit-api raises plain Exception and PyJWT errors alike
            raise AuthError(f"webhook signature check failed: {exc}") from None
        return self._keys.project_of(str(issuer)), event

    async def handle(self, body: str, auth: str | None) -> WebhookResult:
        project, event = self.verify(body, auth)
        result = WebhookResult(event=event.event, id=event.id, project=project)
        if event.event in CLOSING_EVENTS:
            targets, end = await self._targets(project, event)
            for stored in targets:
                closed = close_record(stored, end, f"webhook:{event.event}")
                outcome = (await self.store.ingest(project, [closed]))[0]
                if outcome is Outcome.ACCEPTED:
                    result.closed.append(stored.record.session_id)
        if event.id:
            # Marked after closing: a crash in between only means the redelivery closes again (idempotent).
            result.duplicate = not await self.store.mark_webhook(project, event.id, event.event)
        log.info(
            "webhook",
            extra={"project": project, "event": event.event, "webhook_id": event.id, "closed": result.closed},
        )
        return result

    async def _targets(self, project: str, event: Any) -> tuple[list[Stored], datetime]:
        reported = datetime.fromtimestamp(event.created_at or 0, tz=timezone.utc)
        kind = event.event
        if kind == "agent_job_ended":
            if event.job.state.ended_at:
                reported = from_ms(event.job.state.ended_at // 1_000_000)
            if not event.job.id:
                return [], reported
            return await self.store.open_agent_sessions(project, session_id=event.job.id), reported
        if kind == "participant_left":
            p = event.participant
            if p.identity.startswith("agent-"):
                return await self.store.open_agent_sessions(project, session_id=p.identity[len("agent-") :]), reported
            if p.kind != models.ParticipantInfo.Kind.AGENT:
                return [], reported
            found = await self._in_room(project, event)
            name = p.attributes.get("lk.agent.name")
            if name:
                found = [s for s in found if s.record.agent_name == name]
            # Without the job id, only an unambiguous match is safe to close.
            return (found if len(found) == 1 else []), reported
        return await self._in_room(project, event), reported

    async def _in_room(self, project: str, event: Any) -> list[Stored]:
        if event.room.sid:
            return await self.store.open_agent_sessions(project, room_sid=event.room.sid)
        if event.room.name:
            return await self.store.open_agent_sessions(project, room=event.room.name)
        return []

    async def close_stale(self, now: datetime, after: timedelta, limit: int = 1000) -> list[str]:
        """Close sessions whose last checkpoint ended more than ``after`` ago and that no webhook closed
        (a crashed worker, and no webhook configured or delivered), at that checkpoint's end."""
        closed: list[str] = []
        for project, stored in await self.store.stale_agent_sessions(now - after, limit=limit):
            outcome = (await self.store.ingest(project, [close_record(stored, stored.record.end, "stale-checkpoint")]))[
                0
            ]
            if outcome is Outcome.ACCEPTED:
                closed.append(stored.record.session_id)
        if closed:
            log.info("closed stale sessions", extra={"sessions": closed})
        return closed


def close_record(stored: Stored, reported: datetime, cause: str) -> Stored:
    """The final ``agent_session`` record for an open (or collector-closed) session ending at ``reported``:
    never before the last checkpoint's end, rounded by the checkpoint's policy, ``meta.closed_by = cause``."""
    cp = stored.record
    floor_ms = int(cp.meta.get("checkpoint_end_ms", epoch_ms(cp.end))) if stored.by_webhook else epoch_ms(cp.end)
    end_ms = max(epoch_ms(reported), floor_ms)
    start_ms = epoch_ms(cp.start)
    raw = max(end_ms - start_ms, 0)
    policy = get_policy(cp.policy)
    meta = {**cp.meta, "closed_by": cause, "checkpoint_end_ms": floor_ms}
    record = policy.record(
        id=cp.id,
        session_id=cp.session_id,
        resource=cp.resource,
        raw=raw,
        start=cp.start,
        end=from_ms(start_ms + raw),
        status=Status.OK,
        room=cp.room,
        room_sid=cp.room_sid,
        agent_name=cp.agent_name,
        worker_id=cp.worker_id,
        customer=cp.customer,
        model=cp.model,
        provider=cp.provider,
        language=cp.language,
        attributes=cp.attributes,
        meta=meta,
    )
    return Stored(record, by_webhook=True)
